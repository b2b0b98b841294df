"""The files MemoryBank makes beside a database: their modes, their identity, their locks.

New files get FILE_MODE (0640: the owner writes, the group reads) and new folders
DIR_MODE (0750), whatever the umask; what exists keeps the mode it has.

A path is only one name of a file: a hard link, a bind mount or a second mount reaches the
same file by another path. ``file_identity`` is what every name shares, and
``lock_holders`` which processes lock it.

Standard library only: publishers, the writer and the store import this module.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)
if TYPE_CHECKING:
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
