"""The single writer's core: batching, commit, acknowledgements, refusals, control requests.

Transport-free, so the daemon (ZeroMQ) and the embedded mode (an in-process queue) run the
same code: they feed it messages with ``accept_raw`` and requests with ``handle_request``,
and call ``tick`` when time passes.

Delivery rules (contract 7): a publisher numbers its messages 1, 2, 3...; the writer
applies a publisher's message only if it is the next one (or the publisher said, through
``base``, that the ones between are given up). A message that skips ahead is dropped and
the publisher told where to resend from; it keeps everything until acknowledged.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import discovery, spool, wire
from .store.sqlite import SqliteStore
from .wire import Message, Validator, WireError

log = logging.getLogger(__name__)

Reply = Callable[[dict], None]

# Errors that say something in the batch itself is wrong: only then are the messages tried
# one by one and the bad ones refused. Every other error (disk full, I/O, locked, read-only)
# keeps the batch and retries it: the records are not at fault.
_BATCH_AT_FAULT = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
)
RETRY_SECONDS = 1.0
ADOPT_EVERY_SECONDS = 10.0


class RateLimitedLog:
    """At most ``burst`` lines per ``interval``; then one line saying how many were
    suppressed (journald's rate limiting)."""

    def __init__(self, logger: logging.Logger, burst: int, interval: float):
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._window_start = 0.0
        self._count = 0
        self._suppressed = 0

    def warning(self, fmt: str, *args) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            if self._suppressed:
                self.logger.warning(
                    "suppressed %d similar message(s) in the last %gs",
                    self._suppressed,
                    self.interval,
                )
            self._window_start, self._count, self._suppressed = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            self.logger.warning(fmt, *args)
        else:
            self._suppressed += 1


@dataclass
class Waiter:
    """A publisher waiting until its messages up to ``seq`` are committed."""

    publisher_id: int
    seq: int
    deadline: float
    urgent: bool  # commit now rather than at the end of the batch window
    rid: object
    reply: Reply


@dataclass
class WriterStats:
    received_messages: int = 0
    received_records: int = 0
    committed_records: int = 0
    duplicate_records: int = 0
    rejected_records: int = 0
    rejected_messages: int = 0
    out_of_order_messages: int = 0
    skipped_records: int = 0
    adopted_spools: int = 0
    spool_corrupt_bytes: int = 0
    batches: int = 0
    store_errors: int = 0
    last_commit_at: float | None = None


class Writer:
    """Collects messages into batches and commits each batch in one transaction.

    A batch is committed when it holds ``batch_rows`` rows, when its oldest message has
    waited ``batch_seconds``, or at once when a publisher waits urgently for it.
    """

    def __init__(
        self,
        store: SqliteStore,
        batch_rows: int = 4000,
        batch_seconds: float = 0.05,
        limits: wire.Limits = wire.DEFAULT_LIMITS,
        max_pending_rows: int | None = None,
    ):
        self.store = store
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.max_pending_rows = max_pending_rows or 10 * batch_rows
        self.validator = Validator(limits)
        self.watermarks: dict[int, int] = store.load_watermarks()
        self.stats = WriterStats()
        self.started_at = time.time()
        self.instance = os.urandom(8).hex()  # publishers replay when this changes
        self.store_error: str | None = None
        self.publisher_dropped: dict[int, int] = {}
        self.extra_figures: Callable[[], dict] = dict
        self._pending: list[Message] = []
        self._pending_rows = 0
        self._pending_seq: dict[int, int] = {}
        self._pending_rejects: list[tuple] = []
        self._first_pending_at: float | None = None
        self._waiters: list[Waiter] = []
        self._resend_from: dict[int, int] = {}
        self._retry_at = 0.0
        self._error_logged_at = 0.0
        self._next_adopt = 0.0
        self._refusal_log = RateLimitedLog(log, burst=10, interval=10.0)

    # -- input ------------------------------------------------------------------------
    def accept_raw(self, raw: bytes, adopted: bool = False) -> None:
        """Take one message off the wire; an unreadable one is counted and kept, not fatal."""
        try:
            msg = wire.decode(raw, self.validator)
        except WireError as exc:
            self.stats.rejected_messages += 1
            self._reject(None, str(exc), raw[:512].hex())
            return
        self.accept(msg, adopted)

    def accept(self, msg: Message, adopted: bool = False) -> None:
        """Queue a message for the next batch, in publisher order (see the module docstring)."""
        pub = msg.publisher_id
        last = self._pending_seq.get(pub, self.watermarks.get(pub, 0))
        self.stats.received_messages += 1
        if msg.seq <= last:
            self.stats.duplicate_records += msg.row_count
            return
        if msg.seq > last + 1 and msg.base < msg.seq - 1 and not adopted:
            self.stats.out_of_order_messages += 1
            if pub not in self._resend_from:
                log.info(
                    "publisher %d: message %d arrived, %d expected; asking for a resend",
                    pub,
                    msg.seq,
                    last + 1,
                )
            self._resend_from[pub] = last + 1
            self._answer_waiters(pub)
            return
        if msg.seq > last + 1:
            log.warning(
                "publisher %d gave up messages %d..%d; continuing from %d",
                pub,
                last + 1,
                msg.seq - 1,
                msg.seq,
            )
        self._resend_from.pop(pub, None)
        self.stats.received_records += msg.row_count + len(msg.rejected)
        for reason, row in msg.rejected:
            self._reject(pub, reason, repr(row)[:1000])
        if self._first_pending_at is None:
            self._first_pending_at = time.monotonic()
        self._pending.append(msg)
        self._pending_rows += msg.row_count
        self._pending_seq[pub] = msg.seq

    def _reject(self, publisher_id: int | None, reason: str, sample: str) -> None:
        if publisher_id is not None:  # a refused row (whole messages are counted apart)
            self.stats.rejected_records += 1
        self._pending_rejects.append((time.time(), publisher_id, reason, sample))
        self._refusal_log.warning("refused input from publisher %s: %s", publisher_id, reason)
        if self._first_pending_at is None:
            self._first_pending_at = time.monotonic()

    @property
    def accepting(self) -> bool:
        """False while the store cannot take more (the daemon then stops reading)."""
        return self.store_error is None and self._pending_rows < self.max_pending_rows

    # -- time -------------------------------------------------------------------------
    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def due(self) -> bool:
        if not (self._pending or self._pending_rejects):
            return False
        if self.store_error is not None:
            return time.monotonic() >= self._retry_at
        if self._pending_rows >= self.batch_rows or self._urgently_awaited():
            return True
        return time.monotonic() - self._first_pending_at >= self.batch_seconds

    def _urgently_awaited(self) -> bool:
        return any(
            w.urgent and self._pending_seq.get(w.publisher_id, 0) >= w.seq for w in self._waiters
        )

    def seconds_to_next_tick(self, idle: float = 1.0) -> float:
        """How long the loop may sleep before ``tick`` has work to do."""
        now = time.monotonic()
        waits = [idle]
        if self.store_error is not None:
            waits.append(self._retry_at - now)
        elif self._pending or self._pending_rejects:
            waits.append(self._first_pending_at + self.batch_seconds - now)
        if self._waiters:
            waits.append(min(w.deadline for w in self._waiters) - now)
        return max(0.0, min(waits))

    def tick(self, force: bool = False) -> None:
        """Commit if a batch is due (or ``force``), then answer and expire waiters."""
        if (self._pending or self._pending_rejects) and (
            self.due() or (force and self.store_error is None)
        ):
            self.commit()
        if self._waiters:
            self._answer_waiters()

    def commit(self) -> None:
        batch, rejects = self._pending, self._pending_rejects
        try:
            stored = self.store.apply(batch, self.watermarks, rejects)
        except _BATCH_AT_FAULT as exc:
            stored = self._apply_one_by_one(batch, rejects, exc)
        except sqlite3.Error as exc:
            self._keep_for_retry(exc)
            return
        self._pending, self._pending_rejects = [], []
        self._pending_rows = 0
        self._pending_seq = {}
        self._first_pending_at = None
        if self.store_error is not None:
            log.warning("the store accepts writes again; resuming")
            self.store_error = None
        records = sum(m.row_count for m in batch)
        self.stats.committed_records += stored
        self.stats.duplicate_records += records - stored
        self.stats.batches += 1
        self.stats.last_commit_at = time.time()

    def _keep_for_retry(self, exc: sqlite3.Error) -> None:
        """The store cannot write now (disk full, I/O): keep the batch, stop reading, retry."""
        self.stats.store_errors += 1
        self.store_error = str(exc)
        self._retry_at = time.monotonic() + RETRY_SECONDS
        now = time.monotonic()
        if now - self._error_logged_at >= 30.0:
            self._error_logged_at = now
            log.error(
                "cannot commit to %s: %s; keeping %d record(s) and retrying every %gs "
                "(publishers buffer meanwhile)",
                self.store.path,
                exc,
                self._pending_rows,
                RETRY_SECONDS,
            )

    def _apply_one_by_one(self, batch: list[Message], rejects: list, exc: Exception) -> int:
        """A batch the store refused: apply each message alone, refuse only the bad ones."""
        log.error("a batch failed (%s); applying its messages one by one", exc)
        stored = 0
        refused: list[tuple] = list(rejects)
        for msg in batch:
            try:
                stored += self.store.apply([msg], self.watermarks, [])
            except _BATCH_AT_FAULT as one_exc:
                self.stats.rejected_messages += 1
                self.stats.rejected_records += msg.row_count
                refused.append(
                    (
                        time.time(),
                        msg.publisher_id,
                        f"store refused: {one_exc}",
                        f"message {msg.seq}",
                    )
                )
                # Count it as handled so the publisher does not resend it forever.
                self.store.apply(
                    [Message(msg.publisher_id, msg.seq, msg.base)], self.watermarks, []
                )
        if refused:
            self.store.apply([], self.watermarks, refused)
        return stored

    # -- acknowledgements -------------------------------------------------------------
    def committed_seq(self, publisher_id: int) -> int:
        return self.watermarks.get(publisher_id, 0)

    def _ack_body(self, rid, pub: int, seq: int) -> dict:
        committed = self.committed_seq(pub)
        body = {
            "rid": rid,
            "ok": committed >= seq,
            "committed": committed,
            "instance": self.instance,
        }
        if pub in self._resend_from:
            body["resend_from"] = self._resend_from[pub]
        return body

    def _answer_waiters(self, only_publisher: int | None = None) -> None:
        now = time.monotonic()
        still = []
        for w in self._waiters:
            if only_publisher is not None and w.publisher_id != only_publisher:
                still.append(w)
                continue
            if (
                self.committed_seq(w.publisher_id) >= w.seq
                or now >= w.deadline
                or w.publisher_id in self._resend_from
            ):
                w.reply(self._ack_body(w.rid, w.publisher_id, w.seq))
            else:
                still.append(w)
        self._waiters = still

    # -- control requests -------------------------------------------------------------
    def handle_request(self, request: dict, reply: Reply) -> None:
        """Answer one control request (now, or once what it waits for is committed)."""
        op = request.get("op")
        rid = request.get("rid")
        if op == "sync":
            pub, seq = int(request["pub"]), int(request["seq"])
            if "dropped" in request:
                self.publisher_dropped[pub] = int(request["dropped"])
            wait = min(float(request.get("wait", 10.0)), 600.0)
            if self.committed_seq(pub) >= seq or pub in self._resend_from or wait <= 0:
                reply(self._ack_body(rid, pub, seq))
            else:
                self._waiters.append(
                    Waiter(
                        pub,
                        seq,
                        time.monotonic() + wait,
                        bool(request.get("urgent", True)),
                        rid,
                        reply,
                    )
                )
        elif op == "ping":
            reply(
                {
                    "rid": rid,
                    "ok": True,
                    "pid": os.getpid(),
                    "db": str(self.store.path),
                    "instance": self.instance,
                }
            )
        elif op == "stats":
            reply({"rid": rid, "ok": True, "stats": self.figures()})
        elif op == "lease":
            reply({"rid": rid, "ok": True, "block": discovery.lease_id_block(self.store.path)})
        elif op == "retention":
            days = float(request.get("days", 7))
            if days < 0:
                raise ValueError("days must not be negative")
            reply({"rid": rid, "ok": True, "deleted": self.retention(days)})
        elif op == "vacuum":
            reply({"rid": rid, "ok": True, "reclaimed_bytes": self.vacuum()})
        else:
            reply({"rid": rid, "ok": False, "error": f"unknown op {op!r}"})

    # -- spools of publishers that are gone ---------------------------------------------
    def adopt_spools(self, force: bool = False) -> None:
        """Apply what exited or crashed publishers left in their spools, then remove them."""
        now = time.monotonic()
        if not force and now < self._next_adopt:
            return
        self._next_adopt = now + ADOPT_EVERY_SECONDS
        for folder, _publisher_id in spool.orphaned_spools(self.store.path):
            frames = 0
            for segment in spool.segment_paths(folder):
                result = spool.read_segment(segment)
                if result.corrupt_bytes:
                    self.stats.spool_corrupt_bytes += result.corrupt_bytes
                    log.error(
                        "spool %s: %d byte(s) after the last intact message were torn "
                        "or corrupt and are skipped",
                        segment,
                        result.corrupt_bytes,
                    )
                for _seq, raw in result.frames:
                    self.accept_raw(raw, adopted=True)
                    frames += 1
            self.tick(force=True)
            if self.store_error is not None:
                return  # keep the spool; try again later
            log.info(
                "adopted %d message(s) from the spool of a finished publisher: %s", frames, folder
            )
            self.stats.adopted_spools += 1
            shutil.rmtree(folder, ignore_errors=True)

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
            "instance": self.instance,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "received_records": s.received_records,
            "committed_records": s.committed_records,
            "duplicate_records": s.duplicate_records,
            "rejected_records": s.rejected_records,
            "rejected_messages": s.rejected_messages,
            "received_messages": s.received_messages,
            "out_of_order_messages": s.out_of_order_messages,
            "dropped_by_publishers": sum(self.publisher_dropped.values()),
            "adopted_spools": s.adopted_spools,
            "spool_corrupt_bytes": s.spool_corrupt_bytes,
            "batches": s.batches,
            "queue_depth": self._pending_rows,
            "store_error": self.store_error,
            "store_errors": s.store_errors,
            "publishers": len(self.watermarks),
            "last_commit_at": s.last_commit_at,
            **self.store.file_sizes(),
            **self.extra_figures(),
        }

    def close(self) -> None:
        """Commit what was received (if the store lets us), release everyone waiting."""
        self.tick(force=True)
        for w in self._waiters:
            w.reply(self._ack_body(w.rid, w.publisher_id, w.seq))
        self._waiters = []
        if self.store_error is not None:
            log.error(
                "stopping with %d record(s) not committed (%s); their publishers keep "
                "them until acknowledged",
                self._pending_rows,
                self.store_error,
            )
        self.store.close()
