"""Test fixtures: the real daemon as a subprocess on a temporary database, real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from memory_bank.control import wait_for_daemon
from memory_bank.discovery import is_url

# ipc socket paths must stay short (108 bytes): keep them out of pytest's deep tmp folders.
os.environ["MEMORYBANK_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="mb-test-")
# PostgreSQL-backed daemons keep their lock files and publisher spools here.
os.environ["MEMORYBANK_STATE_DIR"] = tempfile.mkdtemp(prefix="mb-state-")
LOG_DIR = Path(tempfile.mkdtemp(prefix="mb-logs-"))
# Tables fit the terminal: give every run the same one (pytest-xdist workers and CI runners
# see different terminals), unless a test sets its own width.
os.environ.setdefault("COLUMNS", "120")


class DaemonProcess:
    """A `memorybank daemon` subprocess with its stderr kept in a file."""

    def __init__(self, db_path, *args: str, env: dict | None = None):
        self.db_path = db_path
        self.endpoint = args[args.index("--endpoint") + 1] if "--endpoint" in args else None
        name = f"pg-{uuid.uuid4().hex[:8]}" if is_url(db_path) else db_path.name
        folder = LOG_DIR if is_url(db_path) else db_path.parent
        self.log_path = folder / f"{name}.daemon{os.getpid()}-{id(self)}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memory_bank", "daemon", "--db", str(db_path), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 20.0) -> DaemonProcess:
        wait_for_daemon(self.db_path, timeout=timeout, endpoint=self.endpoint)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self._log.close()
        return rc

    @property
    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ev.db"


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session (each test gets its own database)."""
    from pg_server import PgServer, bindir

    if bindir() is None:
        if os.environ.get("MEMORYBANK_REQUIRE_POSTGRESQL"):
            pytest.fail("PostgreSQL is not installed, and this run requires it")
        pytest.skip("PostgreSQL is not installed (pg_config/initdb not found)")
    server = PgServer()
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh PostgreSQL database's URL."""
    return pg_server.create_database("t" + uuid.uuid4().hex[:12])


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """The database under test, for suites that run against both stores."""
    if request.param == "sqlite":
        return tmp_path / "ev.db"
    return request.getfixturevalue("pg_url")


def query(location, sql: str, params=()) -> list[tuple]:
    """Rows of ``sql`` (``?`` placeholders) from a SQLite file or a PostgreSQL URL: what a
    test reads behind the daemon's back, on either store."""
    if is_url(location):
        import psycopg

        with psycopg.connect(str(location), autocommit=True) as conn:
            rows = conn.execute(sql.replace("?", "%s"), params or None)
            return rows.fetchall() if rows.description else []
    import sqlite3

    conn = sqlite3.connect(location)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def start_daemon():
    started: list[DaemonProcess] = []

    def start(db_path, *args: str, wait: bool = True, env=None) -> DaemonProcess:
        daemon = DaemonProcess(db_path, *args, env=env)
        started.append(daemon)
        return daemon.wait_ready() if wait else daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)


@pytest.fixture
def daemon(db_path: Path, start_daemon) -> DaemonProcess:
    return start_daemon(db_path)


def run_python(code: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter (a separate publisher process)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
    )


def curve_site(folder: Path) -> tuple[Path, Path]:
    """Keys made with `memorybank keygen` (daemon, lab, stranger), only lab's authorized,
    and a config naming them: returns (keys folder, config file)."""
    from click.testing import CliRunner

    from memory_bank.cli import main

    keys, authorized = folder / "keys", folder / "authorized"
    for name in ("daemon", "lab", "stranger"):
        result = CliRunner().invoke(main, ["keygen", "--dir", str(keys), "--name", name])
        assert result.exit_code == 0, result.output
    authorized.mkdir()
    (authorized / "lab.key").write_bytes((keys / "lab.key").read_bytes())
    cfg = folder / "secure.toml"
    cfg.write_text(
        "[security]\n"
        f'curve_secret_key_file = "{keys / "daemon.key_secret"}"\n'
        f'curve_authorized_keys_dir = "{authorized}"\n'
    )
    return keys, cfg


def free_ports(count: int) -> int:
    """A port P with P .. P+count-1 all free on loopback."""
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for offset in range(1, count):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port


def free_port_pair() -> int:
    """A port free for the daemon's data socket, with the next two free for control and
    the live tail."""
    return free_ports(3)
