"""The commands people type start quickly: each imports only what it needs (the start-up
times themselves are bench/run.py's figures).

`memory-viewer --summary` and `memorybank status` are answered by the console scripts'
fast path (cli_fast) without click or pyzmq; everything here checks that the fast path
says exactly what the click commands say, on the same database, and loads neither.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from conftest import DaemonProcess, run_python
from memory_bank import MemoryBank, cli_options, discovery, formatting, wire
from memory_bank.cli import main
from memory_bank.status import STATS_REQUEST
from memory_bank.viewer import view

BIN = Path(sys.executable).parent

# What a command that neither talks to the daemon nor serves anything has no use for.
HEAVY = ("zmq", "msgpack", "asyncio", "apscheduler", "psycopg", "starlette", "uvicorn")
# What the fast path of either hot command never loads (status speaks ZMTP itself).
NOT_ON_THE_FAST_PATH = ("click", "zmq", "apscheduler", "asyncio", "logging", "dataclasses")
# Standard modules a tenth of a hot command's start-up or more each, which neither needs:
# json with the re it loads (jsontext reads JSON and writes the table's through json's C
# half), pathlib (both name files as text), socket (status asks over _socket).
NOT_ON_THE_STATUS_PATH = (
    *NOT_ON_THE_FAST_PATH,
    *("typing", "shutil", "json", "re", "pathlib", "urllib.parse", "socket", "threading"),
)
# The summary reads through sqlite3, with neither threading (the reader takes only its
# thread-local class) nor contextlib (the alerts' storage classes).
NOT_ON_THE_SUMMARY_PATH = (*NOT_ON_THE_STATUS_PATH, "contextlib")

LOADED = """
import os, sys
sys.argv = {argv!r}


def exit_here(code):  # the fast path ends with os._exit: here, it ends where it can be seen
    raise SystemExit(code)


os._exit = exit_here
try:
    from {module} import {command}  # the console script's entry point
    {command}()
except SystemExit as exit:
    assert not exit.code, exit.code
