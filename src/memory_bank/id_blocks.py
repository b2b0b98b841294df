"""The id-block counter: how ids stay unique across processes without asking the daemon.

``<key>-ids`` (``locations.ids_file``) holds the next free block under ``flock``. Each
publisher leases a block of 2**32 ids; the SQLite store keeps the counter above every id
it holds at each start.

Standard library only: publishers import this module.
"""

from __future__ import annotations

import fcntl
import os

from .files import COUNTER_MODE, create_file
from .locations import ids_file

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)
if TYPE_CHECKING:
    from pathlib import Path


def lease_id_block(key: Path) -> int:
    """Take the next unused id block of this database (durably, under flock)."""
    from .wire import MAX_ID_BLOCK  # here: readers and the viewer never load msgpack

    fd = create_file(ids_file(key), os.O_RDWR, COUNTER_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0).strip()
        next_block = max(int(raw) if raw else 1, 1)
        if next_block > MAX_ID_BLOCK:
            raise RuntimeError(f"{key}: all id blocks are used")
        record = f"{next_block + 1:020d}\n".encode()
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        return next_block
    finally:
        os.close(fd)


def next_id_block(key: Path) -> int:
    """The block the counter of ``key`` hands out next (1 when there is none)."""
    try:
        raw = ids_file(key).read_bytes()[:32].strip()
        return max(int(raw), 1) if raw else 1
    except (OSError, ValueError):
        return 1


def reserve_id_blocks(key: Path, first_free: int) -> None:
    """Make sure the counter never hands out a block below ``first_free`` (used at start-up)."""
    fd = create_file(ids_file(key), os.O_RDWR, COUNTER_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0).strip()
        current = int(raw) if raw else 1
        if current < first_free:
            os.pwrite(fd, f"{first_free:020d}\n".encode(), 0)
            os.fsync(fd)
    finally:
        os.close(fd)
