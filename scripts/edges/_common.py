"""What the publisher-side edge scenarios share: a real daemon as a subprocess, publishers as
subprocesses (so they can be killed, signalled or limited), and the rows that landed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from memory_bank.control import daemon_stats, wait_for_daemon

PY = sys.executable
TABLES = ("events", "anomalies", "metrics")


def isolate(work: Path) -> dict:
    """Environment for this scenario's processes: a private runtime folder (short, for ipc
    paths) and state folder, so scenarios never meet each other's daemons."""
    runtime = Path(os.environ.get("TMPDIR", "/tmp")) / f"mb-edge-{os.getpid()}-{id(work):x}"
    runtime.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "MEMORYBANK_RUNTIME_DIR": str(runtime),
        "MEMORYBANK_STATE_DIR": str(work / "state"),
    }


class Daemon:
    """`memorybank daemon` for one database, its output kept in ``<db>.daemon.log``."""

    def __init__(self, db: Path, env: dict, *args: str):
        self.db = db
        self.env = env
        self.log_path = db.with_name(db.name + f".daemon{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "memory_bank", "daemon", "--db", str(db), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        with _env(env):
            wait_for_daemon(db, timeout=60)

    def stats(self) -> dict:
        with _env(self.env):
            return daemon_stats(self.db)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self._log.close()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class _env:
    """Run the in-process control client with the scenario's environment (discovery reads
    the runtime and state folders from it)."""

    def __init__(self, env: dict):
        self.env = env

    def __enter__(self):
        keys = ("MEMORYBANK_RUNTIME_DIR", "MEMORYBANK_STATE_DIR")
        self.saved = {k: os.environ.get(k) for k in keys}
        for key in self.saved:
            os.environ[key] = self.env[key]

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_publisher(code: str, env: dict, *args: str, **popen) -> subprocess.Popen:
    """A publisher process running ``code`` with ``args`` in sys.argv[1:]."""
    return subprocess.Popen(
        [PY, "-c", code, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[dict, str]:
    """Wait for a publisher; its JSON report (last stdout line) and its stderr."""
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"publisher exited {proc.returncode}:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1]), err


def stored_ids(db: Path) -> list[int]:
    """Every event, anomaly and metric id in the database (duplicates kept, to be seen)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for t in TABLES for r in conn.execute(f"SELECT id FROM {t}")]
    finally:
        conn.close()


def wait_until(condition, timeout: float, what: str, every: float = 0.1):
    """Poll ``condition`` until it returns a true value; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def check_exactly(db: Path, expected: set[int], what: str) -> None:
    """Every expected id landed once, and nothing else."""
    ids = stored_ids(db)
    duplicates = len(ids) - len(set(ids))
    missing = expected - set(ids)
    extra = set(ids) - expected
    if duplicates or missing or extra:
        raise AssertionError(
            f"{what}: {len(missing)} missing, {len(extra)} unexpected, {duplicates} duplicated "
            f"(of {len(expected)} expected)"
        )
