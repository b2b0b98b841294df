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

import functools
import logging
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import spool, wire
from .spool_auth import LOCAL, SpoolAuth, SpoolRefused
from .store.base import Store, StoreGone
from .wire import Message, Validator, WireError

log = logging.getLogger(__name__)

Reply = Callable[[dict], None]

# A store error that blames the batch (store.batch_errors) makes the writer try the
# messages one by one and refuse only the bad ones. Every other store error (disk full, I/O,
# server down) keeps the batch and retries it, backing off: the records are not at fault.
RETRY_SECONDS = 1.0
RETRY_MAX_SECONDS = 10.0
ADOPT_EVERY_SECONDS = 10.0
# Messages arriving out of order (after a restart, every publisher's in-flight messages
# come ahead of its replay): the first of a spell is logged, the rest summed up this often.
OUT_OF_ORDER_SUMMARY_SECONDS = 10.0
# How often a maintenance step whose work runs elsewhere (a PostgreSQL detach on its own
# connection) is asked whether it is done.
MAINTENANCE_POLL_SECONDS = 0.05


# How often an idle writer checks that the database at its path is still the file it
# writes (every commit checks it too, before anything is acknowledged).
CHECK_FILES_SECONDS = 1.0


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
class MaintenanceTask:
    """A retention or vacuum run in progress, advanced one bounded step at a time."""

    job: str
    trigger: str  # "schedule", "catch-up" (missed while down) or "request"
    reply: Reply | None
    rid: object
    days: float | None
    then: tuple[str, ...] = ()
    steps: Iterator | None = None
    started: float = 0.0
    deleted: dict = field(default_factory=dict)
    reclaimed: int = 0
    longest_step: float = 0.0


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
    spool_forged_frames: int = 0
    batches: int = 0
    commit_ms_avg: float = 0.0  # moving average over recent batches
    commit_ms_max: float = 0.0
    batch_rows_avg: float = 0.0
    store_errors: int = 0
    last_commit_at: float | None = None


