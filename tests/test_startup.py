"""The commands people type start quickly: each imports only what it needs (the start-up
times themselves are bench/run.py's figures)."""

from __future__ import annotations

import json

from conftest import run_python

# What a command that neither talks to the daemon nor serves anything has no use for.
HEAVY = ("zmq", "msgpack", "asyncio", "apscheduler", "psycopg", "starlette", "uvicorn")

LOADED = """
import json, sys
sys.argv = {argv!r}
try:
    from {module} import {command}  # the console script's entry point
    {command}()
finally:
    print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


def _loaded(module: str, command: str, argv: list[str]) -> list[str]:
    """The heavy modules a console script's run loaded (it must succeed)."""
    out = run_python(LOADED.format(module=module, command=command, argv=argv, heavy=HEAVY))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stderr.strip().splitlines()[-1])


def test_viewer_summary_loads_neither_zmq_nor_msgpack(db_path, daemon):
    loaded = _loaded(
        "memory_bank.viewer", "memory_viewer", ["memory-viewer", "--db", str(db_path), "--summary"]
    )
    assert loaded == []


def test_status_loads_the_control_client_and_nothing_heavier(db_path, daemon):
    loaded = _loaded("memory_bank.cli", "main", ["memorybank", "status", "--db", str(db_path)])
    assert loaded == ["msgpack", "zmq"]  # the control request; no asyncio, scheduler, web
