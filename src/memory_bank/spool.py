"""A publisher's disk spool: messages not yet acknowledged, kept across daemon outages.

One folder per publisher under ``<db>-spool/``, holding a lock file (flock'ed while the
publisher lives) and numbered segment files of frames::

    [u32 length][u32 crc32][u64 message seq][length bytes: one packed wire message]

A frame whose length or checksum does not hold ends the readable part of a segment (a
torn write at power loss): the frames before it are replayed, the rest is reported. The
daemon adopts the folders of publishers that are gone and applies what they hold.

A publisher that holds a spool token (spool_auth: handed out by a daemon with CURVE) sets
the length's top bit (``MAC_FLAG``) and starts the frame's bytes with a MAC; frames written
before it had a token carry none, so one spool may hold both.

Standard library (and spool_auth) only: publishers import this module.
"""

from __future__ import annotations

import errno
import fcntl
import hmac
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import spool_auth
from .files import DIR_MODE, create_file, make_dir
from .locations import spool_root

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<IIQ")
MAC_FLAG = 1 << 31  # in the length field: the frame starts with a spool_auth MAC
SEGMENT_BYTES = 8 * 1024 * 1024
MAX_FRAME = 64 * 1024 * 1024


@dataclass
class ReadResult:
    frames: list[tuple[int, bytes]]  # (message seq, packed message)
    corrupt_bytes: int  # bytes after the last good frame, not replayable
    forged_frames: int = 0  # intact frames whose MAC does not hold (skipped when checked)
    unsigned_frames: int = 0  # intact frames with no MAC at all (skipped when checked)


def read_segment(path: Path, token: bytes | None = None) -> ReadResult:
    """Every intact frame of a segment, in order, and how many bytes past them were bad.

    MACs are stripped; with ``token`` they are checked, and a frame whose MAC does not hold,
    or that has none, is counted and skipped."""
    data = path.read_bytes()
    frames = []
    forged = unsigned = 0
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc, seq = _HEADER.unpack_from(data, pos)
        signed = length & MAC_FLAG
        length &= ~MAC_FLAG
        end = pos + _HEADER.size + length
        if length > MAX_FRAME or end > len(data) or (signed and length < spool_auth.MAC_BYTES):
            break
        payload = data[pos + _HEADER.size : end]
        if zlib.crc32(payload) != crc:
            break
        pos = end
        if signed:
            mac, payload = payload[: spool_auth.MAC_BYTES], payload[spool_auth.MAC_BYTES :]
            if token is not None and not hmac.compare_digest(
                mac, spool_auth.frame_mac(token, seq, payload)
            ):
                forged += 1
                continue
        elif token is not None:
            unsigned += 1
            continue
        frames.append((seq, payload))
    return ReadResult(frames, len(data) - pos, forged, unsigned)


class Spool:
    """The live publisher's side: append frames, drop segments once acknowledged.

    A write that fails (no space, a file size limit, an I/O error) raises OSError and leaves
    the segment as it was before the frame: no torn frame ends a segment that later frames
    follow, so the spool is usable again as soon as there is room.
    """

    def __init__(self, folder: Path, mode: int = DIR_MODE):
        self.folder = folder
        self.file_mode = mode & 0o666
        self.token: bytes | None = None  # set_token
        make_dir(folder, mode)
        self._lock_fd = create_file(folder / "lock", os.O_RDWR, self.file_mode)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise
        # segment number -> [highest message seq it holds, its size in bytes]
        self._segments: dict[int, list[int]] = {}
        self._current: int | None = None
        self._current_fd: int | None = None
        self._unsynced = False
        self.bytes = 0

    def _segment_path(self, number: int) -> Path:
        return self.folder / f"{number:08d}.seg"

    def append(self, seq: int, raw: bytes) -> None:
        """Write one message as one frame (made durable by ``sync``)."""
        fd, current = self._current_fd, self._current
        if fd is None or current is None or self._segments[current][1] >= SEGMENT_BYTES:
            fd, current = self._roll()
        if self.token is None:
            frame = _HEADER.pack(len(raw), zlib.crc32(raw), seq) + raw
        else:
            raw = spool_auth.frame_mac(self.token, seq, raw) + raw
            frame = _HEADER.pack(len(raw) | MAC_FLAG, zlib.crc32(raw), seq) + raw
        segment = self._segments[current]
        try:
            written = 0
            while written < len(frame):
                written += os.write(fd, memoryview(frame)[written:])
        except OSError:
            # Cut the partial frame off, so the segment ends on a whole frame; if even that
            # fails, later frames go to a new segment (the torn tail is reported on reading).
            try:
                os.ftruncate(fd, segment[1])
            except OSError:
                os.close(fd)
                self._current_fd = None
            raise
        segment[0] = seq
        segment[1] += len(frame)
        self.bytes += len(frame)
        self._unsynced = True

    def set_token(self, identity: str, token: bytes) -> None:
        """From now on, MAC every frame with the spool token a daemon handed this publisher
        for ``identity``; the identity goes into the folder (replaced atomically) so the
        daemon can recompute the token."""
        temporary = self.folder / (spool_auth.IDENTITY_FILE + ".new")
        fd = create_file(temporary, os.O_WRONLY | os.O_TRUNC, self.file_mode)
        with open(fd, "w") as fh:
            fh.write(identity + "\n")
            fh.flush()
            os.fsync(fd)
        os.replace(temporary, self.folder / spool_auth.IDENTITY_FILE)
        self.token = token

    @property
    def unsynced(self) -> bool:
        """Frames were written since the last fsync."""
        return self._unsynced

    def sync(self) -> None:
        if self._current_fd is not None and self._unsynced:
            os.fsync(self._current_fd)
            self._unsynced = False

    def _roll(self) -> tuple[int, int]:
        """Start the next segment; returns its file descriptor and number."""
        number = (self._current or 0) + 1
        fd = create_file(self._segment_path(number), os.O_WRONLY | os.O_APPEND, self.file_mode)
        self._close_current()
        self._current, self._current_fd = number, fd
        self._segments[number] = [0, 0]
        return fd, number

    def _close_current(self) -> None:
        if self._current_fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._current_fd)
                self._current_fd = None

    def read_all(self) -> Iterator[tuple[int, bytes]]:
        """The spooled (seq, message) pairs, oldest first (for a replay)."""
        for number in sorted(self._segments):
            if not self._segments[number][1]:
                continue
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
        for number, (top, size) in sorted(self._segments.items()):
            if top > acked_seq or not size:
                break
            if number == self._current:
                self._close_current()
            try:
                self._segment_path(number).unlink()
            except FileNotFoundError:
                pass
            self.bytes -= size
            del self._segments[number]

    def close(self, keep: bool) -> None:
        """Keep the folder for the daemon to adopt (``keep``), or remove it."""
        try:
            self._close_current()
        except OSError as exc:
            log.error("spool %s: cannot sync its last segment: %s", self.folder, exc)
        if not keep:
            shutil.rmtree(self.folder, ignore_errors=True)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def orphaned_spools(key: Path) -> Iterator[tuple[Path, int]]:
    """Spool folders whose publisher is gone (lock free), with its publisher id; each is
    yielded while this process holds its lock, so two adopters never take the same one."""
    root = spool_root(key)
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or not folder.name.isdigit():
            continue
        try:
            fd = create_file(folder / "lock", os.O_RDWR, DIR_MODE & 0o666)
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
