"""A throwaway PostgreSQL server for tests and the benchmark: initdb in a temporary folder,
listen on loopback at a free port, stop and start on demand (the outage test).

As root the server runs as the unprivileged ``postgres`` user (PostgreSQL refuses root).
The programs come from ``pg_config --bindir`` (or the newest /usr/lib/postgresql/*/bin).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def bindir() -> Path | None:
    """Where initdb and postgres live, or None when PostgreSQL is not installed."""
    try:
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster in a temporary folder; ``url(dbname)`` connects to it."""

    def __init__(self, fsync: bool = False, port: int | None = None):
        found = bindir()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (no pg_config, no initdb)")
        self.bin = found
        self.fsync = fsync
        self.port = port or _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mb-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen | None = None
        self._user: dict = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self._user = {"user": pw.pw_uid, "group": pw.pw_gid}
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            **self._user,
        )
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 30.0) -> None:
        settings = [
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.root}",
            "-c", f"fsync={'on' if self.fsync else 'off'}",
            "-c", "max_connections=200",
            "-c", "shared_buffers=256MB",
            "-c", "max_wal_size=4GB",
        ]  # fmt: skip
        log = open(self.log, "ab")  # noqa: SIM115 - the server keeps it
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), *settings],
            stdout=log,
            stderr=log,
            start_new_session=True,
            **self._user,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}")

    def cpu_seconds(self) -> float:
        """CPU used by the server so far: the postmaster, the backends it has reaped, and
        its live processes (from /proc)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        pids = [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            pids += [int(p) for p in children.split()]
        except OSError:
            pass
        for i, pid in enumerate(pids):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used = int(fields[11]) + int(fields[12])
            if i == 0:
                used += int(fields[13]) + int(fields[14])  # reaped children
            total += used / ticks
        return total

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are cut, as when a server restarts."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _client(self, program: str, *args: str) -> str:
        """Run one of the server's client programs against it; returns its output."""
        connection = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        return subprocess.run(
            [str(self.bin / program), *connection, *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def create_database(self, name: str) -> str:
        """A fresh database in this cluster; returns its URL."""
        self._client("createdb", name)
        return self.url(name)

    def psql(self, dbname: str, sql: str) -> str:
        """Run SQL with psql (unaligned, tuples only) and return its output."""
        return self._client("psql", "-d", dbname, "-AtX", "-v", "ON_ERROR_STOP=1", "-c", sql)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
