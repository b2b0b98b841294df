"""How a publisher finds the daemon of a database, and how ids stay unique without asking it.

Two small files live next to the database, as SQLite's own ``-wal`` and ``-shm`` do:

- ``<db>-daemon``: the daemon holds an exclusive ``flock`` on it for its whole life (one
  writer per database) and writes its endpoints into it as JSON. Publishers read it
  without locking; when it is missing they use the endpoints derived from the path.
- ``<db>-ids``: a counter of id blocks under ``flock``. Each publisher leases a block of
  2**32 ids, so ids are unique across processes with no round trip to the daemon.

Standard library only: publishers import this module.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .wire import MAX_ID_BLOCK


class DaemonLockedError(RuntimeError):
    """Another daemon (or embedded writer) already serves this database."""


@dataclass(frozen=True)
class Endpoints:
    data: str  # PULL side: publishers PUSH records here
    control: str  # ROUTER side: sync, stats and maintenance requests


def resolve_db_path(db_path: str | os.PathLike) -> Path:
    """The absolute path the daemon and publishers agree on (symlinks resolved)."""
    return Path(os.path.realpath(os.fspath(db_path)))


def is_url(location) -> bool:
    """A PostgreSQL URL rather than a SQLite path."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redact_url(location: str) -> str:
    """The location with any password replaced, for logs, status and file names."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", str(location))


def display_name(location) -> str:
    """How logs and messages name a database: a URL without its password, a resolved path."""
    return redact_url(location) if is_url(location) else str(resolve_db_path(location))


def state_dir() -> Path:
    """Where a PostgreSQL-backed daemon keeps its local files (lock, spools): persistent,
    unlike the runtime folder, so spools outlive a reboot."""
    explicit = os.environ.get("MEMORYBANK_STATE_DIR") or os.environ.get("STATE_DIRECTORY")
    if explicit:
        path = Path(explicit.split(":")[0])
    else:
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        path = Path(base) / "memorybank"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def location_key(location: str | os.PathLike, endpoint: str | None = None) -> Path:
    """The path the daemon's lock, endpoints file and publishers' spools hang from.

    A SQLite database: its own path (one writer per file, whatever the endpoint). A
    PostgreSQL URL: a name in the state folder made from the URL (password left out) and
    the endpoint, since several daemons may serve one PostgreSQL database, one per endpoint.
    """
    if not is_url(location):
        return resolve_db_path(location)
    digest = hashlib.sha1(f"{redact_url(location)}|{endpoint or ''}".encode()).hexdigest()[:16]
    return state_dir() / f"pg-{digest}"


def daemon_file(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-daemon")


def ids_file(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-ids")


def runtime_dir() -> Path:
    """Where default ipc sockets live: private to the user (mode 0700)."""
    explicit = os.environ.get("MEMORYBANK_RUNTIME_DIR")
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "memorybank"
    else:
        path = Path(tempfile.gettempdir()) / f"memorybank-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def default_endpoints(db_path: Path) -> Endpoints:
    """Endpoints derived from the database path alone, so no configuration is needed."""
    digest = hashlib.sha1(os.fsencode(db_path)).hexdigest()[:16]
    base = runtime_dir() / digest
    return Endpoints(data=f"ipc://{base}.data", control=f"ipc://{base}.ctl")


def read_daemon_info(db_path: Path) -> dict | None:
    """What the last daemon of this database wrote about itself, or None."""
    try:
        return json.loads(daemon_file(db_path).read_text())
    except (OSError, ValueError):
        return None


def find_endpoints(db_path: Path) -> Endpoints:
    """The endpoints a daemon of this database binds: as it recorded them, else the default."""
    info = read_daemon_info(db_path)
    if info and info.get("data_endpoint") and info.get("control_endpoint"):
        return Endpoints(info["data_endpoint"], info["control_endpoint"])
    return default_endpoints(db_path)


def daemon_running(db_path: Path) -> bool:
    """True when some process holds the writer lock of this database."""
    path = daemon_file(db_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


class WriterLock:
    """The one-writer lock: held for the life of a daemon or an embedded writer."""

    def __init__(self, db_path: Path, name: str | None = None):
        self.db_path = db_path
        self.name = name or str(db_path)  # what the refusal names (a URL for PostgreSQL)
        self.path = daemon_file(db_path)
        self._fd: int | None = None

    def acquire(self, info: dict) -> None:
        """Take the lock or raise DaemonLockedError.

        ``daemon_running`` probes with a momentary shared lock; a daemon starting at that
        very instant would see EWOULDBLOCK, so the exclusive lock is retried for half a
        second. A writer that really holds it is still refused at once.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + 0.5
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    other = read_daemon_info(self.db_path) or {}
                    raise DaemonLockedError(
                        f"another writer (pid {other.get('pid', '?')}) already serves "
                        f"{self.name}; stop it first, or point this one at another database"
                        + (" or endpoint" if self.name != str(self.db_path) else "")
                    ) from None
                time.sleep(0.01)
        self._fd = fd
        self.update_info(info)

    def update_info(self, info: dict) -> None:
        """Rewrite what publishers read about this writer (its endpoints, once bound)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(info).encode(), 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lease_id_block(db_path: Path) -> int:
    """Take the next unused id block of this database (durably, under flock)."""
    fd = os.open(ids_file(db_path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0).strip()
        next_block = max(int(raw) if raw else 1, 1)
        if next_block > MAX_ID_BLOCK:
            raise RuntimeError(f"{db_path}: all id blocks are used")
        record = f"{next_block + 1:020d}\n".encode()
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        return next_block
    finally:
        os.close(fd)


def reserve_id_blocks(db_path: Path, first_free: int) -> None:
    """Make sure the counter never hands out a block below ``first_free`` (used at start-up)."""
    fd = os.open(ids_file(db_path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0).strip()
        current = int(raw) if raw else 1
        if current < first_free:
            os.pwrite(fd, f"{first_free:020d}\n".encode(), 0)
            os.fsync(fd)
    finally:
        os.close(fd)
