"""How a publisher finds the daemon of a database, and how ids stay unique without asking it.

Two small files live next to the database, as SQLite's own ``-wal`` and ``-shm`` do:

- ``<db>-daemon``: the daemon holds an exclusive ``flock`` on it for its whole life and
  writes its endpoints into it as JSON. Publishers read it without locking; when it is
  missing they use the endpoints derived from the path.
- ``<db>-ids``: a counter of id blocks under ``flock``. Each publisher leases a block of
  2**32 ids, so ids are unique across processes with no round trip to the daemon.

A path is only one name of a file: a hard link, a bind mount or a second mount reaches the
same database by another path. So the writer also holds an exclusive ``flock`` on the
database file itself, which every name shares (the kernel keys it on device and inode).

New files get FILE_MODE (0640: the owner writes, the group reads) and new folders
DIR_MODE (0750), whatever the umask; what exists keeps the mode it has.

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


class DaemonLockedError(RuntimeError):
    """Another daemon (or embedded writer) already serves this database."""


# Modes of what MemoryBank creates (spools too): the group reads (and reaches the
# sockets), others nothing. The id counter is group-writable: publishers lease from it.
FILE_MODE = 0o640
DIR_MODE = 0o750
COUNTER_MODE = 0o660


def create_file(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """Open ``path``, creating it with ``mode`` whatever the umask; a file that exists
    keeps the mode it has (its owner may have chosen another)."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return os.open(path, flags & ~os.O_CREAT)
    os.fchmod(fd, mode)
    return fd


def make_dir(folder: Path, mode: int = DIR_MODE) -> Path:
    """Create ``folder`` and any missing parents with ``mode``, whatever the umask; a
    folder that exists keeps its mode."""
    missing, parent = [], folder
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode)
        except FileExistsError:
            continue  # another process made it meanwhile
        os.chmod(path, mode)
    return folder


def file_identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode): what every name of one file shares; None when there is no file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def lock_holders(identity: tuple[int, int]) -> list[tuple[str, str, int]]:
    """The locks the kernel lists on a file (``/proc/locks``): (kind, mode, pid) each,
    e.g. ("FLOCK", "WRITE", 812) or ("POSIX", "READ", 977). Empty where there is no
    /proc/locks."""
    dev, ino = identity
    wanted = (os.major(dev), os.minor(dev), ino)
    holders = []
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":  # "->" lines are waiters, not holders
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) != wanted:
                continue
            holders.append((fields[1], fields[3], int(fields[4])))
        except ValueError:
            continue
    return holders


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
    return make_dir(path, 0o700)


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
    """Where default ipc sockets live. A folder made here gets DIR_MODE: the group
    reaches the sockets (and so may publish), others do not; an existing folder (systemd's
    RuntimeDirectory) keeps its mode, so its group decides who writes."""
    explicit = os.environ.get("MEMORYBANK_RUNTIME_DIR")
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "memorybank"
    else:
        path = Path(tempfile.gettempdir()) / f"memorybank-{os.getuid()}"
    return make_dir(path)


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


def _flock_exclusive(fd: int) -> bool:
    """Take an exclusive flock; False when another holder keeps it.

    ``daemon_running`` probes with a momentary shared lock; a daemon starting at that very
    instant would see EWOULDBLOCK, so the lock is retried for half a second.
    """
    deadline = time.monotonic() + 0.5
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


class WriterLock:
    """The one-writer lock: held for the life of a daemon or an embedded writer.

    ``<db>-daemon`` is locked by path (publishers and ``status`` find the writer there).
    With ``database_file`` (SQLite), the database file itself is locked too: every name of
    it (hard links, bind mounts, symlinks) shares that lock, so a second writer is refused
    whatever path it was given. The file is created here when missing, to be locked before
    SQLite opens it, and its descriptor stays open until ``release``, which must come after
    the store is closed: closing any descriptor of a file drops the POSIX locks SQLite
    holds on it in this process.
    """

    def __init__(self, db_path: Path, name: str | None = None, database_file: bool = False):
        self.db_path = db_path
        self.name = name or str(db_path)  # what the refusal names (a URL for PostgreSQL)
        self.path = daemon_file(db_path)
        self.database_file = database_file
        self._fd: int | None = None
        self._db_fd: int | None = None

    def acquire(self, info: dict) -> None:
        """Take the lock(s) or raise DaemonLockedError."""
        fd = create_file(self.path, os.O_RDWR)
        if not _flock_exclusive(fd):
            os.close(fd)
            other = read_daemon_info(self.db_path) or {}
            raise DaemonLockedError(
                f"another writer (pid {other.get('pid', '?')}) already serves "
                f"{self.name}; stop it first, or point this one at another database"
                + (" or endpoint" if self.name != str(self.db_path) else "")
            )
        self._fd = fd
        if self.database_file:
            try:
                self._db_fd = self._lock_database_file()
            except BaseException:
                self.release()
                raise
        self.update_info(info)

    def _lock_database_file(self) -> int:
        try:
            fd = create_file(self.db_path, os.O_RDWR)
        except PermissionError:  # the store then says it cannot write; the lock still holds
            fd = os.open(self.db_path, os.O_RDONLY)
        if _flock_exclusive(fd):
            return fd
        st = os.fstat(fd)
        os.close(fd)
        pids = sorted(
            {pid for kind, _, pid in lock_holders((st.st_dev, st.st_ino)) if kind == "FLOCK"}
        )
        holder = f"pid {', '.join(map(str, pids))}" if pids else "another process"
        raise DaemonLockedError(
            f"another writer ({holder}) already serves {self.name} under another name (a "
            "hard link, or another mount of its folder): one writer per database file; "
            "stop it first"
        )

    def still_held(self) -> bool:
        """True while ``<db>-daemon`` is still the file this writer locked (a deleted or
        replaced one no longer tells publishers and ``status`` about it)."""
        return self._fd is not None and file_identity(self.path) == _fd_identity(self._fd)

    def relock(self, info: dict) -> bool:
        """Lock a ``<db>-daemon`` made anew at the path and write ``info`` into it; False
        when another writer holds the new file."""
        fd = create_file(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        self.update_info(info)
        return True

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
        if self._db_fd is not None:
            os.close(self._db_fd)  # closing drops the flock
            self._db_fd = None


def _fd_identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def lease_id_block(db_path: Path) -> int:
    """Take the next unused id block of this database (durably, under flock)."""
    from .wire import MAX_ID_BLOCK  # here: readers and the viewer never load msgpack

    fd = create_file(ids_file(db_path), os.O_RDWR, COUNTER_MODE)
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


def next_id_block(db_path: Path) -> int:
    """The block the counter of ``db_path`` hands out next (1 when there is none)."""
    try:
        raw = ids_file(db_path).read_bytes()[:32].strip()
        return max(int(raw), 1) if raw else 1
    except (OSError, ValueError):
        return 1


def reserve_id_blocks(db_path: Path, first_free: int) -> None:
    """Make sure the counter never hands out a block below ``first_free`` (used at start-up)."""
    fd = create_file(ids_file(db_path), os.O_RDWR, COUNTER_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0).strip()
        current = int(raw) if raw else 1
        if current < first_free:
            os.pwrite(fd, f"{first_free:020d}\n".encode(), 0)
            os.fsync(fd)
    finally:
        os.close(fd)
