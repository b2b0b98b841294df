#!/usr/bin/env python3
"""Edge scenarios: each one an adversary's move against a real daemon and real publishers
(a poison record, a full spool disk, a killed publisher, a hard link, a deleted database,
...), repeatable at scale, checked by what landed in the database.

    python scripts/edge_test.py                      # every scenario, short form
    python scripts/edge_test.py --long               # every scenario at scale
    python scripts/edge_test.py poison enospc        # some of them

Each scenario lives in ``scripts/edges/<name>.py`` and defines
``run(work: Path, long: bool) -> str``: it builds its case in the empty folder ``work``,
returns a one-line summary of what it measured, and raises AssertionError when a record
was lost, duplicated or let in. The test suite runs every scenario's short form
(``tests/test_edge_scenarios.py``), so a scenario added here runs in CI.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import traceback
from pathlib import Path

EDGES = Path(__file__).parent / "edges"


def scenarios() -> dict[str, Path]:
    """Every scenario module, by name."""
    return {p.stem: p for p in sorted(EDGES.glob("*.py")) if not p.stem.startswith("_")}


def load(name: str):
    path = scenarios()[name]
    spec = importlib.util.spec_from_file_location(f"edges.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_one(name: str, long: bool) -> str:
    """Run one scenario in a fresh folder; its summary line, or AssertionError."""
    with tempfile.TemporaryDirectory(prefix=f"mb-edge-{name}-") as work:
        return load(name).run(Path(work), long)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--long", action="store_true", help="run at scale")
    args = parser.parse_args()
    known = scenarios()
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    failed = 0
    for name in args.names or list(known):
        started = time.monotonic()
        try:
            summary = run_one(name, args.long)
            print(f"PASS {name} ({time.monotonic() - started:.1f} s): {summary}")
        except AssertionError as exc:
            failed += 1
            print(f"FAIL {name} ({time.monotonic() - started:.1f} s): {exc}")
        except Exception:
            failed += 1
            print(f"ERROR {name}:\n{traceback.format_exc()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