finally:
    sys.stdout.flush()
    print("loaded:", *sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def _loaded(module: str, command: str, argv: list[str], heavy=HEAVY) -> list[str]:
    """The heavy modules a console script's run loaded (it must succeed)."""
    out = run_python(LOADED.format(module=module, command=command, argv=argv, heavy=heavy))
    assert out.returncode == 0, out.stderr
    return [line for line in out.stderr.splitlines() if line.startswith("loaded:")][-1].split()[1:]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A daemon serving a database with events (one holding escape sequences), anomalies of
    every severity and sessions."""
    db = tmp_path_factory.mktemp("startup") / "lab.db"
    daemon = DaemonProcess(db).wait_ready()
    now = time.time()
    with MemoryBank(db) as memory:
        pub = memory.publisher
        for i in range(12):
            pub.log_event("CAN_RX", "CHARGER", f"reading {i}", {"i": i}, timestamp=now - 60 + i)
        pub.log_event("OCPP_COMMAND", "CSMS", "\x1b[31mred\x1b[0m text", timestamp=now)
        for i, severity in enumerate(["LOW", "MEDIUM", "HIGH", "CRITICAL"]):
            pub.record_anomaly("VOLTAGE_DROP", severity, f"anomaly {i}", {"i": i}, 100.0, 32.0)
        pub.start_session("TXN_1", timestamp=now - 30)
        assert memory.flush(20)
    yield db
    daemon.stop()


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _by_click(prog: str, args: list[str]) -> subprocess.CompletedProcess:
    """The same command line through the click command (what every other line takes)."""
    call = {
        "memory-viewer": "from memory_bank.viewer import memory_viewer; memory_viewer()",
        "memorybank": "from memory_bank.cli import main; main(prog_name='memorybank')",
    }[prog]
    return _run([sys.executable, "-c", f"import sys; sys.argv[1:] = {args!r}; {call}"])


# The figures that move between two runs a moment apart (clock, rates, WAL checkpoints).
VOLATILE = re.compile(
    r'("?(?:as of|timestamp|uptime[^:,\s"]*(?: \(s\))?|\w+ / s \(10 s\)|\w+_per_second'
    r'|WAL bytes|wal_bytes|database bytes|db_bytes)"?[:,\s]+).*'
)


def _same(prog: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``args`` through the console script and through click: same output, same exit."""
    fast = _run([str(BIN / prog), *args])
    slow = _by_click(prog, args)
    assert fast.returncode == slow.returncode, (fast.stderr, slow.stderr)
    assert VOLATILE.sub(r"\1", fast.stdout) == VOLATILE.sub(r"\1", slow.stdout)
    assert fast.stderr == slow.stderr
    return fast


@pytest.mark.parametrize("output", [[], ["-o", "json"], ["--output=jsonl"], ["-ocsv"]])
def test_viewer_summary_says_what_the_click_viewer_says(lab, output):
    done = _same("memory-viewer", ["--db", str(lab), "--summary", *output])
    assert done.returncode == 0
    assert "\x1b" not in done.stdout  # off a terminal, escape sequences in data are stripped
    if not output:
        assert "CRITICAL: 1" in done.stdout and "red text" in done.stdout


@pytest.mark.parametrize("output", [[], ["--json"], ["-o", "csv"]])
def test_status_says_what_the_click_command_says(lab, output):
    done = _same("memorybank", ["status", "--db", str(lab), *output])
    assert done.returncode == 0 and str(lab) in done.stdout


@pytest.mark.parametrize(
    "prog,args",
    [
        ("memory-viewer", ["--db", "{missing}", "--summary"]),  # exit 2: no database
        ("memory-viewer", ["--db", "{folder}", "--summary"]),  # exit 2: not a database
        ("memory-viewer", ["--summary", "-o", "xml"]),  # exit 2: click's usage error
        ("memory-viewer", ["--summary", "--help"]),
        ("memorybank", ["status", "--db", "{missing}"]),  # exit 1: no daemon
        ("memorybank", ["status", "--db", "{folder}", "--endpoint"]),  # exit 2: no value
    ],
)
def test_failures_read_the_same_either_way(tmp_path, prog, args):
    (tmp_path / "notes.db").write_text("not a database")
    names = {"missing": tmp_path / "missing.db", "folder": tmp_path / "notes.db"}
    done = _same(prog, [a.format(**names) for a in args])
    assert done.returncode in (0, 1, 2)
    assert "Traceback" not in done.stderr


def test_viewer_summary_fast_path_loads_neither_click_nor_pyzmq(lab, db_path, daemon):
    # (A table of the lab's data holding escape sequences loads click to strip them; JSON
    # for scripts is written by json itself.)
    for db, output, used in ((lab, "json", ("json", "re")), (db_path, "table", ())):
        argv = ["memory-viewer", "--db", str(db), "--summary", "-o", output]
        unused = [m for m in NOT_ON_THE_SUMMARY_PATH if m not in used]
        assert _loaded("memory_bank.cli_fast", "memory_viewer", argv, unused) == []


def test_status_fast_path_loads_neither_click_nor_pyzmq(lab):
    argv = ["memorybank", "status", "--db", str(lab)]
    assert _loaded("memory_bank.cli_fast", "memorybank", argv, NOT_ON_THE_STATUS_PATH) == []


def _imported(argv: list[str]) -> set[str]:
    """The modules an installed command imports, as it runs (``python -X importtime``,
    through the environment, so the command starts as a user starts it)."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {row[-1].strip() for row in rows[1:]}


def test_the_installed_commands_load_only_what_they_need(lab, golden_db):
    """The commands as installed, launcher included (pip's console-script wrapper imports
    re before MemoryBank's first line runs), the summary showing JSON data in its table."""
    summary = _imported([str(BIN / "memory-viewer"), "--db", str(golden_db), "--summary"])
    assert "memory_bank.jsontext" in summary and not summary & set(NOT_ON_THE_SUMMARY_PATH)
    status = _imported([str(BIN / "memorybank"), "status", "--db", str(lab)])
    assert "msgpack" in status and not status & set(NOT_ON_THE_STATUS_PATH)


def test_viewer_summary_loads_neither_zmq_nor_msgpack(db_path, daemon):
    loaded = _loaded(
        "memory_bank.viewer", "memory_viewer", ["memory-viewer", "--db", str(db_path), "--summary"]
    )
    assert loaded == []


def test_status_loads_the_control_client_and_nothing_heavier(db_path, daemon):
    loaded = _loaded("memory_bank.cli", "main", ["memorybank", "status", "--db", str(db_path)])
    assert loaded == ["msgpack", "zmq"]  # the control request; no asyncio, scheduler, web


def test_a_stopped_daemon_is_reported_after_one_wait(lab):
    """A daemon that takes the connection but never answers (SIGSTOP) fails status with
    one line, from the ZMTP request's own timeout (pyzmq, asked next, would wait again and
    add that no handshake succeeded)."""
    key = discovery.location_key(lab)
    info = discovery.read_daemon_info(key)
    os.kill(info["pid"], signal.SIGSTOP)
    try:
        done = _run([str(BIN / "memorybank"), "status", "--db", str(lab)])
    finally:
        os.kill(info["pid"], signal.SIGCONT)
    assert done.returncode == 1
    control = discovery.find_endpoints(key).control
    assert done.stderr == f"Error: no answer to 'stats' from {control} within 5s\n"


VIEWER_OPTIONS = (cli_options.DB, cli_options.SUMMARY, cli_options.OUTPUT)
STATUS_OPTIONS = (cli_options.DB, cli_options.OUTPUT, cli_options.JSON, cli_options.ENDPOINT)


@pytest.mark.parametrize(
    "command,options,argv",
    [
        (view, VIEWER_OPTIONS, ["--summary"]),
        (view, VIEWER_OPTIONS, ["--db", "x.db", "--summary", "-o", "json", "--db=y.db"]),
        (view, VIEWER_OPTIONS, ["-ojsonl", "--summary", "--summary"]),
        (view, VIEWER_OPTIONS, ["--summary", "--output=csv"]),
        (main.commands["status"], STATUS_OPTIONS, []),
        (main.commands["status"], STATUS_OPTIONS, ["--json", "--endpoint", "tcp://h:5555"]),
        (main.commands["status"], STATUS_OPTIONS, ["-o", "csv", "--db", "a.db"]),
    ],
)
def test_what_the_fast_path_reads_click_reads_alike(command, options, argv):
    fast = cli_options.parse(argv, options)
    ctx = command.make_context("memory-viewer", list(argv), resilient_parsing=True)
    assert fast == {name: ctx.params[name] for name in fast}


@pytest.mark.parametrize(
    "argv",
    [
        ["--summary", "-h"],
        ["--summary", "-o", "xml"],
        ["--summary", "--db"],
        ["--summary", "--db", "--output"],
        ["--summary=yes"],
        ["--summary", "--events", "5"],
        ["--summary", "plot", "current"],
        ["--summary", "--"],
        ["--summ"],
    ],
)
def test_anything_else_goes_to_click(argv):
    assert cli_options.parse(argv, VIEWER_OPTIONS) is None


def test_styles_are_clicks():
    for spec in formatting.SEVERITY_STYLE.values():
        assert formatting.style("x", **spec) == click.style("x", **spec)
    assert formatting.style("title", bold=True) == click.style("title", bold=True)


def test_the_stats_request_is_wires():
    assert STATS_REQUEST == wire.request(wire.OP_STATS, 1)


@pytest.mark.parametrize("columns", [None, "93", "0", "wide"])
def test_terminal_width_is_shutils(monkeypatch, columns):
    """The summary sizes its tables as shutil.get_terminal_size((120, 24)) says, without
    importing shutil: $COLUMNS, else the terminal (none under pytest), else 120."""
    import shutil

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert formatting.terminal_width() == shutil.get_terminal_size((120, 24)).columns


def test_the_reader_opens_a_path_sqlite_would_read_as_a_uri(tmp_path):
    """A database whose path holds %, ?, # and a space is read (read-only), not some other
    file its URI would name."""
    from memory_bank.store import open_reader
    from memory_bank.store.schema import SEED_TABLES

    db = tmp_path / "lab 100%?x=1#frag.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SEED_TABLES)
        conn.execute(
            "INSERT INTO events (id, timestamp, event_type, component, message)"
            " VALUES (1, 0, 'T', 'C', 'm')"
        )
    conn.close()
    assert open_reader(db).get_dashboard_summary()["total_events"] == 1


# The summary of a fixed database (golden.py below), as `memory-viewer --summary` printed it
# before the start-up work (pip-installed, TZ=UTC, off a terminal; its "as of" line, the
# tenth, left out): the fast path's output must not move by a byte.
GOLDEN_EVENTS = [
    (i, 1_700_000_000 + i, "CAN_RX", "CHARGER", f"reading {i}", f'{{"i": {i}, "v": [1.5, null]}}')
    for i in range(1, 8)
]
GOLDEN_ANOMALIES = [
    (i, 1_700_000_100 + i, "VOLTAGE_DROP", s, f"drop {i}", 200.0 + i, 230.0, 30.0 - i)
    for i, s in enumerate(["LOW", "MEDIUM", "HIGH", "CRITICAL"], 1)
]
GOLDEN_SUMMARY_120 = [
    "MemoryBank summary",
    "========================================",
    "total events           7",
    "total anomalies        4",
    "total sessions         1",
    "events last hour       0",
    "anomalies last hour    0",
    "active sessions        1",
    "anomalies by severity  CRITICAL: 1, HIGH: 1, LOW: 1, MEDIUM: 1",
    "",
    "Recent events",
    "ID  TIME                 TYPE    COMPONENT  MESSAGE    DATA                  ",
    ' 7  2023-11-14 22:13:27  CAN_RX  CHARGER    reading 7  {"i":7,"v":[1.5,null]}',
    ' 6  2023-11-14 22:13:26  CAN_RX  CHARGER    reading 6  {"i":6,"v":[1.5,null]}',
    ' 5  2023-11-14 22:13:25  CAN_RX  CHARGER    reading 5  {"i":5,"v":[1.5,null]}',
    ' 4  2023-11-14 22:13:24  CAN_RX  CHARGER    reading 4  {"i":4,"v":[1.5,null]}',
    ' 3  2023-11-14 22:13:23  CAN_RX  CHARGER    reading 3  {"i":3,"v":[1.5,null]}',
    "",
    "Recent anomalies",
    "ID  TIME                 TYPE          SEVERITY  DESCRIPTION  CURRENT  EXPECTED  DEVIATION",
    " 4  2023-11-14 22:15:04  VOLTAGE_DROP  CRITICAL  drop 4        204.00    230.00      26.00",
    " 3  2023-11-14 22:15:03  VOLTAGE_DROP  HIGH      drop 3        203.00    230.00      27.00",
    " 2  2023-11-14 22:15:02  VOLTAGE_DROP  MEDIUM    drop 2        202.00    230.00      28.00",
    " 1  2023-11-14 22:15:01  VOLTAGE_DROP  LOW       drop 1        201.00    230.00      29.00",
]
GOLDEN_SUMMARY_50 = [
    "MemoryBank summary",
    "========================================",
    "total events           7",
    "total anomalies        4",
    "total sessions         1",
    "events last hour       0",
    "anomalies last hour    0",
    "active sessions        1",
    "anomalies by severity  CRITICAL: 1, HIGH: 1, LOW: 1, MEDIUM: 1",
    "",
    "Recent events",
    "ID  TIME                 TYPE    COMPONENT  MESSA…",
    " 7  2023-11-14 22:13:27  CAN_RX  CHARGER    readi…",
    " 6  2023-11-14 22:13:26  CAN_RX  CHARGER    readi…",
    " 5  2023-11-14 22:13:25  CAN_RX  CHARGER    readi…",
    " 4  2023-11-14 22:13:24  CAN_RX  CHARGER    readi…",
    " 3  2023-11-14 22:13:23  CAN_RX  CHARGER    readi…",
    "",
    "Recent anomalies",
    "ID  TIME                 TYPE          SEVERITY  …",
    " 4  2023-11-14 22:15:04  VOLTAGE_DROP  CRITICAL  …",
    " 3  2023-11-14 22:15:03  VOLTAGE_DROP  HIGH      …",
    " 2  2023-11-14 22:15:02  VOLTAGE_DROP  MEDIUM    …",
    " 1  2023-11-14 22:15:01  VOLTAGE_DROP  LOW       …",
]


@pytest.fixture
def golden_db(tmp_path) -> Path:
    """A fixed database: GOLDEN_EVENTS, GOLDEN_ANOMALIES and one active session."""
    from memory_bank.store.schema import SEED_TABLES

    db = tmp_path / "golden.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SEED_TABLES)
        conn.executemany(
            "INSERT INTO events (id, timestamp, event_type, component, message, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            GOLDEN_EVENTS,
        )
        conn.executemany(
            "INSERT INTO anomalies (id, timestamp, anomaly_type, severity, description,"
            " current_value, expected_value, deviation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            GOLDEN_ANOMALIES,
        )
        conn.execute(
            "INSERT INTO sessions (session_id, start_time, status)"
            " VALUES ('TXN_1', 1700000000, 'ACTIVE')"
        )
    conn.close()
    return db


@pytest.mark.parametrize("columns,expected", [(120, GOLDEN_SUMMARY_120), (50, GOLDEN_SUMMARY_50)])
def test_the_summary_prints_what_it_printed_before(golden_db, columns, expected):
    env = {**os.environ, "TZ": "UTC", "COLUMNS": str(columns)}
    argv = [str(BIN / "memory-viewer"), "--db", str(golden_db), "--summary"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[9].startswith("as of ")
    assert lines[:9] + lines[10:] == expected


def test_the_reader_keeps_one_connection_per_thread():
    """The reader takes threading.local itself, from where threading takes it."""
    import threading

    from memory_bank.store.reader import thread_local

    assert thread_local is threading.local


@pytest.mark.parametrize("endpoint", [None, "ipc:///tmp/x.ctl"])
def test_status_finds_the_daemon_file_where_the_daemon_locks_it(tmp_path, monkeypatch, endpoint):
    """daemon_path (text, no pathlib) names the file discovery.daemon_file names, through
    a symlink and a relative path, and for a PostgreSQL URL (by endpoint)."""
    from memory_bank.locations import daemon_path

    monkeypatch.setenv("MEMORYBANK_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    url = "postgresql://lab:secret@db.example/ev"
    relative = os.path.relpath(tmp_path / "link" / "ev.db")
    for location in (str(tmp_path / "link" / "ev.db"), relative, url):
        expected = discovery.daemon_file(discovery.location_key(location, endpoint))
        assert Path(daemon_path(location, endpoint)) == expected
