"""The PostgreSQL store, writer side: COPY per batch, one transaction, daily partitions.

Several daemons may write one PostgreSQL database (one per host or site). What keeps that
correct: id blocks come from a sequence (unique across all of them); each batch locks the
watermark rows of its publishers (``FOR UPDATE``), so a message is applied once even if two
daemons were handed it; session and pattern upserts are taken in key order, so two
daemons' batches cannot deadlock on them; the summary's day counters have a row per writer,
so daemons never wait on each other's.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Generator, Iterator
from functools import partial
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError:  # the optional extra; the store says how to install it when used
    psycopg = None  # type: ignore[assignment]

from .. import wire
from ..locations import redact_url
from ..wire import (
    ROW_JSON,
    ROW_TIMESTAMP,
    AnomalyRow,
    EventRow,
    Message,
    MetricRow,
    PatternOp,
    SessionOp,
)
from .base import StoreRefused, StoreUnavailable
from .postgresql_connection import connect, require_driver, to_datetime, utc_datetime
from .postgresql_maintenance import (
    LOCK_WAIT_SECONDS,
    MaintenanceWorker,
    analyze,
    delete_before,
    describe_wait,
    retire_day,
    wait_for,
)
from .postgresql_schema import (
    PARTITION_LOCK,
    PARTITIONED,
    ROLLUP_SECONDS,
    SCHEMA,
    SCHEMA_LOCK,
    SCHEMA_VERSION,
    day_bounds,
    partition_day,
    partition_name,
)
from .schema import COARSE_SECONDS, NewerSchema, refuse_newer
from .sql import (
    SqlStore,
    bucket_counts,
    coarser,
    gather,
    metric_aggregates,
    session_ids,
    statistics_to_compute,
    time_buckets,
)

log = logging.getLogger(__name__)

SESSION_START = """
INSERT INTO sessions AS s (id, session_id, start_time, status, anomaly_count, started)
VALUES (coalesce(%(id)s::bigint, nextval(pg_get_serial_sequence('sessions', 'id'))),
        %(sid)s, %(ts)s, 'ACTIVE', 0, true)
ON CONFLICT (session_id) DO UPDATE SET
    id = CASE WHEN s.started OR %(id)s::bigint IS NULL THEN s.id ELSE %(id)s::bigint END,
    start_time = CASE WHEN s.started THEN least(s.start_time, excluded.start_time)
                      ELSE excluded.start_time END,
    started = true
RETURNING stats_auto, end_time
"""
SESSION_ANOMALY = """
INSERT INTO sessions AS s (id, session_id, start_time, status, anomaly_count, started)
VALUES (coalesce(%(id)s::bigint, nextval(pg_get_serial_sequence('sessions', 'id'))),
        %(sid)s, %(ts)s, 'ACTIVE', 1, false)
ON CONFLICT (session_id) DO UPDATE SET
    anomaly_count = coalesce(s.anomaly_count, 0) + 1,
    start_time = CASE WHEN s.started THEN s.start_time
                      ELSE least(s.start_time, excluded.start_time) END
"""
SESSION_END = """
INSERT INTO sessions AS s (id, session_id, start_time, end_time, status, anomaly_count,
                           started, total_energy, avg_current, max_current, min_current,
                           stats_auto)
VALUES (coalesce(%(id)s::bigint, nextval(pg_get_serial_sequence('sessions', 'id'))),
        %(sid)s, %(ts)s, %(ts)s, 'COMPLETED', 0, false, %(energy)s, %(avg)s, %(max)s, %(min)s,
        %(auto)s)
ON CONFLICT (session_id) DO UPDATE SET
    end_time = greatest(s.end_time, excluded.end_time),
    status = 'COMPLETED',
    total_energy = excluded.total_energy,
    avg_current = excluded.avg_current,
    max_current = excluded.max_current,
    min_current = excluded.min_current,
    stats_auto = excluded.stats_auto
"""
PATTERN_UPSERT = """
INSERT INTO patterns AS p (pattern_type, pattern_data, pattern_key, frequency, last_seen,
                           confidence)
