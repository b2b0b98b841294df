"""Where a publisher keeps each message until the daemon acknowledges its commit.

In memory up to ``memory_bytes``, then in its spool folder up to ``spool_bytes``; past
both, the overflow policy says whether the newest rows wait (and past the caller's queue,
drop) or the oldest messages go. With ``durability="disk"`` every message is written to the
spool before it is sent. Sender thread only (and Publisher.close, once it stopped).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from ..spool import Spool

log = logging.getLogger(__package__)

OVERFLOW_POLICIES = ("drop_newest", "drop_oldest")
# After a spool write fails (disk full...), the spool counts as full for this long.
SPOOL_RETRY_SECONDS = 1.0
# "memory": messages go to the spool only when memory is full (fast; a killed process loses
# what memory held). "disk": every message is written to the spool before it is sent, and
# fsync'd in groups every DISK_SYNC_SECONDS (Vector's disk buffers): a SIGKILLed process
# loses only what it had not yet packed, a power loss at most the last few milliseconds.
DURABILITY_MODES = ("memory", "disk")
DISK_SYNC_SECONDS = 0.005


class Outbox:
    """A publisher's numbered messages, from packed to acknowledged (or given up).

    ``seq`` is the last message stored; ``base`` the one at or below which nothing will be
    sent again (acknowledged, or given up: the wire's ``base``). ``folder`` is the spool
    folder (None: no spool), ``spool`` the spool in it once first used, and
    ``spool_token`` what the daemon handed for it under CURVE.
    """

    def __init__(
        self,
        publisher_id: int,
        folder: str | None,
        *,
        memory_bytes: int,
        spool_bytes: int,
        overflow: str,
        spool_mode: int,
        durability: str,
    ):
        self.publisher_id = publisher_id
        self.folder = folder
        self.memory_bytes = memory_bytes
        self.spool_bytes = spool_bytes
        self.overflow = overflow
        self.spool_mode = spool_mode
        self.durability = durability
        self.spool_token: tuple[str, bytes] | None = None
        self.seq = 0
        self.base = 0
        self._in_memory: deque = deque()  # (seq, raw, records), the newest part
        self._memory_used = 0  # bytes of _in_memory
        self.spool: Spool | None = None
        self._spool_retry_at = 0.0  # monotonic; before it, the spool counts as full
        self._spool_error: str | None = None  # the last write failure, until one succeeds
        self.written_seq = 0  # every message up to here is in the spool (or acknowledged)
        self._synced_at = 0.0
        self._on_disk: deque = deque()  # (seq, records) of the messages only the spool holds
        self._replay_iter: Iterator[tuple[int, bytes]] | None = None  # the spool, replayed
        self._replay_peek: tuple[int, bytes] | None = None

    # -- storing ------------------------------------------------------------------------
    def add(self, raw: bytes, records: int) -> int:
        """Keep the packed message ``seq + 1`` (``raw``, holding ``records``) until
        acknowledged; returns the records of older messages given up to make room."""
        self.seq += 1
        self._in_memory.append((self.seq, raw, records))
        self._memory_used += len(raw)
        if self.durability == "disk":
            self.write_ahead()
        dropped = 0
        while self._memory_used > self.memory_bytes and self._in_memory:
            if not self.spill_oldest():
                if self.overflow == "drop_newest":
                    break  # memory is full: packing stops, and the newest rows wait or drop
                dropped += self._drop_oldest()
        return dropped

    def full(self) -> bool:
        """Memory and spool are both full (or the spool cannot be written)."""
        spool_full = (
            self.folder is None
            or time.monotonic() < self._spool_retry_at
            or (self.spool is not None and self.spool.bytes >= self.spool_bytes)
        )
        return self._memory_used >= self.memory_bytes and spool_full

    def spill_oldest(self) -> bool:
        """Move the oldest message in memory to the disk spool; False if it cannot go there
        (no spool, spool full, or a write that failed: then the spool counts as full)."""
        seq, raw, records = self._in_memory[0]
        if seq > self.written_seq and not self._write_to_spool(seq, raw):
            return False
        self._in_memory.popleft()
        self._memory_used -= len(raw)
        self._on_disk.append((seq, records))
        return True

    def write_ahead(self) -> None:
        """durability="disk": write every message not yet on disk to the spool, in order,
        before it is sent. One that cannot be written (spool full or failing) is sent from
        memory all the same, and written when the spool takes writes again."""
        if not self._in_memory or self.written_seq >= self.seq:
            return
        first = self._in_memory[0][0]
        for index in range(max(self.written_seq + 1 - first, 0), len(self._in_memory)):
            seq, raw, _ = self._in_memory[index]
            if not self._write_to_spool(seq, raw):
                return

    @property
    def unsynced(self) -> bool:
        """Spool writes not yet fsync'd."""
        return self.spool is not None and self.spool.unsynced

    def sync(self) -> None:
        """durability="disk": fsync what was written, at most every DISK_SYNC_SECONDS (one
        fsync covers every message written since the last)."""
        now = time.monotonic()
        if now - self._synced_at < DISK_SYNC_SECONDS:
            return
        self._synced_at = now
        if self.spool is None:
            return
        try:
            self.spool.sync()
        except OSError as exc:
            self._spool_failed(exc)

    def _write_to_spool(self, seq: int, raw: bytes) -> bool:
        """Append one message to the spool (messages go there in order, each once)."""
        spool = self._open_spool()
        if spool is None or spool.bytes >= self.spool_bytes:
            return False
        try:
            spool.append(seq, raw)
        except OSError as exc:
            self._spool_failed(exc)
            return False
        self.written_seq = seq
        return True

    def _open_spool(self) -> Spool | None:
        """The spool, made on first use; None while there is none or a failed write's
        pause (SPOOL_RETRY_SECONDS) runs."""
        if self.folder is None or time.monotonic() < self._spool_retry_at:
            return None
        if self.spool is None:
            try:
                self.spool = Spool(Path(self.folder), self.spool_mode)
            except OSError as exc:
                self._spool_failed(exc)
                return None
        if self.spool_token is not None and self.spool.token != self.spool_token[1]:
            try:
                self.spool.set_token(*self.spool_token)
            except OSError as exc:
                self._spool_failed(exc)
                return None
        if self._spool_error is not None:
            log.warning(
                "publisher %d: its spool %s is usable again (it failed: %s)",
                self.publisher_id,
                self.folder,
                self._spool_error,
            )
            self._spool_error = None
        return self.spool

    def _spool_failed(self, exc: OSError) -> None:
        """A spool that cannot be written (disk full, a size limit, an I/O error) counts as
        full: the overflow policy applies, and it is tried again after a pause."""
        self._spool_retry_at = time.monotonic() + SPOOL_RETRY_SECONDS
        if self._spool_error is None:
            log.error(
                "publisher %d: cannot write its spool %s (%s); it counts as full, so the "
                "overflow policy (%s) applies, and it is tried again every %gs",
                self.publisher_id,
                self.folder,
                exc,
                self.overflow,
                SPOOL_RETRY_SECONDS,
            )
        self._spool_error = str(exc)

    def _drop_oldest(self) -> int:
        """Both bounds are full: give up the oldest message in memory; returns its records."""
        seq, raw, records = self._in_memory.popleft()
        self._memory_used -= len(raw)
        self.base = max(self.base, seq)
        return records

    # -- sending and acknowledging ------------------------------------------------------
    def raw_for(self, seq: int) -> bytes | None:
        """The packed message ``seq``: from memory, else from the spool (read in order);
        None once it is acknowledged or given up."""
        if self._in_memory and self._in_memory[0][0] <= seq:
            return self._in_memory[seq - self._in_memory[0][0]][1]
        if not self._on_disk or seq < self._on_disk[0][0] or self.spool is None:
            return None  # acknowledged or given up meanwhile
        for _attempt in range(2):
            if self._replay_iter is None:
                self._replay_iter = iter(self.spool.read_all())
                self._replay_peek = next(self._replay_iter, None)
            replay = self._replay_iter
            while self._replay_peek is not None and self._replay_peek[0] < seq:
                self._replay_peek = next(replay, None)
            if self._replay_peek is not None and self._replay_peek[0] == seq:
                return self._replay_peek[1]
            self._replay_iter = None  # spilled after this reader started: read again
        return None

    def rewind(self) -> None:
        """The next raw_for from the spool reads it from its start (a replay, or the end of
        a pass over it)."""
        self._replay_iter = None

    def release_through(self, committed: int) -> None:
        """Everything up to ``committed`` is in the database: let it go."""
        while self._in_memory and self._in_memory[0][0] <= committed:
            _, raw, _ = self._in_memory.popleft()
            self._memory_used -= len(raw)
        while self._on_disk and self._on_disk[0][0] <= committed:
            self._on_disk.popleft()
        if self.spool is not None:
            self.spool.release_through(committed)
        self.base = max(self.base, committed)

    # -- closing ------------------------------------------------------------------------
    def close(self, keep: bool) -> tuple[int, int]:
        """``keep``: what is unacknowledged goes to the spool for the daemon (one more try,
        whatever failed before); else the spool is removed. Returns the records kept in the
        spool and those still in memory that it could not take."""
        if not keep:
            if self.spool is not None:
                self.spool.close(keep=False)
            return 0, 0
        if self.folder is not None:
            self._spool_retry_at = 0.0
            while self._in_memory:
                if not self.spill_oldest():
                    break
        lost = sum(n for _, _, n in self._in_memory)
        spooled = sum(n for _, n in self._on_disk)
        if self.spool is not None:
            self.spool.close(keep=bool(self._on_disk))
        return spooled, lost
