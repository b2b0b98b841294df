"""Every command, given bad input, fails with one line that says what went wrong and an
exit status that says whose the problem is (2: the input; 1: the world), never a
traceback; --debug and MEMORYBANK_DEBUG=1 show the traceback instead.

Missing optional packages are simulated in a fresh interpreter whose sys.modules blocks
them (``sys.modules[name] = None`` makes ``import name`` fail as if it were not installed).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from memory_bank.cli import main
from memory_bank.store import open_reader
from memory_bank.store.sqlite import SqliteStore
from memory_bank.viewer import view

BIN = Path(sys.executable).parent
# Nothing listens on port 1: refused at once.
PG_DOWN = "postgresql://nobody@127.0.0.1:1/nothing"


@pytest.fixture(scope="module")
def f(tmp_path_factory) -> SimpleNamespace:
    """The bad (and one good) inputs every case draws from."""
    d = tmp_path_factory.mktemp("inputs")
    ok = d / "ok.db"
    SqliteStore(ok).close()
    notdb = d / "notdb.db"
    notdb.write_text("this is not a database\n")
    wrong = d / "other.db"
    conn = sqlite3.connect(wrong)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    folder = d / "folder.db"
    folder.mkdir()
    bad_toml = d / "bad.toml"
    bad_toml.write_text("[daemon]\nbatch_rows = 'many'\n")
    rules_toml = d / "rules.toml"
    rules_toml.write_text(
        '[[alerts]]\nname = "hot"\nwhen = "anomaly"\nnotify = ["hook"]\n'
        '[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:1/hook"\n'
    )
    return SimpleNamespace(
        d=d,
        ok=str(ok),
        notdb=str(notdb),
        wrong=str(wrong),
        folder=str(folder),
        missing=str(d / "missing.db"),
        nofolder=str(d / "no-such-folder" / "x.db"),
        nofolder_json=str(d / "no-such-folder" / "x.json"),
        nofolder_png=str(d / "no-such-folder" / "x.png"),
        bad_toml=str(bad_toml),
        rules_toml=str(rules_toml),
    )


# (command as listed by --help, argv, exit status, a fragment of the one-line message)
CASES = [
    ("daemon", lambda f: ["daemon", "--db", f.nofolder], 2, "does not exist; create it"),
    ("daemon", lambda f: ["daemon", "--db", f.notdb], 2, "not a MemoryBank database"),
    ("daemon", lambda f: ["daemon", "--db", f.wrong], 2, "has no events, anomalies"),
    ("daemon", lambda f: ["daemon", "--db", f.folder], 2, "not a MemoryBank database"),
    ("daemon", lambda f: ["daemon", "--db", f.ok, "--config", f.bad_toml], 2, "batch_rows"),
    ("keygen", lambda f: ["keygen", "--dir", f.notdb], 2, "notdb.db"),
    ("status", lambda f: ["status", "--db", f.missing], 1, "no daemon serves"),
    ("status", lambda f: ["status", "--db", f.notdb], 1, "no daemon serves"),
    ("status", lambda f: ["status", "--db", PG_DOWN], 1, "no daemon serves"),
    ("status", lambda f: ["status", "--db", f.ok, "-o", "yaml"], 2, "Invalid value"),
    ("maintenance", lambda f: ["maintenance", "--db", f.missing, "vacuum"], 1, "start one with"),
    ("maintenance", lambda f: ["maintenance", "--db", PG_DOWN, "vacuum"], 1, "no daemon serves"),
    (
        "maintenance",
        lambda f: ["maintenance", "--db", f.ok, "retention", "--days", "-1"],
        2,
        "Invalid value",
    ),
    ("migrate", lambda f: ["migrate", "--from", f.missing, "--to", PG_DOWN], 2, "no SQLite"),
    ("migrate", lambda f: ["migrate", "--from", f.ok, "--to", f.ok], 2, "postgresql:// URL"),
    ("migrate", lambda f: ["migrate", "--from", f.ok, "--to", PG_DOWN], 1, "connection"),
    ("demo", lambda f: ["demo", "--db", f.nofolder], 2, "does not exist; create it"),
    ("demo", lambda f: ["demo", "--db", f.notdb], 2, "not a MemoryBank database"),
    ("view", lambda f: ["view", "--db", f.missing, "--summary"], 2, "no database at"),
    ("view", lambda f: ["view", "--db", f.notdb, "--summary"], 2, "not a MemoryBank database"),
    ("view", lambda f: ["view", "--db", f.wrong, "--events", "5"], 2, "has no events"),
    ("view", lambda f: ["view", "--db", f.folder, "--stats"], 2, "not a MemoryBank database"),
    ("view", lambda f: ["view", "--db", f.ok, "--since", "bogus"], 2, "is not a time"),
    ("view", lambda f: ["view", "--db", f.ok, "--until", "31/31/31"], 2, "is not a time"),
    ("view", lambda f: ["view", "--db", f.ok, "--session", "NOPE"], 2, "no session 'NOPE'"),
    ("view", lambda f: ["view", "--db", f.ok, "--events", "0"], 2, "Invalid value"),
    (
        "view",
        lambda f: ["view", "--db", f.ok, "--export", f.nofolder_json],
        2,
        "does not exist; create it",
    ),
    ("view", lambda f: ["view", "--db", f.ok, "--export", f.folder], 2, "Is a directory"),
    ("view", lambda f: ["view", "--db", PG_DOWN, "--summary"], 1, "connection"),
    ("view plot", lambda f: ["view", "plot", "current", "--db", f.missing], 2, "no database"),
    ("view plot", lambda f: ["view", "plot", "current", "--db", f.notdb], 2, "not a MemoryBank"),
    (
        "view plot",
        lambda f: ["view", "plot", "current", "--db", f.ok, "--since", "bogus"],
        2,
        "is not a time",
    ),
    (
        "view plot",
        lambda f: ["view", "plot", "current", "--db", f.ok, "--png", f.nofolder_png],
        2,
        "does not exist; create it",
    ),
    ("web", lambda f: ["web", "--db", f.missing], 2, "no database at"),
    ("web", lambda f: ["web", "--db", f.notdb], 2, "not a MemoryBank database"),
    ("web", lambda f: ["web", "--db", f.wrong], 2, "has no events"),
    ("web", lambda f: ["web", "--db", f.ok, "--config", f.bad_toml], 2, "batch_rows"),
    ("web", lambda f: ["web", "--db", f.ok, "--host", "0.0.0.0"], 2, "give it a token"),
    ("web", lambda f: ["web", "--db", PG_DOWN], 1, "connection"),
    ("detect", lambda f: ["detect", "--db", f.missing, "--once"], 2, "no database at"),
    ("detect", lambda f: ["detect", "--db", f.notdb, "--once"], 2, "not a MemoryBank database"),
    ("detect", lambda f: ["detect", "--db", f.wrong, "--once"], 2, "has no events"),
    ("detect", lambda f: ["detect", "--db", f.ok, "--config", f.bad_toml], 2, "batch_rows"),
    ("detect", lambda f: ["detect", "--db", PG_DOWN, "--once"], 1, "connection"),
    ("alerts", lambda f: ["alerts", "--db", f.missing], 2, "no database at"),
    ("alerts", lambda f: ["alerts", "--db", f.notdb], 2, "not a MemoryBank database"),
    ("alerts", lambda f: ["alerts", "--db", f.wrong, "--firing"], 2, "has no events"),
    ("alerts", lambda f: ["alerts", "--db", PG_DOWN], 1, "connection"),
    ("alerts", lambda f: ["alerts", "--db", f.ok, "--limit", "0"], 2, "Invalid value"),
    ("alerts", lambda f: ["alerts", "test", "hot", "--config", f.bad_toml], 2, "batch_rows"),
    ("alerts", lambda f: ["alerts", "test", "cold", "--config", f.rules_toml], 2, "rules: hot"),
    ("alerts", lambda f: ["alerts", "test", "hot", "--config", f.rules_toml], 1, "1 of 1 sink"),
    ("memory-viewer", lambda f: ["--db", f.notdb, "--stats"], 2, "not a MemoryBank database"),
    ("memory-viewer", lambda f: ["--db", f.missing, "--summary"], 2, "no database at"),
    ("memory-viewer", lambda f: ["--db", f.wrong, "--patterns"], 2, "has no events"),
]


def commands() -> set[str]:
    """Every command `memorybank --help` lists (and view's own), and memory-viewer."""
    names = set(main.commands) | {f"view {name}" for name in view.commands}
    return names | {"memory-viewer"}


def test_every_command_has_bad_input_cases():
    covered = {command for command, *_ in CASES}
    assert commands() - covered == set(), "add bad-input cases for these commands to CASES"


def assert_one_line_failure(exit_code: int, output: str, code: int, fragment: str) -> None:
    assert "Traceback" not in output, output
    assert exit_code == code, output
    assert fragment in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, output


@pytest.mark.parametrize(
    "command,argv,code,fragment",
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_bad_input_is_one_line_and_an_exit_status(f, command, argv, code, fragment):
    if command == "memory-viewer":
        result = CliRunner().invoke(view, argv(f), prog_name="memory-viewer")
    else:
        result = CliRunner().invoke(main, argv(f), prog_name="memorybank")
    assert isinstance(result.exception, SystemExit), result.exception
    assert_one_line_failure(result.exit_code, result.output, code, fragment)


def test_migrate_from_a_file_that_is_not_a_database(f, pg_url):
    result = CliRunner().invoke(main, ["migrate", "--from", f.notdb, "--to", pg_url])
    assert isinstance(result.exception, SystemExit), result.exception
    assert_one_line_failure(result.exit_code, result.output, 2, "notdb.db cannot be used")


def test_a_postgresql_database_without_memorybank_tables(pg_url):
    result = CliRunner().invoke(main, ["view", "--db", pg_url, "--summary"])
    assert isinstance(result.exception, SystemExit), result.exception
    assert_one_line_failure(result.exit_code, result.output, 2, "has no MemoryBank tables")


def run_without(packages: list[str], *argv: str, module: str = "memory_bank.cli:main"):
    """A command in a fresh interpreter where ``packages`` cannot be imported."""
    mod, func = module.split(":")
    code = (
        "import sys\n"
        f"for name in {packages!r}:\n    sys.modules[name] = None\n"
        f"from {mod} import {func}\n{func}()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "packages,argv,extra",
    [
        (["matplotlib"], ["view", "plot", "current", "--png", "{d}/c.png", "--db", "{ok}"], "png"),
        (["ocpp"], ["demo", "--seconds", "1", "--db", "{d}/demo.db"], "demo"),
        (["can"], ["demo", "--seconds", "1", "--db", "{d}/demo.db"], "demo"),
        (["psycopg"], ["view", "--summary", "--db", PG_DOWN], "postgresql"),
        (["psycopg"], ["migrate", "--from", "{ok}", "--to", PG_DOWN], "postgresql"),
    ],
)
def test_a_missing_optional_package_names_its_extra(f, packages, argv, extra):
    argv = [a.format(d=f.d, ok=f.ok) for a in argv]
    result = run_without(packages, *argv)
    assert_one_line_failure(
        result.returncode, result.stderr, 1, f'pip install "memory_bank[{extra}]"'
    )
    assert not (f.d / "demo.db").exists()  # nothing started, nothing created


def test_the_demo_modules_without_the_extra_say_what_to_install():
    """`python -m memory_bank.demo.csms` (runpy's -m path, with websockets blocked)."""
    code = (
        "import runpy, sys\nsys.modules['websockets'] = None\n"
        "runpy._run_module_as_main('memory_bank.demo.csms')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "--db", "x.db"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert 'pip install "memory_bank[demo]"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_open_reader_without_psycopg_names_the_extra():
    code = (
        "import sys\nsys.modules['psycopg'] = None\n"
        "from memory_bank.store import open_reader\n"
        "try:\n    open_reader('postgresql://lab@db-host/evlab')\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 'pip install "memory_bank[postgresql]"' in result.stdout, result.stderr


def test_menu_options_that_fail_say_why_and_the_menu_goes_on(f):
    keys = f"9\n7\ny\n8\n{f.nofolder_json}\n1\n0\n"
    result = CliRunner().invoke(view, ["--db", f.ok], input=keys, prog_name="memory-viewer")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "no daemon serves" in result.output  # clean old data, without a daemon
    assert "does not exist; create it" in result.output  # export into a missing folder
    assert "MemoryBank summary" in result.output  # and the menu went on


@pytest.mark.parametrize(
    "argv,env",
    [
        ([str(BIN / "memorybank"), "--debug", "view", "--db", "{notdb}", "--summary"], {}),
        ([str(BIN / "memory-viewer"), "--db", "{notdb}", "--stats"], {"MEMORYBANK_DEBUG": "1"}),
    ],
)
def test_debug_shows_the_traceback(f, argv, env):
    import os

    argv = [a.format(notdb=f.notdb) for a in argv]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "InvalidDatabase" in result.stderr


def test_without_debug_the_same_failure_is_one_line(f):
    result = subprocess.run(
        [str(BIN / "memory-viewer"), "--db", f.notdb, "--stats"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_failure(result.returncode, result.stderr, 2, "not a MemoryBank database")
    assert open_reader(f.ok).check() is not None  # the good file is still a good database