VALUES (%(type)s, %(data)s::jsonb, %(key)s, 1, %(ts)s, %(confidence)s)
ON CONFLICT (pattern_type, pattern_key) DO UPDATE SET
    frequency = coalesce(p.frequency, 0) + 1,
    confidence = CASE WHEN p.last_seen IS NULL OR excluded.last_seen >= p.last_seen
                      THEN excluded.confidence ELSE p.confidence END,
    last_seen = greatest(p.last_seen, excluded.last_seen),
    updated_at = now()
"""
RETENTION_TIME_COLUMN = {"sessions": "start_time", "patterns": "last_seen"}

COPY_EVENTS = (
    "COPY events (id, timestamp, event_type, component, message, data) FROM STDIN (FORMAT BINARY)"
)
EVENT_TYPES = ["int8", "timestamptz", "text", "text", "text", "jsonb"]
COPY_ANOMALIES = (
    "COPY anomalies (id, timestamp, anomaly_type, severity, description, pattern_data, "
    "current_value, expected_value, deviation) FROM STDIN (FORMAT BINARY)"
)
ANOMALY_TYPES = [
    "int8", "timestamptz", "text", "text", "text", "jsonb", "float8", "float8", "float8",
]  # fmt: skip
COPY_METRICS = (
    "COPY metrics (id, timestamp, metric_name, metric_value, unit, metadata) "
    "FROM STDIN (FORMAT BINARY)"
)
METRIC_TYPES = ["int8", "timestamptz", "text", "float8", "text", "jsonb"]


def copy_rows(cur, events: list, anomalies: list, metrics: list) -> None:
    """COPY a batch's plain rows, binary (no text parsing on the server), one stream per
    table: the store's batches and bench/run.py's ceiling alike. Each row becomes the
    tuple COPY takes in one expression, no function of ours called per row: its time as a
    datetime, an anomaly's deviation added; its JSON text goes as it came (``set_types``
    picks the jsonb column's dumper: register_json_text's)."""
    for sql, types, rows, tuples in (
        (COPY_EVENTS, EVENT_TYPES, events, _plain_tuples),
        (COPY_ANOMALIES, ANOMALY_TYPES, anomalies, _anomaly_tuples),
        (COPY_METRICS, METRIC_TYPES, metrics, _plain_tuples),
    ):
        if rows:
            with cur.copy(sql) as copy:
                copy.set_types(types)
                write = copy.write_row
                for row in tuples(rows):
                    write(row)


# The wire's rows (wire.EventRow, MetricRow, AnomalyRow) by position: a global name per
# field would be looked up for every row.
def _plain_tuples(rows: list) -> Iterator[tuple]:
    """Events and metrics: [id, time, text, text or value, text, json]."""
    when, utc = dt.datetime.fromtimestamp, dt.UTC
    return ((r[0], when(r[1], utc), r[2], r[3], r[4], r[5]) for r in rows)


def _anomaly_tuples(rows: list) -> Iterator[tuple]:
    """Anomalies: [id, time, text, text, text, json, current, expected] and the deviation."""
    when, utc = dt.datetime.fromtimestamp, dt.UTC
    return (
        (r[0], when(r[1], utc), r[2], r[3], r[4], r[5], r[6], r[7],
         None if r[6] is None or r[7] is None else abs(r[6] - r[7]))
        for r in rows
    )  # fmt: skip


if psycopg is not None:
    from psycopg.adapt import Dumper

    class JsonTextBinaryDumper(Dumper):
        """Binary jsonb is a version byte and the JSON text: no second encoding."""

        format = psycopg.pq.Format.BINARY

        def dump(self, obj):
            return b"\x01" + obj.encode()


ADD_DAY_COUNTS = (
    "INSERT INTO mb_day_counts (name, day, writer, n) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (name, day, writer) DO UPDATE SET n = mb_day_counts.n + excluded.n"
)


def _days(rows) -> Iterator[int]:
    """Each plain row's day (epoch seconds // 86400), computed in C."""
    return map(int, time_buckets(rows, 86400))


def _rows_per_day(rows) -> dict[int, int]:
    """{day: rows} of plain rows; rows mostly fall in one day, and bucket_counts then
    finds it in two passes in C, with no object made per row."""
    return {int(day): n for day, n in bucket_counts(rows, 86400).items()}


