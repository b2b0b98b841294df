"""Every scenario of scripts/edge_test.py, in its short form: each is a real daemon and real
publishers under an adversary's move, checked by what landed in the database."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
import edge_test  # noqa: E402


@pytest.mark.parametrize("name", sorted(edge_test.scenarios()))
def test_edge_scenario(name: str, tmp_path: Path) -> None:
    edge_test.load(name).run(tmp_path, False)
