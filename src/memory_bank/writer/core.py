"""The Writer: batches received messages, commits each batch in one transaction, and
retries while the store cannot write.

Transport-free, so the daemon (ZeroMQ) and the embedded mode (an in-process queue) run the
same code: they feed it messages with ``accept_raw`` and requests with ``handle_request``,
and call ``tick`` when time passes. Around the batch it holds the package's other parts:
the acknowledgement book (``acks``), maintenance runs (``maintenance``) and spool adoption
(``spools``); control requests are dispatched in ``control``.

Delivery rules (committed means kept): a publisher numbers its messages 1, 2, 3...; the
writer applies a publisher's message only if it is the next one (or the publisher said,
through ``base``, that the ones between are given up). A message that skips ahead is
dropped and the publisher told where to resend from; it keeps everything until
acknowledged.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .. import wire
from ..ratelimit import RateLimitedLog
from ..spool_auth import LOCAL, SpoolAuth
from ..store.base import Applied, Applying, Store, StoreGone
from ..wire import Message, Validator, WireError
from . import control
from .acks import AckBook, Reply
from .maintenance import DEFAULT_CHUNK_ROWS, MaintenanceRunner
from .spools import SpoolAdoption

if TYPE_CHECKING:
    from .schedule import MaintenanceSchedule

log = logging.getLogger(__name__)

# A store error that blames the batch (store.batch_errors) makes the writer try the
# messages one by one and refuse only the bad ones. Every other store error (disk full, I/O,
# server down) keeps the batch and retries it, backing off: the records are not at fault.
RETRY_SECONDS = 1.0
RETRY_MAX_SECONDS = 10.0
# Messages arriving out of order (after a restart, every publisher's in-flight messages
# come ahead of its replay): the first of a spell is logged, the rest summed up this often.
OUT_OF_ORDER_SUMMARY_SECONDS = 10.0
# How often an idle writer checks that the database at its path is still the file it
# writes (every commit checks it too, before anything is acknowledged).
CHECK_FILES_SECONDS = 1.0
# Rows held before the writer stops taking more (the daemon then stops reading), in batches.
MAX_PENDING_BATCHES = 10


@dataclass(frozen=True)
class WriterSettings:
    """What a Writer is told at start and on a reload (``Writer.configure``)."""

    batch_rows: int = 2000
    batch_seconds: float = 0.05
    limits: wire.Limits = wire.DEFAULT_LIMITS
    retention_days: dict[str, float | None] | None = None  # per table; None: as it was
    chunk_rows: int = DEFAULT_CHUNK_ROWS  # rows deleted per retention step
    max_db_bytes: int | None = None  # the store refuses to grow past this (then waits)


class WriterHost(Protocol):
    """What the process around a Writer offers it: the only calls the writer makes up.

    ``after_commit(batch, seconds)`` runs after each commit with the batch's messages and
    the commit's duration (the daemon sends their events and anomalies to `view --follow`,
    the duration to Prometheus); ``figures()`` returns the
    process's own figures, added to ``Writer.figures()`` (endpoints, version, next
    maintenance). Both run on the writer's thread, between batches: they must not block.
    """

    def after_commit(self, batch: list[Message], seconds: float) -> None: ...

    def figures(self) -> dict: ...


class NoHost:
    """A host with nothing to add (the embedded mode)."""

    def after_commit(self, batch: list[Message], seconds: float) -> None:
        pass

    def figures(self) -> dict:
        return {}


@dataclass
class Counts:
    """What the writer counted since it started (``figures`` reports them)."""

    received_messages: int = 0
    received_records: int = 0
    committed_records: int = 0
    duplicate_records: int = 0
    rejected_records: int = 0
    rejected_messages: int = 0
    out_of_order_messages: int = 0
    batches: int = 0
    commit_ms_avg: float = 0.0  # moving average over recent batches
    commit_ms_max: float = 0.0
    batch_rows_avg: float = 0.0
    store_errors: int = 0
    last_commit_at: float | None = None


@dataclass
class _Committing:
    """A batch handed to the store (``Writer.commit``) and not yet finished (``settle``):
    what goes back ahead of the pending records if its COMMIT fails."""

    batch: list[Message]
    rejects: list[tuple]
    seq: dict[int, int]  # per publisher, its last message in the batch
    rows: int
    first_pending_at: float | None
    applying: Applying  # the store's handle (or _Failed)


class _Failed(Applied):
    """A batch the store refused before its COMMIT: ``result()`` raises why."""

    def __init__(self, error: BaseException, seconds: float):
        super().__init__(0, seconds)
        self.error = error

    def result(self) -> int:
        raise self.error


class Writer:
    """Collects messages into batches and commits each batch in one transaction.

    A batch is committed when it holds ``batch_rows`` rows, when its oldest message has
    waited ``batch_seconds``, or at once when a publisher waits urgently for it.
    ``spool_key``: where finished publishers' spools are (None: nowhere); ``spool_auth``:
    under CURVE, whose spools may be applied; ``host``: see WriterHost; ``wake``: called
    from the store's thread once a batch's COMMIT returned there (see ``commit``), so the
    loop around the writer wakes and calls ``tick``, which acknowledges it.
    """

    def __init__(
        self,
        store: Store,
        settings: WriterSettings = WriterSettings(),
        *,
        spool_key: Path | None = None,
        spool_auth: SpoolAuth | None = None,
        host: WriterHost | None = None,
        wake: Callable[[], None] | None = None,
    ):
        self.store = store
        self.wake = wake
        self.host: WriterHost = host or NoHost()
        self.watermarks: dict[int, int] = store.load_watermarks()
        self.started_at = time.time()
        self.instance = os.urandom(8).hex()  # publishers replay when this changes
        self.acks = AckBook(self.watermarks, self.instance)
        self.maintenance = MaintenanceRunner(store, before_run=functools.partial(self.tick, True))
        self.spools = SpoolAdoption(spool_key, spool_auth)
        self.counts = Counts()
        self.store_error: str | None = None
        # The batch whose COMMIT may still run (start_apply), until ``settle`` finishes it.
        self._committing: _Committing | None = None
        self.configure(settings)
        self.max_pending_rows = MAX_PENDING_BATCHES * settings.batch_rows
        self._pending: list[Message] = []
        self._pending_rows = 0
        self._pending_seq: dict[int, int] = {}
        self._pending_rejects: list[tuple] = []
        self._first_pending_at: float | None = None
        self._retry_at = 0.0
        self._retry_delay = RETRY_SECONDS
        self._error_logged_at = 0.0
        self._next_file_check = 0.0
        self._refusal_log = RateLimitedLog(log, burst=10, interval=10.0)
        self._out_of_order: Counter = Counter()  # per publisher, since the last line
        self._out_of_order_logged_at: float | None = None  # None: no spell going on
        self._rate_samples: deque = deque(maxlen=11)

    def configure(self, settings: WriterSettings) -> None:
        """Apply settings: at start, and on a reload (what is accepted from now on)."""
        self.settle()  # (the store's connection is used below)
        self.batch_rows = settings.batch_rows
        self.batch_seconds = settings.batch_seconds
        self.validator = Validator(settings.limits, self.watermarks)
        if settings.retention_days is not None:
            self.maintenance.retention_days = dict(settings.retention_days)
        self.maintenance.chunk_rows = settings.chunk_rows
        self.store.set_max_db_bytes(settings.max_db_bytes)

    @property
    def name(self) -> str:
        """The database's password-free name, for logs and answers."""
        return self.store.name

    @property
    def unavailable_errors(self) -> tuple[type[BaseException], ...]:
        """Errors that say the store cannot do it now (see Store.unavailable_errors)."""
        return self.store.unavailable_errors

    def lease_id_block(self) -> int:
        """A new id block for a publisher (ids are block << 32 + n), leased durably."""
        return self.store.lease_id_block()

    # -- input ------------------------------------------------------------------------
    def accept_raw(self, raw: bytes, adopted: bool = False) -> None:
        """Take one message off the wire; an unreadable one is counted and kept, not fatal."""
        try:
            msg = wire.decode(raw, self.validator)
        except WireError as exc:
            self.counts.rejected_messages += 1
            self._reject(None, str(exc), raw[:512].hex())
            return
        self.accept(msg, adopted)

    def accept(self, msg: Message, adopted: bool = False) -> None:
        """Queue a message for the next batch, in publisher order (see the module docstring)."""
        pub = msg.publisher_id
        last = self._pending_seq.get(pub) or self._committing_seq(pub)
        self.counts.received_messages += 1
        if msg.seq <= last:
            # Already committed: a replay skipped. Received again while it waits in the
            # batch: it is applied once, from the batch.
            if msg.seq <= self.watermarks.get(pub, 0):
                self.counts.duplicate_records += msg.row_count
            return
        base = max(msg.base, self.acks.settled.get(pub, 0))
        if msg.seq > last + 1 and base < msg.seq - 1 and not adopted:
            self.counts.out_of_order_messages += 1
            if self._out_of_order_logged_at is None:
                self._out_of_order_logged_at = time.monotonic()
                log.info(
                    "publisher %d: message %d arrived, %d expected; asking for a resend "
                    "(more are summed up every %gs)",
                    pub,
                    msg.seq,
                    last + 1,
                    OUT_OF_ORDER_SUMMARY_SECONDS,
                )
            else:
                self._out_of_order[pub] += 1
            self.acks.ask_resend(pub, last + 1)
            return
        if msg.seq > last + 1:
            log.warning(
                "publisher %d sends messages %d..%d no more (given up, or acknowledged by a "
                "database since replaced); continuing from %d",
                pub,
                last + 1,
                msg.seq - 1,
                msg.seq,
            )
        self.acks.resumed(pub)
        self.counts.received_records += msg.row_count + len(msg.rejected)
        for reason, row in msg.rejected:
            self._reject(pub, reason, wire.sample(row))
        if self._first_pending_at is None:
            self._first_pending_at = time.monotonic()
        self._pending.append(msg)
        self._pending_rows += msg.row_count
        self._pending_seq[pub] = msg.seq

    def _committing_seq(self, pub: int) -> int:
        """The last of ``pub``'s messages in the batch being committed, else committed."""
        committing = self._committing
        if committing is not None and pub in committing.seq:
            return committing.seq[pub]
        return self.watermarks.get(pub, 0)

    def _reject(self, publisher_id: int | None, reason: str, sample: str) -> None:
        if publisher_id is not None:  # a refused row (whole messages are counted apart)
            self.counts.rejected_records += 1
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
        if self._pending_rows >= self.batch_rows or self.acks.urgently_awaited(self._pending_seq):
            return True
        assert self._first_pending_at is not None
        return time.monotonic() - self._first_pending_at >= self.batch_seconds

    def may_grow(self) -> bool:
        """Whether a due batch may take records that are already waiting (see
        Store.batch_growth); never when a publisher waits for it."""
        growth = self.store.batch_growth
        return (
            growth > 1  # 1: a batch due for its age or a waiter is committed as it is
            and self._pending_rows < self.batch_rows * growth
            and self.store_error is None
            and not self.acks.urgently_awaited(self._pending_seq)
        )

    def seconds_to_next_tick(self, idle: float = 1.0) -> float:
        """How long the loop may sleep before ``tick`` has work to do."""
        now = time.monotonic()
        waits = [idle]
        maintenance = self.maintenance.seconds_to_next_step(now)
        if maintenance is not None and self.store_error is None:
            # A run in progress takes its next step at once, or soon when it waits.
            waits.append(maintenance)
        if self.store_error is not None:
            waits.append(self._retry_at - now)
        elif self._first_pending_at is not None and (self._pending or self._pending_rejects):
            waits.append(self._first_pending_at + self.batch_seconds - now)
        deadline = self.acks.next_deadline()
        if deadline is not None:
            waits.append(deadline - now)
        return max(0.0, min(waits))

    def tick(self, force: bool = False) -> None:
        """Commit if a batch is due (or ``force``: and wait for its COMMIT), finish a batch
        whose COMMIT returned, then answer and expire waiters."""
        if force or self.commit_returned():
            self.settle()
        if (self._pending or self._pending_rejects) and (
            self.due() or (force and self.store_error is None)
        ):
            self.commit()
            if force:
                self.settle()
        if self.acks.waiters:
            self.acks.answer()
        now = time.monotonic()
        if (
            self._out_of_order_logged_at is not None
            and now - self._out_of_order_logged_at >= OUT_OF_ORDER_SUMMARY_SECONDS
        ):
            self._summarize_out_of_order(now)

        if now >= self._next_file_check and self.store_error is None and not self._committing:
            self._next_file_check = now + CHECK_FILES_SECONDS
            try:
                self.store.check_files()
            except StoreGone as exc:
                self._keep_for_retry(exc)
        if not self._rate_samples or now - self._rate_samples[-1][0] >= 1.0:
            self._rate_samples.append(
                (now, self.counts.received_records, self.counts.committed_records)
            )

    def _summarize_out_of_order(self, now: float) -> None:
        """One line for the messages out of order since the last; a quiet interval ends
        the spell (the next one is logged at once)."""
        if not self._out_of_order:
            self._out_of_order_logged_at = None
            return
        log.info(
            "%d more message(s) from %d publisher(s) arrived out of order in the last %.0fs; "
            "each publisher was asked to resend",
            sum(self._out_of_order.values()),
            len(self._out_of_order),
            now - (self._out_of_order_logged_at or now),
        )
        self._out_of_order.clear()
        self._out_of_order_logged_at = now

    def rates(self) -> tuple[float, float]:
        """Records received and committed per second over the last ten seconds."""
        if len(self._rate_samples) < 2:
            return 0.0, 0.0
        (t0, r0, c0), (t1, r1, c1) = self._rate_samples[0], self._rate_samples[-1]
        span = max(t1 - t0, 1e-9)
        return (r1 - r0) / span, (c1 - c0) / span

    def commit(self) -> None:
        """Start committing the pending batch once the one before is finished: its
        statements now, its COMMIT on the store's thread (SQLite's) while the loop takes
        in the next batch; ``settle`` finishes it. Nothing is acknowledged before its
        COMMIT returned: the watermarks the acknowledgements read advance in ``settle``."""
        if not self.settle():
            return  # the batch before failed: both wait for the retry
        batch, rejects = self._pending, self._pending_rejects
        began = time.perf_counter()
        try:
            applying = self.store.start_apply(batch, self.watermarks, rejects, self.wake)
        except (*self.store.batch_errors, *self.store.unavailable_errors) as exc:
            applying = _Failed(exc, time.perf_counter() - began)
        self._committing = _Committing(
            batch, rejects, self._pending_seq, self._pending_rows, self._first_pending_at, applying
        )
        self._pending, self._pending_rejects = [], []
        self._pending_rows = 0
        self._pending_seq = {}
        self._first_pending_at = None
        if applying.done():
            self.settle()

    def commit_running(self) -> bool:
        """A batch's COMMIT runs on the committer thread (``settle`` would wait for it)."""
        return self._committing is not None and not self._committing.applying.done()

    def commit_returned(self) -> bool:
        """A batch's COMMIT has returned and waits for ``settle``."""
        return self._committing is not None and self._committing.applying.done()

    def settle(self) -> bool:
        """Finish the batch being committed, waiting for its COMMIT if it still runs: its
        publishers' watermarks advance and their waiters are answered; if it failed, it
        goes back ahead of the pending records and is retried (see _keep_for_retry).
        False when it failed."""
        committing = self._committing
        if committing is None:
            return True
        self._committing = None
        batch, rejects = committing.batch, committing.rejects
        refused = 0
        try:
            try:
                stored = committing.applying.result()
            except self.store.batch_errors as exc:
                stored, refused = self._apply_one_by_one(batch, rejects, exc)
        except self.store.unavailable_errors as exc:
            self._pending = batch + self._pending
            self._pending_rejects = rejects + self._pending_rejects
            self._pending_rows += committing.rows
            self._pending_seq = {**committing.seq, **self._pending_seq}
            if committing.first_pending_at is not None:
                self._first_pending_at = committing.first_pending_at
            self._keep_for_retry(exc)
            return False
        if self.store_error is not None:
            log.warning("%s accepts writes again; resuming", self.store.name)
            self.store_error = None
            self._retry_delay = RETRY_SECONDS
        records = committing.rows
        took_ms = committing.applying.seconds * 1000
        self.counts.commit_ms_avg += (took_ms - self.counts.commit_ms_avg) * 0.05
        self.counts.commit_ms_max = max(self.counts.commit_ms_max, took_ms)
        self.counts.batch_rows_avg += (records - self.counts.batch_rows_avg) * 0.05
        if batch:
            self.host.after_commit(batch, took_ms / 1000)
        self.counts.committed_records += stored
        # Rows a store refused inside the batch (an id another row already has: SQLite
        # keeps them in mb_rejected with the reason).
        self.counts.rejected_records += records - stored - refused
        self.counts.batches += 1
        self.counts.last_commit_at = time.time()
        if self.acks.waiters:
            self.acks.answer()
        return True

    def _keep_for_retry(self, exc: BaseException) -> None:
        """The store cannot write now (disk full, I/O, server down): keep the batch, stop
        reading, retry after 1 s, doubling up to 10 s."""
        self.counts.store_errors += 1
        first = self.store_error is None
        self.store_error = str(exc).strip() or type(exc).__name__
        now = time.monotonic()
        doubled = min(self._retry_delay * 2, RETRY_MAX_SECONDS)
        self._retry_delay = RETRY_SECONDS if first else doubled
        self._retry_at = now + self._retry_delay
        if isinstance(exc, StoreGone):  # no retry helps: say what to do, now and then
            if first or now - self._error_logged_at >= 300.0:
                self._error_logged_at = now
                log.critical("%s (%d record(s) held)", self.store_error, self._pending_rows)
            return
        if first or now - self._error_logged_at >= 30.0:
            self._error_logged_at = now
            log.error(
                "cannot commit to %s: %s; keeping %d record(s), retrying in %gs "
                "(publishers buffer meanwhile)",
                self.store.name,
                self.store_error,
                self._pending_rows,
                self._retry_delay,
            )

    def _apply_one_by_one(
        self, batch: list[Message], rejects: list, exc: BaseException
    ) -> tuple[int, int]:
        """A batch the store refused: apply each message alone, refuse only the bad ones.
        Returns rows stored and rows refused."""
        log.error("a batch failed (%s); applying its messages one by one", exc)
        stored = refused_rows = 0
        refused: list[tuple] = list(rejects)
        for msg in batch:
            try:
                stored += self.store.apply([msg], self.watermarks, [])
            except self.store.batch_errors as one_exc:
                self.counts.rejected_messages += 1
                self.counts.rejected_records += msg.row_count
                refused_rows += msg.row_count
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
        return stored, refused_rows

    # -- control requests -------------------------------------------------------------
    def handle_request(self, request: dict, reply: Reply, peer: str = LOCAL) -> None:
        """Answer one control request (now, or once what it waits for is committed).

        ``peer``: who sent it, as its channel authenticated it (a CURVE public key, or
        spool_auth.LOCAL); a publisher's spool token is made for it (lease, and a sync
        request that asks with ``token``)."""
        control.dispatch(self, request, reply, peer)

    # -- spools of publishers that are gone ---------------------------------------------
    def adopt_spools(self, force: bool = False) -> None:
        """Apply what exited or crashed publishers left in their spools (every few
        seconds, or now with ``force``), while the store can write."""
        if self.spools.due(force) and self.store_error is None:
            self.spools.adopt(functools.partial(self.accept_raw, adopted=True), self._commit_now)

    def _commit_now(self) -> bool:
        """Commit what was received; False when the store cannot write now."""
        self.tick(force=True)
        return self.store_error is None

    # -- maintenance: run in steps between batches, so ingest keeps flowing ----------------
    def catch_up_maintenance(self, schedule: MaintenanceSchedule) -> None:
        """Queue the scheduled runs missed while no writer ran."""
        self.maintenance.start_missed(schedule)

    @property
    def maintenance_running(self) -> str | None:
        return self.maintenance.running

    def maintenance_step(self) -> None:
        """One bounded step of the current maintenance run, if any."""
        if self.maintenance.running is not None:
            self.settle()  # its steps use the store's connection
        self.maintenance.step()

    def run_maintenance(self, job: str, trigger: str = "request", days: float | None = None):
        """Run a maintenance job to the end now (embedded mode); returns the run."""
        return self.maintenance.run(job, trigger, days)

    # -- figures ----------------------------------------------------------------------
    def figures(self) -> dict:
        """The live figures `memorybank status` shows (the host's own included)."""
        self.settle()  # (they read the store)
        c = self.counts
        store_ok = self.store_error is None
        received_per_second, committed_per_second = self.rates()
        return {
            "pid": os.getpid(),
            "db": self.name,
            "instance": self.instance,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "received_records": c.received_records,
            "committed_records": c.committed_records,
            "duplicate_records": c.duplicate_records,
            "rejected_records": c.rejected_records,
            "rejected_messages": c.rejected_messages,
            "received_messages": c.received_messages,
            "out_of_order_messages": c.out_of_order_messages,
            "dropped_by_publishers": sum(self.acks.dropped.values()),
            "adopted_spools": self.spools.adopted,
            "spool_corrupt_bytes": self.spools.corrupt_bytes,
            "refused_spools": len(self.spools.refused),
            "spool_forged_frames": self.spools.forged_frames,
            "received_per_second": round(received_per_second, 1),
            "committed_per_second": round(committed_per_second, 1),
            "batches": c.batches,
            "batch_rows_avg": round(c.batch_rows_avg, 1),
            "commit_ms_avg": round(c.commit_ms_avg, 2),
            "commit_ms_max": round(c.commit_ms_max, 2),
            "queue_depth": self._pending_rows,
            "maintenance_running": self.maintenance.running,
            "maintenance_waiting": self.maintenance.waiting() if store_ok else None,
            "last_maintenance": self.maintenance.recent_runs(read_store=store_ok),
            "store_error": self.store_error,
            "store_errors": c.store_errors,
            "publishers": len(self.watermarks),
            "last_commit_at": c.last_commit_at,
            **self._size_figures(),
            **self.host.figures(),
        }

    def _size_figures(self) -> dict:
        """The store's sizes; none while it cannot be reached (status still answers)."""
        if self.store_error is not None:
            return {}
        try:
            return self.store.size_figures()
        except self.store.unavailable_errors:
            return {}

    def close(self) -> None:
        """Commit what was received (if the store lets us), release everyone waiting."""
        self.tick(force=True)
        self.acks.release_all()
        if self.store_error is not None:
            log.error(
                "stopping with %d record(s) not committed (%s); their publishers keep "
                "them until acknowledged",
                self._pending_rows,
                self.store_error,
            )
        self.store.close()