def day_counts(events, anomalies, day_of=None) -> Counter:
    """(name, day) -> rows, for mb_day_counts: events, anomalies, anomalies per severity.
    ``day_of`` reads a row's day where its time is not the wire's (epoch seconds)."""
    if day_of is None:
        counts = Counter({("events", day): n for day, n in _rows_per_day(events).items()})
        anomaly_days = list(_days(anomalies))
    else:
        counts = Counter(zip(repeat("events"), map(day_of, events)))
        anomaly_days = list(map(day_of, anomalies))
    counts.update(zip(repeat("anomalies"), anomaly_days))
    severities = map("anomalies:".__add__, map(itemgetter(AnomalyRow.SEVERITY), anomalies))
    counts.update(zip(severities, anomaly_days, strict=True))
    return counts


def add_day_counts(conn, counts: Counter, writer: str) -> None:
    """Add (or, negative, take away) counted rows, in the caller's transaction."""
    if counts:
        with conn.cursor() as cur:
            cur.executemany(
                ADD_DAY_COUNTS, [(name, day, writer, n) for (name, day), n in counts.items()]
            )


ADD_METRIC_ROLLUPS = (
    "INSERT INTO mb_metric_rollups AS r (metric_name, seconds, start, writer, n, total, min, "
    "max) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (metric_name, seconds, start, "
    "writer) DO UPDATE SET n = r.n + excluded.n, total = r.total + excluded.total, "
    "min = least(r.min, excluded.min), max = greatest(r.max, excluded.max)"
)


