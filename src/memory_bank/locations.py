"""A database's location, and the local paths named after it.

The *location* is what the user names: a SQLite path or a ``postgresql://`` URL. Its
*key* (``location_key``) is the local path the writer's lock, the id counter and the
publishers' spools hang from, as SQLite's own ``-wal`` and ``-shm`` hang from the database:
``<key>-daemon``, ``<key>-ids`` and ``<key>-spool/``. For SQLite the key is the database's
resolved path; for PostgreSQL, a file in the state folder named after the URL and the
endpoint.

Standard library only: publishers, the writer and the store import this module. It loads
pathlib and re only where a function needs them: ``memory-viewer --summary`` reads through
``real_path`` alone (pathlib, with the urllib.parse it loads, is a tenth of its start-up).
"""

from __future__ import annotations

import os

from .files import make_dir

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)
if TYPE_CHECKING:
    from pathlib import Path

#: The database a ``MemoryBank()``, a daemon or a viewer uses when none is named: the file
#: the seed document names.
DEFAULT_DATABASE = "ev_charging_memory.db"


def real_path(db_path: str | os.PathLike) -> str:
    """The absolute path the daemon and publishers agree on (symlinks resolved), as text."""
    return os.path.realpath(os.fspath(db_path))


def resolve_db_path(db_path: str | os.PathLike) -> Path:
    """``real_path`` as a Path."""
    from pathlib import Path

    return Path(real_path(db_path))


def is_url(location) -> bool:
    """A PostgreSQL URL rather than a SQLite path."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redact_url(location: str) -> str:
    """The location with any password replaced, for logs, status and file names."""
    import re

    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", str(location))


def display_name(location) -> str:
    """How logs and messages name a database: a URL without its password, a resolved path."""
    return redact_url(location) if is_url(location) else real_path(location)


def state_dir() -> Path:
    """Where a PostgreSQL-backed daemon keeps its local files (lock, spools): persistent,
    unlike the runtime folder, so spools outlive a reboot."""
    from pathlib import Path

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
    import hashlib  # here: SQLite paths (the viewer, status) never need it

    digest = hashlib.sha1(f"{redact_url(str(location))}|{endpoint or ''}".encode()).hexdigest()[:16]
    return state_dir() / f"pg-{digest}"


def daemon_file(key: Path) -> Path:
    """The writer's lock, holding its endpoints as JSON."""
    return key.with_name(key.name + "-daemon")


def daemon_path(location: str | os.PathLike, endpoint: str | None = None) -> str:
    """``daemon_file(location_key(location, endpoint))`` as text; for a SQLite path without
    pathlib (``memorybank status`` reads through this alone)."""
    if is_url(location):
        return os.fspath(daemon_file(location_key(location, endpoint)))
    return real_path(location) + "-daemon"


def ids_file(key: Path) -> Path:
    """The id-block counter."""
    return key.with_name(key.name + "-ids")


def spool_root(key: Path) -> Path:
    """The folder of the publishers' spools, one folder per publisher."""
    return key.with_name(key.name + "-spool")
