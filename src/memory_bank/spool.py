"""A publisher's disk spool: messages not yet acknowledged, kept across daemon outages.

One folder per publisher under ``<db>-spool/``, holding a lock file (flock'ed while the
publisher lives) and numbered segment files of frames::

    [u32 length][u32 crc32][u64 message seq][length bytes: one packed wire message]

A frame whose length or checksum does not hold ends the readable part of a segment (a
torn write at power loss): the frames before it are replayed, the rest is reported. The
daemon adopts the folders of publishers that are gone and applies what they hold.

Standard library only: publishers import this module.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<IIQ")
SEGMENT_BYTES = 8 * 1024 * 1024
MAX_FRAME = 64 * 1024 * 1024


def spool_root(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-spool")


@dataclass
class ReadResult:
    frames: list[tuple[int, bytes]]  # (message seq, packed message)
    corrupt_bytes: int  # bytes after the last good frame, not replayable


def read_segment(path: Path) -> ReadResult:
    """Every intact frame of a segment, in order, and how many bytes past them were bad."""
    data = path.read_bytes()
    frames = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc, seq = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if length > MAX_FRAME or end > len(data):
            break
        payload = data[pos + _HEADER.size : end]
        if zlib.crc32(payload) != crc:
            break
        frames.append((seq, payload))
        pos = end
    return ReadResult(frames, len(data) - pos)


class Spool:
    """The live publisher's side: append frames, drop segments once acknowledged."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # segment number -> highest message seq it holds
        self._segments: dict[int, int] = {}
        self._current: int | None = None
        self._current_fh = None
        self._current_bytes = 0
        self.bytes = 0

    def _segment_path(self, number: int) -> Path:
        return self.folder / f"{number:08d}.seg"

    def append(self, seq: int, raw: bytes) -> None:
        """Write one message (whole frame, then fsync'd by ``sync``)."""
        if self._current_fh is None or self._current_bytes >= SEGMENT_BYTES:
            self._roll()
        frame = _HEADER.pack(len(raw), zlib.crc32(raw), seq) + raw
        self._current_fh.write(frame)
        self._current_bytes += len(frame)
        self.bytes += len(frame)
        self._segments[self._current] = seq

    def sync(self) -> None:
        if self._current_fh is not None:
            self._current_fh.flush()
            os.fsync(self._current_fh.fileno())

    def _roll(self) -> None:
        if self._current_fh is not None:
            self.sync()
            self._current_fh.close()
        self._current = (self._current or 0) + 1
        self._current_fh = open(self._segment_path(self._current), "ab")
        self._current_bytes = 0

    def read_all(self) -> Iterator[tuple[int, bytes]]:
        """The spooled (seq, message) pairs, oldest first (for a replay)."""
        self.sync()
        for number in sorted(self._segments):
            result = read_segment(self._segment_path(number))
            if result.corrupt_bytes:
                log.error(
                    "spool segment %s: %d unreadable bytes skipped",
                    self._segment_path(number),
                    result.corrupt_bytes,
                )
            yield from result.frames

    def release_through(self, acked_seq: int) -> None:
        """Delete segments whose every message is acknowledged."""
        for number, top in sorted(self._segments.items()):
            if top > acked_seq:
                break
            if number == self._current:
                self._current_fh.close()
                self._current_fh = None
            path = self._segment_path(number)
            self.bytes -= path.stat().st_size
            path.unlink()
            del self._segments[number]

    def close(self, keep: bool) -> None:
        """Keep the folder for the daemon to adopt (``keep``), or remove it."""
        if self._current_fh is not None:
            self.sync()
            self._current_fh.close()
            self._current_fh = None
        if not keep:
            shutil.rmtree(self.folder, ignore_errors=True)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def orphaned_spools(db_path: Path) -> Iterator[tuple[Path, int]]:
    """Spool folders whose publisher is gone (lock free), with its publisher id; each is
    yielded while this process holds its lock, so two adopters never take the same one."""
    root = spool_root(db_path)
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or not folder.name.isdigit():
            continue
        try:
            fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue  # its publisher is alive
            raise
        try:
            yield folder, int(folder.name)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def segment_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.seg"))