def add_metric_rollups(conn, minutes: dict, writer: str) -> None:
    """Add metric_aggregates' per-minute slices (and the 10-minute slices they make) to
    mb_metric_rollups, in the caller's transaction."""
    if minutes:
        rows = [(name, 60, m * 60, writer, *agg) for (name, m), agg in minutes.items()]
        rows += [
            (name, COARSE_SECONDS, k * COARSE_SECONDS, writer, *agg)
            for (name, k), agg in coarser(minutes, COARSE_SECONDS // 60).items()
        ]
        with conn.cursor() as cur:
            cur.executemany(ADD_METRIC_ROLLUPS, rows)


def register_json_text(conn) -> None:
    """Let this connection's COPY streams write JSON text into binary jsonb as it is (a
    dumper found by the column's type after ``set_types``, whatever the Python type)."""
    JsonTextBinaryDumper.oid = conn.adapters.types["jsonb"].oid
    conn.adapters.register_dumper(None, JsonTextBinaryDumper)


def ensure_schema(conn) -> None:
    """Create the tables (several daemons may start at once: one does it, others wait)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        if conn.execute("SELECT to_regclass('mb_meta') IS NOT NULL").fetchone()[0]:
            stored = conn.execute(
                "SELECT value::int FROM mb_meta WHERE key = 'schema_version'"
            ).fetchone()
            refuse_newer(stored[0] if stored else 0, SCHEMA_VERSION)
        upgrading = conn.execute(
            "SELECT to_regclass('metrics') IS NOT NULL AND to_regclass('mb_metric_rollups') IS NULL"
        ).fetchone()[0]
        conn.execute(SCHEMA)
        if upgrading:  # schema version 1: its metrics rolled up once, in this transaction
            log.info("filling mb_metric_rollups from the metrics already stored")
            conn.execute(
                "INSERT INTO mb_metric_rollups SELECT metric_name, s.seconds, "
                "floor(extract(epoch FROM timestamp) / s.seconds)::bigint * s.seconds, "
                "'upgrade', count(*), sum(metric_value), min(metric_value), max(metric_value) "
                "FROM metrics, unnest(%s::int[]) AS s(seconds) GROUP BY 1, 2, 3",
                (list(ROLLUP_SECONDS),),
            )
        conn.execute(
            "INSERT INTO mb_meta (key, value) VALUES ('schema_version', %s), "
            "('maintenance_since', %s) ON CONFLICT (key) DO NOTHING",
            (str(SCHEMA_VERSION), str(time.time())),
        )
        conn.execute(
            "UPDATE mb_meta SET value = %s WHERE key = 'schema_version' AND value::int < %s",
            (str(SCHEMA_VERSION), SCHEMA_VERSION),
        )


class PartitionKeeper:
    """Knows which daily partitions exist and creates missing ones before a batch needs
    them (in a short transaction of their own, under an advisory lock)."""

    def __init__(self):
        self.known: dict[str, set[int]] = {t: set() for t in PARTITIONED}

    def load(self, conn) -> None:
        self.known = {t: set() for t in PARTITIONED}
        rows = conn.execute(
            "SELECT parent.relname, child.relname FROM pg_inherits "
            "JOIN pg_class parent ON parent.oid = inhparent "
            "JOIN pg_class child ON child.oid = inhrelid "
            "WHERE parent.relname = ANY(%s)",
            (list(PARTITIONED),),
        ).fetchall()
        for parent, child in rows:
            day = partition_day(child)
            if day is not None:
                self.known[parent].add(day)

    def ensure(self, conn, table: str, days) -> None:
        missing = [d for d in days if d not in self.known[table]]
        if not missing:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            for day in sorted(missing):
                # CREATE TABLE ... PARTITION OF would lock the whole table (ACCESS
                # EXCLUSIVE), so a reader's open transaction would hold ingest; ATTACH
                # takes SHARE UPDATE EXCLUSIVE, which readers and writers never hold.
                # A day being retired right now (detached, not yet dropped) is left
                # alone: its rows are past retention, and the next batch tries again.
                name = partition_name(table, day)
                if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None:
                    start, end = day_bounds(day)
                    conn.execute(
                        f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS "
                        "INCLUDING CONSTRAINTS)"
                    )
                    conn.execute(
                        f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM "
                        f"('{start.isoformat()}') TO ('{end.isoformat()}')"
                    )
        self.load(conn)


class PostgresStore(SqlStore):
    """The writer's connection to a PostgreSQL database."""

    def __init__(self, url: str, max_db_bytes: int | None = None, writer: str | None = None):
        require_driver()
        self.url = url
        # Names this writer's rows in mb_day_counts (the daemon passes host and endpoint).
        self.writer = writer or f"{socket.gethostname()}/{os.getpid()}"
        self.name = redact_url(url)
        self.partitions = PartitionKeeper()
        self.conn = None
        self._maintenance: MaintenanceWorker | None = None
        self._connect()

    batch_errors = (
        (psycopg.DataError, psycopg.IntegrityError, pg_errors.UndefinedFunction) if psycopg else ()
    )
    placeholder = "%s"
    json_placeholder = "%s::jsonb"
    # A backlog in batches of up to 4 x batch_rows: each batch costs round trips and a
    # COMMIT wait on the server, whatever its size (docs/benchmark.md measures it).
    batch_growth = 4
    # How long a maintenance step may wait for a lock (older transactions) before the run
    # gives up and says why; the next run finishes the job.
    lock_wait_seconds = LOCK_WAIT_SECONDS
    # Everything else the server or the connection says: keep the batch, retry later.
    unavailable_errors = (psycopg.Error, StoreUnavailable) if psycopg else (StoreUnavailable,)

    def _when(self, epoch_seconds):
        return to_datetime(epoch_seconds)

    def _epoch(self, column: str) -> str:
        return f"extract(epoch FROM {column})::float8"

    def _json_text(self, column: str) -> str:
        return f"{column}::text"

    def _executemany(self, sql: str, rows: list) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql, rows)

    def _connect(self) -> None:
        if self.conn is not None and not self.conn.closed and not self.conn.broken:
            return
        if self.conn is not None:
            self.conn.close()
            self.conn = None
            log.info("reconnecting to %s", self.name)
        conn = connect(self.url, application_name="memorybank-daemon")
        register_json_text(conn)
        try:
            ensure_schema(conn)
            self.partitions.load(conn)
            today = int(time.time() // 86400)
            for table in PARTITIONED:
                self.partitions.ensure(conn, table, (today, today + 1))
        except NewerSchema as exc:
            conn.close()
            raise StoreRefused(f"{self.name}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    # -- start-up facts -------------------------------------------------------------
    def lease_id_block(self) -> int:
        self._connect()
        block = self.conn.execute("SELECT nextval('mb_id_blocks')").fetchone()[0]
        if block > wire.MAX_ID_BLOCK:
            raise RuntimeError(f"{self.name}: all id blocks are used")
        return block

    def alert_storage(self):
        """The alerts' tables in this database (schema version 3), written on this
        connection."""
        from ..alerts.storage import PostgresStorage

        return PostgresStorage(self)

    # -- the batch --------------------------------------------------------------------
    def apply(self, messages: list[Message], watermarks: dict[int, int], rejects=()) -> int:
        self._connect()
        # The batch's own list when there is one, so rows set aside below stay with the
        # batch if it has to be retried later.
        rejects = rejects if isinstance(rejects, list) else list(rejects)
        try:
            return self._apply(messages, watermarks, rejects)
        except pg_errors.CheckViolation:
            # "No partition for row": another daemon dropped a day we still knew of.
            self.partitions.load(self.conn)
            return self._apply(messages, watermarks, rejects)
        except psycopg.DataError:
            # One bad value fails a whole COPY: set aside the rows PostgreSQL cannot hold
            # (NUL characters, NaN in JSON...) as refused input, and try the rest again.
            if not self.conn.broken and self._scrub(messages, rejects):
                return self._apply(messages, watermarks, rejects)
            raise

    def _apply(self, messages: list[Message], watermarks: dict[int, int], rejects: list) -> int:
        conn = self.conn
        publishers = sorted({m.publisher_id for m in messages})
        days: dict[str, set[int]] = {t: set() for t in PARTITIONED}
        for msg in messages:
            for table, rows in (
                ("events", msg.events),
                ("anomalies", msg.anomalies),
                ("metrics", msg.metrics),
            ):
                days[table].update(_rows_per_day(rows))
        for table, needed in days.items():
            self.partitions.ensure(conn, table, needed)
        hook = self.batch_hook
        try:
            stored = self._transaction(conn, messages, watermarks, rejects, publishers, hook)
        except BaseException:
            if hook is not None:
                hook.discarded()
            raise
        if hook is not None:
            hook.committed()
        return stored

    def _transaction(self, conn, messages, watermarks, rejects, publishers, hook) -> int:
        """The batch in one transaction, with the alerts' rows staged last in it (``_apply``
        then tells the hook whether it committed)."""
        with conn.transaction():
            # The reads the batch needs, in one round trip: the committed watermarks,
            # locked (another daemon handed the same publisher's message, a spool adopted
            # twice, waits here, then skips it), and the ended sessions whose statistics
            # this batch's metrics change.
            with conn.pipeline():
                marks = (
                    conn.execute(
                        "SELECT publisher_id, applied_seq FROM mb_publishers "
                        "WHERE publisher_id = ANY(%s) ORDER BY publisher_id FOR UPDATE",
                        (publishers,),
                    )
                    if publishers
                    else None
                )
                # Asked of every message's metrics (replays too: recomputing a
                # session's figures again gives the same figures).
                touched = self._ask_sessions_touched_by(
                    list(chain.from_iterable(msg.metrics for msg in messages))
                )
            stored_marks = dict(marks.fetchall()) if marks is not None else {}
            events, anomalies, metrics, operations, applied = gather(
                messages, watermarks, stored_marks
            )
            stored = self._copy(events, anomalies, metrics)
            started = []  # (session id, cursor): read once the pipeline has synced
            # Everything else the batch writes goes out back to back, one round trip.
            with conn.pipeline():
                add_day_counts(conn, day_counts(events, anomalies), self.writer)
                add_metric_rollups(
                    conn,
                    metric_aggregates(
                        metrics, 60, MetricRow.METRIC_NAME, ROW_TIMESTAMP, MetricRow.METRIC_VALUE
                    ),
                    self.writer,
                )
                refresh: set[str] = set()
                for op in sorted(operations, key=_operation_key):
                    cursor = self._apply_operation(op, refresh)
                    if cursor is not None:
                        started.append((op[SessionOp.SESSION_ID], cursor))
                if rejects:
                    self._record_rejects(rejects)
                self._record_watermarks(applied)
            refresh.update(session_ids(touched))
            for session_id, cursor in started:
                row = cursor.fetchone()
                if row and row[0] and row[1] is not None:  # ended before it started
                    refresh.add(session_id)
            stored += len(operations)
            for session_id in sorted(refresh):
                self._fill_session_statistics(session_id)
            if hook is not None:  # alerts: the outbox rows join this transaction
                hook.stage({"events": events, "anomalies": anomalies, "metrics": metrics})
        watermarks.update(applied)
        return stored

    def _copy(self, events: list, anomalies: list, metrics: list) -> int:
        """COPY the plain rows (copy_rows); returns how many."""
        with self.conn.cursor() as cur:
            copy_rows(cur, events, anomalies, metrics)
        return len(events) + len(anomalies) + len(metrics)

    def _scrub(self, messages: list[Message], rejects: list) -> bool:
        """Move rows PostgreSQL refuses out of their messages into ``rejects``; True when
        any moved (so the batch is worth trying again)."""
        moved = False
        for msg in messages:
            for kind, rows, text_at, json_at in (
                ("event", msg.events, _EVENT_TEXT, (ROW_JSON,)),
                ("anomaly", msg.anomalies, _ANOMALY_TEXT, (ROW_JSON,)),
                ("metric", msg.metrics, _METRIC_TEXT, (ROW_JSON,)),
            ):
                keep = []
                for row in rows:
                    reason = _unstorable(row, text_at, json_at)
                    if reason is None:
                        keep.append(row)
                    else:
                        moved = True
                        rejects.append(
                            (time.time(), msg.publisher_id, f"{kind}: {reason}", wire.sample(row))
                        )
                rows[:] = keep
        return moved

    def _apply_operation(self, op: list, refresh: set[str]):
        """Send one session or pattern upsert; a session start returns its cursor (its
        RETURNING row says whether the session's statistics need computing)."""
        code = op[wire.OP_CODE]
        ts = utc_datetime(op[wire.OP_TIMESTAMP])
        if code == wire.OP_PATTERN:
            self.conn.execute(
                PATTERN_UPSERT,
                {
                    "ts": ts,
                    "type": op[PatternOp.PATTERN_TYPE],
                    "data": op[PatternOp.PATTERN_DATA],
                    "key": op[PatternOp.KEY],
                    "confidence": op[PatternOp.CONFIDENCE],
                },
            )
            return None
        session_id, row_id = op[SessionOp.SESSION_ID], op[SessionOp.ROW_ID]
        if code == wire.OP_SESSION_START:
            return self.conn.execute(SESSION_START, {"sid": session_id, "ts": ts, "id": row_id})
        if code == wire.OP_SESSION_ANOMALY:
            self.conn.execute(SESSION_ANOMALY, {"sid": session_id, "ts": ts, "id": row_id})
        elif code == wire.OP_SESSION_END:
            energy, avg, mx, mn = op[SessionOp.STATS]
            auto = statistics_to_compute(energy, avg, mx, mn)
            self.conn.execute(
                SESSION_END,
                {
                    "sid": session_id,
                    "ts": ts,
                    "energy": energy,
                    "avg": avg,
                    "max": mx,
                    "min": mn,
                    "auto": auto,
                    "id": row_id,
                },
            )
            if auto:
                refresh.add(session_id)
        return None

    def _integral(self, metric_name: str, start, end) -> float | None:
        """Trapezoidal integral of a metric over time (value x seconds), None under 2 points."""
        return self.conn.execute(
            "SELECT sum(extract(epoch FROM timestamp - prev_t)::float8 "
            "           * (metric_value + prev_v) / 2.0) FROM ("
            " SELECT timestamp, metric_value,"
            "  lag(timestamp) OVER (ORDER BY timestamp) AS prev_t,"
            "  lag(metric_value) OVER (ORDER BY timestamp) AS prev_v"
            " FROM metrics WHERE metric_name = %s AND timestamp BETWEEN %s AND %s"
            ") s WHERE prev_t IS NOT NULL",
            (metric_name, start, end),
        ).fetchone()[0]

    # -- maintenance: on the worker's connection (postgresql_maintenance.py) -----------
    def _worker(self) -> MaintenanceWorker:
        if self._maintenance is None:
            self._maintenance = MaintenanceWorker(
                partial(connect, self.url, application_name="memorybank-maintenance"),
                self.lock_wait_seconds,
            )
        return self._maintenance

    def _on_worker(self, what: str, fn, *args) -> Generator[None, None, Any]:
        """Run ``fn`` on the maintenance connection; yields None while it runs."""
        return (yield from wait_for(self._worker().submit(what, fn, *args)))

    def retention_steps(
        self, cutoffs: dict[str, float], chunk_rows: int = 5000
    ) -> Iterator[tuple[str, int] | None]:
        """Days wholly before the cutoff: their partitions are detached (CONCURRENTLY, so
        other daemons keep writing) and dropped. Rows before the cutoff within its own day
        are deleted in chunks. sessions and patterns (not partitioned) by chunked DELETE.
        All of it on the maintenance connection: a step yields None while that works."""
        self._connect()
        for table, cutoff in cutoffs.items():
            if table in PARTITIONED:
                yield from self._retire_days(table, cutoff)
                column = "timestamp"
            else:
                column = RETENTION_TIME_COLUMN[table]
            deleted = yield from self._on_worker(
                f"deleting {table} rows older than the cutoff",
                delete_before,
                table,
                column,
                utc_datetime(cutoff),
                chunk_rows,
                self.writer,
            )
            yield table, deleted

    def _retire_days(self, table: str, cutoff: float) -> Iterator[tuple[str, int] | None]:
        """Every day of ``table`` that ends before the cutoff, attached or left detached by
        a run that stopped half-way, is retired."""
        self.partitions.load(self.conn)
        days = {d for d in self.partitions.known[table] if day_bounds(d)[1].timestamp() <= cutoff}
        for (orphan,) in self.conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition "
            "AND relname ~ %s",
            (f"^{table}_p[0-9]{{8}}$",),
        ).fetchall():
            day = partition_day(orphan)
            if day is not None and day_bounds(day)[1].timestamp() <= cutoff:
                days.add(day)
        for day in sorted(days):
            rows = yield from self._on_worker(
                f"retiring {partition_name(table, day)} (DETACH CONCURRENTLY, DROP)",
                retire_day,
                table,
                day,
                self.lock_wait_seconds,
            )
            self.partitions.known[table].discard(day)
            yield table, rows

    def vacuum_steps(self) -> Iterator[int | None]:
        """ANALYZE, table by table: dropped partitions return their space at once and
        autovacuum cleans the rest, so what PostgreSQL needs after retention is fresh
        planner statistics."""
        for table in ("events", "anomalies", "metrics", "sessions", "patterns"):
            yield (yield from self._on_worker(f"ANALYZE {table}", analyze, table))

    def maintenance_waiting(self) -> str | None:
        if self._maintenance is None:
            return None
        self._connect()
        return describe_wait(self.conn, self._maintenance.current)

    def size_figures(self) -> dict[str, int]:
        self._connect()
        return {"db_bytes": self.conn.execute("SELECT pg_database_size(current_database())")
                .fetchone()[0]}  # fmt: skip

    def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.close()
            self._maintenance = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _operation_key(op: list):
    """Sessions by id, then patterns by key: every daemon takes row locks in one order."""
    if op[wire.OP_CODE] == wire.OP_PATTERN:
        return (1, op[PatternOp.PATTERN_TYPE], op[PatternOp.KEY])
    return (0, op[SessionOp.SESSION_ID], "")


# Where a row holds text PostgreSQL checks (its JSON is at ROW_JSON in every kind).
_EVENT_TEXT = (EventRow.EVENT_TYPE, EventRow.COMPONENT, EventRow.MESSAGE)
_ANOMALY_TEXT = (AnomalyRow.ANOMALY_TYPE, AnomalyRow.SEVERITY, AnomalyRow.DESCRIPTION)
_METRIC_TEXT = (MetricRow.METRIC_NAME, MetricRow.UNIT)


def _unstorable(row: list, text_at: tuple, json_at: tuple) -> str | None:
    """Why PostgreSQL would refuse this row, or None."""
    for i in text_at:
        if isinstance(row[i], str) and "\x00" in row[i]:
            return "text holds a NUL character, which PostgreSQL cannot store"
    for i in json_at:
        text = row[i]
        if text is None:
            continue
        if "\\u0000" in text:
            return "JSON holds \\u0000, which PostgreSQL's jsonb cannot store"
        try:
            json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            return f"JSON PostgreSQL cannot store: {exc}"
    return None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