class Writer:
    """Collects messages into batches and commits each batch in one transaction.

    A batch is committed when it holds ``batch_rows`` rows, when its oldest message has
    waited ``batch_seconds``, or at once when a publisher waits urgently for it.
    """

    def __init__(
        self,
        store: Store,
        batch_rows: int = 2000,
        batch_seconds: float = 0.05,
        limits: wire.Limits = wire.DEFAULT_LIMITS,
        max_pending_rows: int | None = None,
        spool_key: Path | None = None,
    ):
        self.store = store
        self.spool_key = spool_key  # where finished publishers' spools are (None: nowhere)
        self.spool_auth: SpoolAuth | None = None  # under CURVE: whose spools may be applied
        self.refused_spools: dict[Path, str] = {}  # folder -> why it is not applied
        # Folders refused for their MACs -> what they held then: not read again until it changes.
        self._refused_contents: dict[Path, tuple] = {}
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.max_pending_rows = max_pending_rows or 10 * batch_rows
        self.watermarks: dict[int, int] = store.load_watermarks()
        self.validator = Validator(limits, self.watermarks)
        self.stats = WriterStats()
        self.started_at = time.time()
        self.instance = os.urandom(8).hex()  # publishers replay when this changes
        self.store_error: str | None = None
        self.publisher_dropped: dict[int, int] = {}
        self.extra_figures: Callable[[], dict] = dict
        self.on_commit: Callable[[list[Message]], None] | None = None  # live followers
        self.on_commit_time: Callable[[float], None] | None = None  # seconds per batch
        self._pending: list[Message] = []
        self._pending_rows = 0
        self._pending_seq: dict[int, int] = {}
        self._pending_rejects: list[tuple] = []
        self._first_pending_at: float | None = None
        self._waiters: list[Waiter] = []
        self._resend_from: dict[int, int] = {}
        # Per publisher, the message at or below which it sends nothing again (its sync
        # requests say so): after a new database, what it replays carries an older base.
        self._settled: dict[int, int] = {}
        self._retry_at = 0.0
        self._retry_delay = RETRY_SECONDS
        self._error_logged_at = 0.0
        self._next_adopt = 0.0
        self._next_file_check = 0.0
        self._refusal_log = RateLimitedLog(log, burst=10, interval=10.0)
        self._out_of_order: Counter = Counter()  # per publisher, since the last line
        self._out_of_order_logged_at: float | None = None  # None: no spell going on
        # Maintenance policy (set from the configuration; None keeps a table forever).
        self.retention_days: dict[str, float | None] = {
            "events": 7,
            "anomalies": 7,
            "metrics": 7,
            "sessions": None,
            "patterns": None,
        }
        self.maintenance_chunk_rows = 5000
        self.last_runs: dict[str, dict] = {}
        self._tasks: deque[MaintenanceTask] = deque()
        self._maintenance_paused_until = 0.0
        self._rate_samples: deque = deque(maxlen=11)

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

    def set_limits(self, limits: wire.Limits) -> None:
        """New limits for what is accepted from now on (a reload)."""
        self.validator = Validator(limits, self.watermarks)

    def accept(self, msg: Message, adopted: bool = False) -> None:
        """Queue a message for the next batch, in publisher order (see the module docstring)."""
        pub = msg.publisher_id
        last = self._pending_seq.get(pub, self.watermarks.get(pub, 0))
        self.stats.received_messages += 1
        if msg.seq <= last:
            # Already committed: a replay skipped. Received again while it waits in the
            # batch: it is applied once, from the batch.
            if msg.seq <= self.watermarks.get(pub, 0):
                self.stats.duplicate_records += msg.row_count
            return
        base = max(msg.base, self._settled.get(pub, 0))
        if msg.seq > last + 1 and base < msg.seq - 1 and not adopted:
            self.stats.out_of_order_messages += 1
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
            self._resend_from[pub] = last + 1
            self._answer_waiters(pub)
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
        if self._tasks and self.store_error is None:
            # A run in progress takes its next step at once, or soon when it waits.
            waits.append(self._maintenance_paused_until - now)
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
        now = time.monotonic()
        if (
            self._out_of_order_logged_at is not None
            and now - self._out_of_order_logged_at >= OUT_OF_ORDER_SUMMARY_SECONDS
        ):
            self._summarize_out_of_order(now)

        if now >= self._next_file_check and self.store_error is None:
            self._next_file_check = now + CHECK_FILES_SECONDS
            try:
                self.store.check_files()
            except StoreGone as exc:
                self._keep_for_retry(exc)
        if not self._rate_samples or now - self._rate_samples[-1][0] >= 1.0:
            self._rate_samples.append(
                (now, self.stats.received_records, self.stats.committed_records)
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
            now - self._out_of_order_logged_at,
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
        batch, rejects = self._pending, self._pending_rejects
        began = time.perf_counter()
        refused = 0
        try:
            try:
                stored = self.store.apply(batch, self.watermarks, rejects)
            except self.store.batch_errors as exc:
                stored, refused = self._apply_one_by_one(batch, rejects, exc)
        except self.store.unavailable_errors as exc:
            self._keep_for_retry(exc)
            return
        self._pending, self._pending_rejects = [], []
        self._pending_rows = 0
        self._pending_seq = {}
        self._first_pending_at = None
        if self.store_error is not None:
            log.warning("%s accepts writes again; resuming", self.store.name)
            self.store_error = None
            self._retry_delay = RETRY_SECONDS
        records = sum(m.row_count for m in batch)
        took_ms = (time.perf_counter() - began) * 1000
        self.stats.commit_ms_avg += (took_ms - self.stats.commit_ms_avg) * 0.05
        self.stats.commit_ms_max = max(self.stats.commit_ms_max, took_ms)
        self.stats.batch_rows_avg += (records - self.stats.batch_rows_avg) * 0.05
        if self.on_commit_time is not None:  # the Prometheus histogram (prometheus.py)
            self.on_commit_time(took_ms / 1000)
        if self.on_commit is not None and batch:
            self.on_commit(batch)
        self.stats.committed_records += stored
        # Rows a store refused inside the batch (an id another row already has: SQLite
        # keeps them in mb_rejected with the reason).
        self.stats.rejected_records += records - stored - refused
        self.stats.batches += 1
        self.stats.last_commit_at = time.time()

    def _keep_for_retry(self, exc: Exception) -> None:
        """The store cannot write now (disk full, I/O, server down): keep the batch, stop
        reading, retry after 1 s, doubling up to 10 s."""
        self.stats.store_errors += 1
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
        self, batch: list[Message], rejects: list, exc: Exception
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
                self.stats.rejected_messages += 1
                self.stats.rejected_records += msg.row_count
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
    def handle_request(self, request: dict, reply: Reply, peer: str = LOCAL) -> None:
        """Answer one control request (now, or once what it waits for is committed).

        ``peer``: who sent it, as its channel authenticated it (a CURVE public key, or
        spool_auth.LOCAL); a publisher's spool token is made for it (lease, and a sync
        request that asks with ``token``)."""
        op = request.get("op")
        rid = request.get("rid")
        if op == "sync":
            pub, seq = int(request["pub"]), int(request["seq"])
            if request.get("token"):
                token = self._spool_token(pub, peer)
                reply = functools.partial(_with_fields, reply, {"spool_token": token})
            if "dropped" in request:
                self.publisher_dropped[pub] = int(request["dropped"])
            if "base" in request:
                self._settled[pub] = max(self._settled.get(pub, 0), int(request["base"]))
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
                    "db": self.store.name,
                    "instance": self.instance,
                }
            )
        elif op == "stats":
            reply({"rid": rid, "ok": True, "stats": self.figures()})
        elif op == "lease":
            try:
                block = self.store.lease_id_block()
            except self.store.unavailable_errors as exc:
                reply({"rid": rid, "ok": False, "error": f"cannot lease ids now: {exc}"})
            else:
                reply(
                    {
                        "rid": rid,
                        "ok": True,
                        "block": block,
                        "spool_token": self._spool_token(block, peer),
                    }
                )
        elif op in ("retention", "vacuum"):
            days = request.get("days")
            self.start_maintenance(
                op,
                request.get("trigger", "request"),
                reply,
                rid,
                None if days is None else float(days),
                tuple(request.get("then", ())),
            )
        else:
            reply({"rid": rid, "ok": False, "error": f"unknown op {op!r}"})

    # -- spools of publishers that are gone ---------------------------------------------
    def adopt_spools(self, force: bool = False) -> None:
        """Apply what exited or crashed publishers left in their spools, then remove them.

        Under CURVE (``spool_auth``) a spool is applied only with the token its publisher was
        handed; what fails is reported and left in place (``_refuse_spool``)."""
        now = time.monotonic()
        if not force and now < self._next_adopt:
            return
        self._next_adopt = now + ADOPT_EVERY_SECONDS
        if self.spool_key is None or self.store_error is not None:
            return
        for folder in [f for f in self.refused_spools if not f.exists()]:
            del self.refused_spools[folder]  # an operator removed it
            self._refused_contents.pop(folder, None)
        for folder, publisher_id in spool.orphaned_spools(self.spool_key):
            token = contents = None
            if self.spool_auth is not None:
                try:
                    token = self.spool_auth.token_for(folder, publisher_id)
                except SpoolRefused as exc:
                    self._refuse_spool(folder, str(exc))
                    continue
                contents = _spool_contents(folder)
                if self._refused_contents.get(folder) == contents:
                    continue  # what it holds with a valid MAC is applied; the rest reported
            frames = forged = unsigned = 0
            for segment in spool.segment_paths(folder):
                result = spool.read_segment(segment, token)
                forged += result.forged_frames
                unsigned += result.unsigned_frames
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
            if forged or unsigned:
                self.stats.spool_forged_frames += forged + unsigned
                self._refused_contents[folder] = contents
                reasons = []
                if forged:
                    reasons.append(f"{forged} message(s) carry no valid MAC for its identity")
                if unsigned:
                    reasons.append(
                        f"{unsigned} message(s) carry no MAC (written before its publisher "
                        "had a spool token)"
                    )
                self._refuse_spool(folder, "; ".join(reasons))
                continue
            self.refused_spools.pop(folder, None)
            self._refused_contents.pop(folder, None)
            log.info(
                "adopted %d message(s) from the spool of a finished publisher: %s", frames, folder
            )
            self.stats.adopted_spools += 1
            shutil.rmtree(folder, ignore_errors=True)

    def _refuse_spool(self, folder: Path, reason: str) -> None:
        """A spool that may not be applied is left alone and reported (logged once per
        folder and reason, counted in status as refused_spools)."""
        if self.refused_spools.get(folder) != reason:
            log.warning("spool %s is not applied: %s; it is left in place", folder, reason)
        self.refused_spools[folder] = reason

    def _spool_token(self, publisher_id: int, peer: str) -> dict | None:
        """Under CURVE, what lets ``publisher_id``'s spool be applied later: the identity
        its channel authenticated (``peer``) and the token for both (spool_auth)."""
        if self.spool_auth is None:
            return None
        return {"identity": peer, "token": self.spool_auth.token(publisher_id, peer)}

    # -- maintenance: run in steps between batches, so ingest keeps flowing ----------------
    def start_maintenance(
        self,
        job: str,
        trigger: str,
        reply: Reply | None = None,
        rid=None,
        days: float | None = None,
        then: tuple[str, ...] = (),
    ) -> None:
        """Queue a retention or vacuum run; ``reply`` gets its result when it is done."""
        if job not in ("retention", "vacuum"):
            raise ValueError(f"unknown maintenance job {job!r}; expected retention or vacuum")
        if days is not None and days < 0:
            raise ValueError("days must not be negative")
        self._tasks.append(MaintenanceTask(job, trigger, reply, rid, days, then))

    @property
    def maintenance_running(self) -> str | None:
        return self._tasks[0].job if self._tasks else None

    def _retention_cutoffs(self, days: float | None) -> dict[str, float]:
        now = time.time()
        if days is not None:  # the seed's clear_old_data(days): events, anomalies, metrics
            return {t: now - days * 86400 for t in ("events", "anomalies", "metrics")}
        return {t: now - d * 86400 for t, d in self.retention_days.items() if d is not None}

    def maintenance_step(self) -> None:
        """Run one bounded step of the current maintenance run (a chunk of deletes, a few
        thousand pages of incremental vacuum)."""
        if not self._tasks or time.monotonic() < self._maintenance_paused_until:
            return
        task = self._tasks[0]
        if task.steps is None:
            self.tick(force=True)  # what was received before the run is committed first
            task.started = time.time()
            if task.job == "retention":
                task.steps = self.store.retention_steps(
                    self._retention_cutoffs(task.days), self.maintenance_chunk_rows
                )
            else:
                task.steps = self.store.vacuum_steps()
        began = time.perf_counter()
        try:
            step = next(task.steps)
        except StopIteration:
            self._finish_task(task, None)
            return
        except self.store.unavailable_errors as exc:
            self._finish_task(task, exc)
            return
        finally:
            task.longest_step = max(task.longest_step, time.perf_counter() - began)
        if step is None:  # its work runs elsewhere and is not done: look again shortly
            self._maintenance_paused_until = time.monotonic() + MAINTENANCE_POLL_SECONDS
            return
        if task.job == "retention":
            table, rows = step
            task.deleted[table] = task.deleted.get(table, 0) + rows
        else:
            task.reclaimed += step

    def _finish_task(self, task: MaintenanceTask, error: Exception | None) -> None:
        self._tasks.popleft()
        run = {
            "job": task.job,
            "trigger": task.trigger,
            "started": task.started,
            "finished": time.time(),
            "status": "ok" if error is None else "error",
            "deleted": task.deleted if task.job == "retention" else None,
            "bytes_reclaimed": task.reclaimed if task.job == "vacuum" else None,
            "longest_step_ms": round(task.longest_step * 1000, 3),
            "error": None if error is None else str(error),
        }
        try:
            self.store.record_maintenance(run)
        except self.store.unavailable_errors as exc:
            log.error("could not record the %s run: %s", task.job, exc)
        self.last_runs[task.job] = run
        if error is None:
            log.info(
                "%s (%s) done in %.1fs: %s; longest step %.1f ms",
                task.job,
                task.trigger,
                run["finished"] - run["started"],
                task.deleted if task.job == "retention" else f"{task.reclaimed} bytes",
                run["longest_step_ms"],
            )
        else:
            log.error("%s (%s) failed: %s", task.job, task.trigger, error)
        if task.reply is not None:
            task.reply({"rid": task.rid, "ok": error is None, "run": run, "error": run["error"]})
        if error is None:
            for follow in task.then:
                self.start_maintenance(follow, task.trigger)

    def run_maintenance(self, job: str, trigger: str = "request", days: float | None = None):
        """Run a maintenance job to the end now (embedded mode and tests); returns the run."""
        box: dict = {}
        self.start_maintenance(job, trigger, box.update, None, days)
        while "run" not in box:
            self.maintenance_step()
            time.sleep(max(0.0, self._maintenance_paused_until - time.monotonic()))
        return box["run"]

    def figures(self) -> dict:
        """The live figures `memorybank status` shows."""
        s = self.stats
        return {
            "pid": os.getpid(),
            "db": self.store.name,
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
            "refused_spools": len(self.refused_spools),
            "spool_forged_frames": s.spool_forged_frames,
            "received_per_second": round(self.rates()[0], 1),
            "committed_per_second": round(self.rates()[1], 1),
            "batches": s.batches,
            "batch_rows_avg": round(s.batch_rows_avg, 1),
            "commit_ms_avg": round(s.commit_ms_avg, 2),
            "commit_ms_max": round(s.commit_ms_max, 2),
            "queue_depth": self._pending_rows,
            "maintenance_running": self.maintenance_running,
            "maintenance_waiting": self._maintenance_waiting(),
            "last_maintenance": self._last_runs_for_status(),
            "store_error": self.store_error,
            "store_errors": s.store_errors,
            "publishers": len(self.watermarks),
            "last_commit_at": s.last_commit_at,
            **self._size_figures(),
            **self.extra_figures(),
        }

    def _maintenance_waiting(self) -> str | None:
        if not self._tasks or self.store_error is not None:
            return None
        try:
            return self.store.maintenance_waiting()
        except self.store.unavailable_errors as exc:
            log.debug("maintenance state unavailable: %s", exc)
            return None

    def _last_runs_for_status(self) -> dict:
        if not self.last_runs and self.store_error is None:
            try:
                for run in reversed(self.store.maintenance_runs(limit=20)):
                    self.last_runs[run["job"]] = run
            except self.store.unavailable_errors as exc:
                log.debug("maintenance history unavailable: %s", exc)
        return dict(self.last_runs)

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


def _with_fields(reply: Reply, fields: dict, body: dict) -> None:
    """``reply`` with ``fields`` added to the body (a reply that may be sent later)."""
    reply({**body, **fields})


def _spool_contents(folder: Path) -> tuple:
    """What a spool folder holds, cheaply: each file's name, size and modification time."""
    found = []
    for path in sorted(folder.iterdir()):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        found.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(found)
