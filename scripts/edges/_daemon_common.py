"""What the daemon-side edge scenarios share: daemons and publishers as real processes in
the scenario's folder (so they can be signalled, refused, or run as other users), and
what landed in the database."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from edges._common import check_exactly as _check_rows
from edges._common import finish as finish  # re-exported for the scenarios
from edges._common import stored_ids as stored_ids
from edges._common import wait_until as wait_until

PY = sys.executable
_started: list[subprocess.Popen] = []  # processes to kill if a scenario fails half-way

# A publisher process: argv = db, count, name [, endpoint, server key, secret key].
# It writes `count` events, flushes, closes, and prints one JSON line: its ids, its
# publisher id, and whether the daemon confirmed everything.
PUBLISHER = r"""
import json, sys
from memory_bank import Publisher
db, n, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
options = {"close_timeout": 2.0}
if len(sys.argv) > 4:
    from memory_bank.keys import client_curve
    options["endpoint"] = sys.argv[4]
    if sys.argv[6] != "-":
        options["curve"] = client_curve(sys.argv[5], sys.argv[6])
pub = Publisher(None if db == "-" else db, **options)
ids = [pub.log_event("EDGE", name, f"{name} {i}", {"i": i}) for i in range(n)]
confirmed = pub.flush(30)
pub.close()
print(json.dumps({"ids": ids, "publisher": pub.publisher_id, "confirmed": confirmed}))
"""


def cleans_up(run):
    """Decorate a scenario's ``run``: whatever it started and left running when it ends
    (a failed check half-way) is killed, so no daemon outlives its scenario."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        finally:
            while _started:
                proc = _started.pop()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    return wrapper


def spawn(args: list, **popen) -> subprocess.Popen:
    """Start a process that ``cleans_up`` kills if the scenario leaves it running."""
    proc = subprocess.Popen([str(a) for a in args], **popen)
    _started.append(proc)
    return proc


# A publisher process that streams events until the stop file appears, then flushes and
# closes; prints one JSON line: each id with the time of its call, and its publisher id.
STREAM = r"""
import json, os, sys, time
from memory_bank import Publisher
db, stop = sys.argv[1], sys.argv[2]
pub = Publisher(db, close_timeout=2.0)
calls = []
while not os.path.exists(stop):
    for _ in range(20):
        calls.append((pub.log_event("EDGE", "stream", "x"), time.time()))
    time.sleep(0.002)
confirmed = pub.flush(60)
pub.close()
print(json.dumps({"calls": calls, "confirmed": confirmed, "publisher": pub.publisher_id}))
"""


def scenario_env(work: Path, **extra: str) -> dict:
    """The environment of a scenario's processes: its own runtime and state folders."""
    return {
        **os.environ,
        "MEMORYBANK_RUNTIME_DIR": str(work / "run"),
        "MEMORYBANK_STATE_DIR": str(work / "state"),
        **extra,
    }


@contextlib.contextmanager
def folders_of(env: dict):
    """Run this process's control client with the scenario's folders (discovery reads
    them from the environment), then put the caller's back."""
    keys = ("MEMORYBANK_RUNTIME_DIR", "MEMORYBANK_STATE_DIR")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: env[key] for key in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Daemon:
    """`memorybank daemon --db DB ARGS` in the background, its output in a log file (in
    ``log_dir``, by default the database's folder)."""

    def __init__(
        self,
        db: Path,
        env: dict,
        *args: str,
        wait: bool = True,
        python: str = PY,
        log_dir: Path | None = None,
        **popen,
    ):
        self.db = db
        self.env = env
        self.log_path = (log_dir or db.parent) / f"{db.name}.daemon{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.proc = spawn(
            [python, "-m", "memory_bank", "daemon", "--db", db, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            **popen,
        )
        self.endpoint = args[args.index("--endpoint") + 1] if "--endpoint" in args else None
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(
            lambda: self.proc.poll() is not None or self._answers(),
            timeout,
            f"the daemon of {self.db} to answer",
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited {self.proc.returncode}:\n{self.log}")

    def _answers(self) -> bool:
        from memory_bank.control import DaemonUnavailable, wait_for_daemon

        with folders_of(self.env):
            try:
                wait_for_daemon(self.db, timeout=0.5, endpoint=self.endpoint)
                return True
            except DaemonUnavailable:
                return False

    def stats(self) -> dict:
        from memory_bank.control import daemon_stats

        with folders_of(self.env):
            return daemon_stats(self.db, endpoint=self.endpoint)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal it and wait: AssertionError unless it exits 0 without a traceback."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=60)
        self._log.close()
        if rc != 0 or "Traceback" in self.log:
            raise AssertionError(f"the daemon exited {rc}:\n{self.log[-3000:]}")

    @property
    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


def refused_start(db: Path, env: dict, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Start a daemon that must refuse at once: its exit status and its one line."""
    try:
        result = subprocess.run(
            [PY, "-m", "memory_bank", "daemon", "--db", str(db), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"a daemon on {db} served instead of refusing") from None
    if result.returncode == 0:
        raise AssertionError(f"the daemon on {db} served instead of refusing:\n{result.stderr}")
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    if "Traceback" in result.stderr or len(lines) != 1:
        raise AssertionError(f"not one clear line but:\n{result.stderr[-3000:]}")
    return result.returncode, lines[0]


def start_publisher(env: dict, *args, python: str = PY, **popen) -> subprocess.Popen:
    """A PUBLISHER process (``popen``: user, group, umask... for subprocess.Popen)."""
    return spawn(
        [python, "-c", PUBLISHER, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def start_stream(env: dict, db: Path, stop: Path) -> subprocess.Popen:
    """A STREAM publisher process: it writes until ``stop`` exists (``finish`` it then)."""
    return spawn(
        [PY, "-c", STREAM, db, stop],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def check_exactly(db: Path, expected: set[int], what: str) -> None:
    """Every expected id landed once, nothing else did, and the file is sound."""
    _check_rows(db, expected, what)
    if integrity(db) != "ok":
        raise AssertionError(f"{what}: integrity_check says {integrity(db)}")


def streaming(
    work: Path, db: Path, streams: int, committed: int = 2_000, daemon_args=(), **options
):
    """The start of a scenario that breaks something under a live flow: a daemon on ``db``
    (``daemon_args``, Daemon ``options``) and ``streams`` STREAM publishers, once
    ``committed`` records are in. Returns the environment, the daemon, and a function that
    ends the streams and returns their reports."""
    env = scenario_env(work)
    stop = work / "stop"
    daemon = Daemon(db, env, *daemon_args, **options)
    procs = [start_stream(env, db, stop) for _ in range(streams)]
    wait_until(lambda: daemon.stats()["committed_records"] >= committed, 60, "records committed")

    def end() -> list[dict]:
        stop.touch()
        return [finish(proc)[0] for proc in procs]

    return env, daemon, end


def curve_site(work: Path) -> tuple[Path, Path]:
    """Keys for a daemon, an authorized publisher (lab) and a stranger, only lab's
    authorized, and a configuration naming them: returns (keys folder, config file)."""
    from memory_bank.keys import create_key_pair

    keys, authorized = work / "keys", work / "authorized"
    for name in ("daemon", "lab", "stranger"):
        create_key_pair(keys, name)
    authorized.mkdir()
    (authorized / "lab.key").write_bytes((keys / "lab.key").read_bytes())
    config = work / "curve.toml"
    config.write_text(
        "[security]\n"
        f'curve_secret_key_file = "{keys / "daemon.key_secret"}"\n'
        f'curve_authorized_keys_dir = "{authorized}"\n'
    )
    return keys, config
