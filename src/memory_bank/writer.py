"""The single writer's core: batching, commit, watermarks, and waiting for commits.

Transport-free, so the daemon (ZeroMQ) and the embedded mode (an in-process queue) run the
same code: they feed it messages with ``accept`` and call ``tick`` when time passes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import wire
from .store.sqlite import SqliteStore
from .wire import Message, WireError

log = logging.getLogger(__name__)

DoneCallback = Callable[[bool, int], None]


@dataclass
class Waiter:
    """Someone waiting until a publisher's messages up to ``seq`` are committed."""

    publisher_id: int
    seq: int
    deadline: float
    done: DoneCallback


@dataclass
class WriterStats:
    received_messages: int = 0
    received_records: int = 0
    committed_records: int = 0
    duplicate_records: int = 0
    rejected_records: int = 0
    rejected_messages: int = 0
    batches: int = 0
    last_commit_at: float | None = None


class Writer:
    """Collects messages into batches and commits each batch in one transaction.

    A batch is committed when it holds ``batch_rows`` rows, when its oldest message has
    waited ``batch_seconds``, or at once when someone waits for a message it holds.
    """

    def __init__(self, store: SqliteStore, batch_rows: int = 4000, batch_seconds: float = 0.05):
        self.store = store
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.watermarks: dict[int, int] = store.load_watermarks()
        self.stats = WriterStats()
        self.started_at = time.time()
        self.recent_rejects: deque[tuple[float, str]] = deque(maxlen=100)
        self._pending: list[Message] = []
        self._pending_rows = 0
        self._pending_seq: dict[int, int] = {}
        self._first_pending_at: float | None = None
        self._waiters: list[Waiter] = []

    # -- input ------------------------------------------------------------------------
    def accept_raw(self, raw: bytes) -> None:
        """Take one message off the wire; an unreadable one is counted and logged, not fatal."""
        try:
            msg = wire.decode(raw)
        except WireError as exc:
            self._reject_message(str(exc))
            return
        self.accept(msg)

    def accept_body(self, body) -> None:
        """Take one message already in its list form (embedded mode: no msgpack)."""
        try:
            msg = wire.validate(body)
        except WireError as exc:
            self._reject_message(str(exc))
            return
        self.accept(msg)

    def accept(self, msg: Message) -> None:
        self.stats.received_messages += 1
        self.stats.received_records += msg.row_count + len(msg.rejected)
        if msg.rejected:
            self.stats.rejected_records += len(msg.rejected)
            reason = msg.rejected[0][0]
            self.recent_rejects.append((time.time(), reason))
            log.warning(
                "rejected %d record(s) from publisher %d (first: %s); the rest of the message "
                "is kept",
                len(msg.rejected),
                msg.publisher_id,
                reason,
            )
        if self._first_pending_at is None:
            self._first_pending_at = time.monotonic()
        self._pending.append(msg)
        self._pending_rows += msg.row_count
        if msg.seq > self._pending_seq.get(msg.publisher_id, 0):
            self._pending_seq[msg.publisher_id] = msg.seq

    def _reject_message(self, reason: str) -> None:
        self.stats.rejected_messages += 1
        self.recent_rejects.append((time.time(), reason))
        log.warning("rejected a message: %s", reason)

    # -- waiting for commits ----------------------------------------------------------
    def committed_seq(self, publisher_id: int) -> int:
        return self.watermarks.get(publisher_id, 0)

    def wait_for(self, publisher_id: int, seq: int, timeout: float, done: DoneCallback) -> None:
        """Call ``done(ok, committed_seq)`` once ``seq`` is committed or ``timeout`` passes."""
        if self.committed_seq(publisher_id) >= seq:
            done(True, self.committed_seq(publisher_id))
            return
        self._waiters.append(Waiter(publisher_id, seq, time.monotonic() + timeout, done))

    def _waited_on(self) -> bool:
        return any(self._pending_seq.get(w.publisher_id, 0) >= w.seq for w in self._waiters)

    # -- time -------------------------------------------------------------------------
    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def due(self) -> bool:
        if not self._pending:
            return False
        if self._pending_rows >= self.batch_rows or self._waited_on():
            return True
        return time.monotonic() - self._first_pending_at >= self.batch_seconds

    def seconds_to_next_tick(self, idle: float = 1.0) -> float:
        """How long the loop may sleep before ``tick`` has work to do."""
        now = time.monotonic()
        waits = [idle]
        if self._pending:
            waits.append(self._first_pending_at + self.batch_seconds - now)
        if self._waiters:
            waits.append(min(w.deadline for w in self._waiters) - now)
        return max(0.0, min(waits))

    def tick(self, force: bool = False) -> None:
        """Commit if a batch is due (or ``force``), then answer and expire waiters."""
        if self._pending and (force or self.due()):
            self.commit()
        if self._waiters:
            self._answer_waiters()

    def commit(self) -> None:
        batch, self._pending = self._pending, []
        self._pending_rows = 0
        self._pending_seq = {}
        self._first_pending_at = None
        records = sum(m.row_count for m in batch)
        stored = self.store.apply(batch, self.watermarks)
        self.stats.committed_records += stored
        self.stats.duplicate_records += records - stored
        self.stats.batches += 1
        self.stats.last_commit_at = time.time()

    def _answer_waiters(self) -> None:
        now = time.monotonic()
        still = []
        for w in self._waiters:
            committed = self.committed_seq(w.publisher_id)
            if committed >= w.seq:
                w.done(True, committed)
            elif now >= w.deadline:
                w.done(False, committed)
            else:
                still.append(w)
        self._waiters = still

    # -- maintenance ------------------------------------------------------------------
    def retention(self, days: float) -> dict[str, int]:
        """Delete events, anomalies and metrics older than ``days``; commit pending rows first."""
        self.tick(force=True)
        cutoff = time.time() - days * 86400
        deleted: dict[str, int] = {}
        for table, rows in self.store.retention_steps(cutoff):
            deleted[table] = deleted.get(table, 0) + rows
        log.info("retention (%g days): deleted %s", days, deleted)
        return deleted

    def vacuum(self) -> int:
        self.tick(force=True)
        reclaimed = self.store.vacuum()
        log.info("vacuum reclaimed %d bytes", reclaimed)
        return reclaimed

    def figures(self) -> dict:
        """The live figures `memorybank status` shows."""
        s = self.stats
        return {
            "pid": os.getpid(),
            "db": str(self.store.path),
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "received_records": s.received_records,
            "committed_records": s.committed_records,
            "duplicate_records": s.duplicate_records,
            "rejected_records": s.rejected_records,
            "rejected_messages": s.rejected_messages,
            "received_messages": s.received_messages,
            "batches": s.batches,
            "queue_depth": self._pending_rows,
            "publishers": len(self.watermarks),
            "last_commit_at": s.last_commit_at,
            **self.store.file_sizes(),
        }

    def close(self) -> None:
        """Commit what was received, release everyone still waiting."""
        self.tick(force=True)
        for w in self._waiters:
            w.done(self.committed_seq(w.publisher_id) >= w.seq, self.committed_seq(w.publisher_id))
        self._waiters = []
        self.store.close()
