"""How a publisher finds the daemon of a database, and whether one serves it.

The daemon holds an exclusive ``flock`` on ``<key>-daemon`` (``locations.daemon_file``)
for its whole life and writes its endpoints into it as JSON. Publishers read it without
locking; when it is missing they use the endpoints derived from the key.

A path is only one name of a file: a hard link, a bind mount or a second mount reaches the
same database by another path. So the writer also holds an exclusive ``flock`` on the
database file itself, which every name shares (the kernel keys it on device and inode).

The location's names and derived paths (``locations``), the files' modes and identity
(``files``) and the id counter (``id_blocks``) live in modules of their own, which the
store imports too; they are re-exported here for the callers that find a daemon.

Standard library only: publishers import this module.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections import namedtuple

from .files import (  # noqa: F401 (re-exported)
    DIR_MODE,
    FILE_MODE,
    DaemonLockedError,
    create_file,
    file_identity,
    lock_holders,
    make_dir,
)
from .id_blocks import lease_id_block, next_id_block, reserve_id_blocks  # noqa: F401
from .jsontext import loads
from .locations import (  # noqa: F401 (re-exported)
    daemon_file,
    display_name,
    ids_file,
    is_url,
    location_key,
    redact_url,
    resolve_db_path,
    state_dir,
)

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)
if TYPE_CHECKING:  # pathlib is loaded where a Path is made: `memorybank status` makes none
    from pathlib import Path

# data: the PULL side (publishers PUSH records here); control: the ROUTER side (sync, stats
# and maintenance requests). Not typing.NamedTuple: `memorybank status` reads through this
# module, and typing would be a tenth of its start-up.
Endpoints = namedtuple("Endpoints", ["data", "control"])


def runtime_dir() -> Path:
    """Where default ipc sockets live. A folder made here gets DIR_MODE: the group
    reaches the sockets (and so may publish), others do not; an existing folder (systemd's
    RuntimeDirectory) keeps its mode, so its group decides who writes."""
    from pathlib import Path

    explicit = os.environ.get("MEMORYBANK_RUNTIME_DIR")
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "memorybank"
    else:
        import tempfile  # (here, as hashlib below: `memorybank status` never needs them)

        path = Path(tempfile.gettempdir()) / f"memorybank-{os.getuid()}"
    return make_dir(path)


def default_endpoints(key: Path) -> Endpoints:
    """Endpoints derived from the location's key alone, so no configuration is needed."""
    import hashlib

    digest = hashlib.sha1(os.fsencode(key)).hexdigest()[:16]
    base = runtime_dir() / digest
    return Endpoints(data=f"ipc://{base}.data", control=f"ipc://{base}.ctl")


def read_daemon_info(key: Path) -> dict | None:
    """What the last daemon of this database wrote about itself, or None."""
    return read_info_file(daemon_file(key))


def read_info_file(path: str | os.PathLike) -> dict | None:
    """``read_daemon_info`` of the daemon file at ``path`` (``locations.daemon_path``)."""
    try:
        with open(path) as file:
            return loads(file.read())
    except (OSError, ValueError):
        return None


def recorded_endpoints(info: dict | None) -> Endpoints | None:
    """The endpoints a daemon recorded in its file (``read_daemon_info``), if it did."""
    if info and info.get("data_endpoint") and info.get("control_endpoint"):
        return Endpoints(info["data_endpoint"], info["control_endpoint"])
    return None


def find_endpoints(key: Path) -> Endpoints:
    """The endpoints a daemon of this database binds: as it recorded them, else the default."""
    return recorded_endpoints(read_daemon_info(key)) or default_endpoints(key)


def daemon_running(key: Path) -> bool:
    """True when some process holds the writer lock of this database."""
    return lock_held(daemon_file(key))


def lock_held(path: str | os.PathLike) -> bool:
    """``daemon_running`` of the daemon file at ``path`` (``locations.daemon_path``)."""
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

    ``<key>-daemon`` is locked (publishers and ``status`` find the writer there). With
    ``database_file`` (SQLite, whose key is the database's path), the database file itself
    is locked too: every name of it (hard links, bind mounts, symlinks) shares that lock,
    so a second writer is refused whatever path it was given. The file is created here
    when missing, to be locked before SQLite opens it, and its descriptor stays open until
    ``release``, which must come after the store is closed: closing any descriptor of a
    file drops the POSIX locks SQLite holds on it in this process.
    """

    def __init__(self, key: Path, name: str | None = None, database_file: bool = False):
        self.key = key
        self.name = name or str(key)  # what the refusal names (a URL for PostgreSQL)
        self.path = daemon_file(key)
        self.database_file = database_file
        self._fd: int | None = None
        self._db_fd: int | None = None

    def acquire(self, info: dict) -> None:
        """Take the lock(s) or raise DaemonLockedError."""
        fd = create_file(self.path, os.O_RDWR)
        if not _flock_exclusive(fd):
            os.close(fd)
            other = read_daemon_info(self.key) or {}
            raise DaemonLockedError(
                f"another writer (pid {other.get('pid', '?')}) already serves "
                f"{self.name}; stop it first, or point this one at another database"
                + (" or endpoint" if self.name != str(self.key) else "")
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
            fd = create_file(self.key, os.O_RDWR)
        except PermissionError:  # the store then says it cannot write; the lock still holds
            fd = os.open(self.key, os.O_RDONLY)
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
        """True while ``<key>-daemon`` is still the file this writer locked (a deleted or
        replaced one no longer tells publishers and ``status`` about it)."""
        return self._fd is not None and file_identity(self.path) == _fd_identity(self._fd)

    def relock(self, info: dict) -> bool:
        """Lock a ``<key>-daemon`` made anew at the path and write ``info`` into it; False
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
        fd = self._fd
        if fd is None:
            raise RuntimeError(f"the writer lock of {self.name} is not held")
        import json  # here: `memorybank status` reads the file (jsontext), never writes it

        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)

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
