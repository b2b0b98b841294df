"""The SQL both stores share, written once.

Each store gives its connection, its parameter marker, how a time is passed (``_when``)
and read back as epoch seconds (``_epoch``), and how a JSON value is written and read as
text; the statements here are then the same on SQLite and PostgreSQL. ``base.py`` says what
each method promises; this module is how the two stores keep those promises alike.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter, namedtuple
from collections.abc import Iterator
from itertools import compress, repeat
from operator import floordiv, itemgetter

from ..lazylog import lazy_logger
from .base import Reader, Store
from .schema import REJECTED_KEEP

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)
if TYPE_CHECKING:  # readers never load msgpack (wire's codec)
    import threading
    from typing import Any

    from ..wire import Message

log = lazy_logger(__name__)  # (readers never log: no logging import)

# Which statistics end_session computes when the caller gave none (sessions.stats_auto
# bits), and the metrics a session's computed statistics come from.
AUTO_ENERGY, AUTO_AVG, AUTO_MAX, AUTO_MIN = 1, 2, 4, 8
SESSION_METRICS = ("current", "power", "voltage")
_SESSION_METRIC_SET = frozenset(SESSION_METRICS)

# The seed's columns, per table, in the seed's order: what every reader returns.
EVENT_COLUMNS = "id, timestamp, event_type, component, message, data, created_at"
ANOMALY_COLUMNS = (
    "id, timestamp, anomaly_type, severity, description, pattern_data, current_value, "
    "expected_value, deviation, created_at"
)
SESSION_COLUMNS = (
    "id, session_id, start_time, end_time, total_energy, avg_current, max_current, "
    "min_current, anomaly_count, status, created_at"
)
METRIC_COLUMNS = "id, timestamp, metric_name, metric_value, unit, metadata, created_at"
PATTERN_COLUMNS = (
    "id, pattern_type, pattern_data, frequency, last_seen, confidence, created_at, updated_at"
)
TABLE_COLUMNS = {
    "events": EVENT_COLUMNS,
    "anomalies": ANOMALY_COLUMNS,
    "sessions": SESSION_COLUMNS,
    "metrics": METRIC_COLUMNS,
    "patterns": PATTERN_COLUMNS,
}
TIME_COLUMN = {
    "events": "timestamp",
    "anomalies": "timestamp",
    "sessions": "start_time",
    "metrics": "timestamp",
    "patterns": "last_seen",
}
JSON_COLUMNS = ("data", "pattern_data", "metadata")


# The rows of a batch's messages not applied before, by kind (lists), and each publisher's
# watermark once they are committed ({publisher: seq}). A collections.namedtuple: readers
# load this module, and typing.NamedTuple would load typing.
Batch = namedtuple("Batch", ["events", "anomalies", "metrics", "operations", "applied"])


def session_ids(cursor) -> set[str]:
    """The session ids a _ask_sessions_touched_by cursor holds (None: none)."""
    return set() if cursor is None else {r[0] for r in cursor}


def gather(
    messages: list[Message], watermarks: dict[int, int], committed: dict[int, int] | None = None
) -> Batch:
    """The messages above their publisher's watermark (``watermarks``, or ``committed``: the
    marks read in the batch's transaction, where several writers share a database), in
    order; a replayed message is skipped (applied once)."""
    committed = committed or {}
    events: list = []
    anomalies: list = []
    metrics: list = []
    operations: list = []
    applied: dict[int, int] = {}
    for msg in messages:
        pub = msg.publisher_id
        last = applied.get(pub, max(watermarks.get(pub, 0), committed.get(pub, 0)))
        if msg.seq <= last:
            log.debug("skipping replayed message %d of publisher %d", msg.seq, pub)
            continue
        applied[pub] = msg.seq
        events += msg.events
        anomalies += msg.anomalies
        metrics += msg.metrics
        operations += msg.operations
    return Batch(events, anomalies, metrics, operations, applied)


def time_buckets(rows, seconds: int) -> Iterator:
    """Each plain row's timestamp // ``seconds`` (its minute, its day: an integral float,
    or an int), computed in C: no Python step per row."""
    from ..wire import ROW_TIMESTAMP  # the writer's side: wire is loaded

    return map(floordiv, map(itemgetter(ROW_TIMESTAMP), rows), repeat(seconds))


def _one_slice(times: list, seconds: int):
    """The slice (``time // seconds``) every one of ``times`` falls in, or None when they
    span more than one (or there are none): a batch's rows mostly fall in one minute, and
    then its first and last time say so, two passes in C with no object made per row."""
    if not times:
        return None
    first = min(times) // seconds
    return first if max(times) // seconds == first else None


def bucket_counts(rows, seconds: int) -> dict:
    """How many plain rows fall in each slice of ``seconds`` (time_buckets counted):
    {slice: rows}, a slice as ``time // seconds`` (an integral float, or an int)."""
    from ..wire import ROW_TIMESTAMP  # the writer's side: wire is loaded

    times = list(map(itemgetter(ROW_TIMESTAMP), rows))
    only = _one_slice(times, seconds)
    if only is not None:
        return {only: len(times)}
    return Counter(map(floordiv, times, repeat(seconds)))


# mb_maintenance's columns, in the order its rows are written and read.
MAINTENANCE_COLUMNS = (
    "job", "trigger", "started", "finished", "status", "deleted", "bytes_reclaimed",
    "longest_step_ms", "error",
)  # fmt: skip


class SqlStore(Store):
    """The writer's side as both stores write it: the watermarks, refused input, the
    maintenance-run records and end_session's computed statistics."""

    #: The write connection (sqlite3 or psycopg), opened by the store.
    conn: Any
    #: The driver's parameter marker, and the marker of a parameter a JSON column takes.
    placeholder = "?"
    json_placeholder = "?"

    def _connect(self) -> None:
        """Make sure ``conn`` is open (a server's connection may have dropped; a file's
        stays open)."""

    def _when(self, epoch_seconds):
        """A time as this store's query parameter."""
        return epoch_seconds

    def _epoch(self, column: str) -> str:
        """SQL reading a time column as epoch seconds."""
        return column

    def _json_text(self, column: str) -> str:
        """SQL reading a JSON column as its text."""
        return column

    def _executemany(self, sql: str, rows: list) -> None:
        self.conn.executemany(sql, rows)

    def load_watermarks(self) -> dict[int, int]:
        self._connect()
        return dict(self.conn.execute("SELECT publisher_id, applied_seq FROM mb_publishers"))

    def _record_rejects(self, rejects) -> None:
        """Keep refused input, in the batch's transaction: the newest REJECTED_KEEP rows."""
        p = self.placeholder
        self._executemany(
            "INSERT INTO mb_rejected (received_at, publisher_id, reason, sample) "
            f"VALUES ({p}, {p}, {p}, {p})",
            [(self._when(t), pub, reason, sample) for t, pub, reason, sample in rejects],
        )
        self.conn.execute(
            f"DELETE FROM mb_rejected WHERE id <= (SELECT max(id) FROM mb_rejected) - {p}",
            (REJECTED_KEEP,),
        )

    def _record_watermarks(self, applied: dict[int, int]) -> None:
        """Each publisher's last applied message, in the batch's transaction."""
        if not applied:
            return
        p = self.placeholder
        now = self._when(time.time())
        self._executemany(
            f"INSERT INTO mb_publishers (publisher_id, applied_seq, last_seen) VALUES ({p}, {p}, "
            f"{p}) ON CONFLICT (publisher_id) DO UPDATE SET applied_seq = excluded.applied_seq, "
            "last_seen = excluded.last_seen",
            [(pub, seq, now) for pub, seq in applied.items()],
        )

    def record_maintenance(self, run: dict) -> None:
        """Store what a maintenance run did (one row per run)."""
        self._connect()
        p = self.placeholder
        markers = [self.json_placeholder if c == "deleted" else p for c in MAINTENANCE_COLUMNS]
        import json  # here, as below: readers (the viewer's summary) never load it

        values = {
            **run,
            "started": self._when(run["started"]),
            "finished": self._when(run["finished"]),
            "deleted": json.dumps(run["deleted"]) if run.get("deleted") else None,
        }
        self.conn.execute(
            f"INSERT INTO mb_maintenance ({', '.join(MAINTENANCE_COLUMNS)}) "
            f"VALUES ({', '.join(markers)})",
            [values[c] for c in MAINTENANCE_COLUMNS],
        )

    def maintenance_runs(self, limit: int = 20) -> list[dict]:
        self._connect()
        read = {
            "started": self._epoch("started"),
            "finished": self._epoch("finished"),
            "deleted": self._json_text("deleted"),
        }
        columns = ", ".join(read.get(c, c) for c in MAINTENANCE_COLUMNS)
        cursor = self.conn.execute(
            f"SELECT {columns} FROM mb_maintenance ORDER BY id DESC LIMIT {self.placeholder}",
            (limit,),
        )
        runs = [dict(zip(MAINTENANCE_COLUMNS, row, strict=True)) for row in cursor]
        import json

        for run in runs:
            run["deleted"] = json.loads(run["deleted"]) if run["deleted"] else None
        return runs

    def last_run(self, job: str) -> float:
        """When ``job`` last ran to the end (or when scheduled maintenance began)."""
        self._connect()
        row = self.conn.execute(
            f"SELECT {self._epoch('max(started)')} FROM mb_maintenance "
            f"WHERE job = {self.placeholder} AND status = 'ok'",
            (job,),
        ).fetchone()
        if row[0] is not None:
            return row[0]
        since = self.conn.execute(
            "SELECT value FROM mb_meta WHERE key = 'maintenance_since'"
        ).fetchone()
        return float(since[0]) if since else time.time()

    # -- end_session without figures: the rule both stores share ------------------------
    def _sessions_touched_by(self, metrics: list) -> set[str]:
        """Ended sessions whose computed statistics a late-arriving metric changes."""
        return session_ids(self._ask_sessions_touched_by(metrics))

    def _ask_sessions_touched_by(self, metrics: list):
        """Send _sessions_touched_by's query and return its cursor unread (PostgreSQL
        sends it in a pipeline with the batch's other reads), or None: no metric can
        touch a session."""
        from ..wire import ROW_TIMESTAMP, MetricRow  # the writer's side: wire is loaded

        # Picked in C, a column at a time: no Python step per row.
        names = map(itemgetter(MetricRow.METRIC_NAME), metrics)
        stamps = list(
            compress(
                map(itemgetter(ROW_TIMESTAMP), metrics),
                map(_SESSION_METRIC_SET.__contains__, names),
            )
        )
        if not stamps:
            return None
        p = self.placeholder
        return self.conn.execute(
            f"SELECT session_id FROM sessions WHERE stats_auto != 0 AND end_time >= {p} "
            f"AND start_time <= {p}",
            (self._when(min(stamps)), self._when(max(stamps))),
        )

    def _fill_session_statistics(self, session_id: str) -> None:
        """Fill the figures end_session left out from the session's window of metrics."""
        p = self.placeholder
        row = self.conn.execute(
            f"SELECT start_time, end_time, stats_auto FROM sessions WHERE session_id = {p}",
            (session_id,),
        ).fetchone()
        if row is None or row[1] is None or not row[2]:
            return
        start, end, auto = row
        avg, mx, mn = self.conn.execute(
            "SELECT avg(metric_value), max(metric_value), min(metric_value) FROM metrics "
            f"WHERE metric_name = 'current' AND timestamp BETWEEN {p} AND {p}",
            (start, end),
        ).fetchone()
        energy = self._energy_wh(start, end)
        self.conn.execute(
            "UPDATE sessions SET "
            f"total_energy = CASE WHEN {p} & 1 = 1 THEN {p} ELSE total_energy END, "
            f"avg_current = CASE WHEN {p} & 2 = 2 THEN {p} ELSE avg_current END, "
            f"max_current = CASE WHEN {p} & 4 = 4 THEN {p} ELSE max_current END, "
            f"min_current = CASE WHEN {p} & 8 = 8 THEN {p} ELSE min_current END "
            f"WHERE session_id = {p}",
            (auto, energy, auto, avg, auto, mx, auto, mn, session_id),
        )

    def _integral(self, metric_name: str, start, end) -> float | None:
        """Trapezoidal integral of a metric over [start, end] (value x seconds); None
        under two points."""
        raise NotImplementedError

    def _mean(self, metric_name: str, start, end) -> float | None:
        p = self.placeholder
        return self.conn.execute(
            f"SELECT avg(metric_value) FROM metrics WHERE metric_name = {p} "
            f"AND timestamp BETWEEN {p} AND {p}",
            (metric_name, start, end),
        ).fetchone()[0]

    def _energy_wh(self, start, end) -> float | None:
        """Energy from 'power' metrics (W), else from 'current' (A) times mean 'voltage' (V)."""
        watt_seconds = self._integral("power", start, end)
        if watt_seconds is not None:
            return watt_seconds / 3600.0
        amp_seconds = self._integral("current", start, end)
        volts = self._mean("voltage", start, end)
        if amp_seconds is None or volts is None:
            return None
        return amp_seconds * volts / 3600.0


def statistics_to_compute(energy, avg, mx, mn) -> int:
    """The stats_auto bits of an end_session: which figures the caller left out."""
    return (
        (AUTO_ENERGY if energy is None else 0)
        | (AUTO_AVG if avg is None else 0)
        | (AUTO_MAX if mx is None else 0)
        | (AUTO_MIN if mn is None else 0)
    )


# While a batch's metrics fall into at most this many (name, slice) keys, each key's
# n/total/min/max is one pass in C over its values; past it, one loop over the rows.
METRIC_KEYS_BY_PASS = 8


def metric_aggregates(metrics: list, seconds: int, name_at: int, time_at: int, value_at: int):
    """(metric name, slice number) -> [n, total, min, max] of ``metrics`` (rows holding
    name, epoch time and value at these places) in slices of ``seconds``: what a batch
    adds to a rollup. Totals are summed in the rows' order, as a running total would."""
    names = list(map(itemgetter(name_at), metrics))
    times = list(map(itemgetter(time_at), metrics))
    values = list(map(itemgetter(value_at), metrics))
    only = _one_slice(times, seconds)
    if only is not None:  # every row in one slice: a row's key is its name alone
        keys: list = names

        def key_of(key) -> tuple[str, int]:
            return (key, int(only))
    else:
        keys = list(zip(names, map(floordiv, times, repeat(seconds)), strict=True))

        def key_of(key) -> tuple[str, int]:
            return (key[0], int(key[1]))

    counted = Counter(keys)
    if len(counted) <= METRIC_KEYS_BY_PASS:  # a batch's rows fall into a few minutes
        out: dict[tuple[str, int], list] = {}
        for key, n in counted.items():
            picked = values if n == len(values) else list(compress(values, map(key.__eq__, keys)))
            out[key_of(key)] = [n, sum(picked), min(picked), max(picked)]
        return out
    buckets: dict = {}
    for key, value in zip(keys, values, strict=True):
        agg = buckets.get(key)
        if agg is None:
            buckets[key] = [1, value, value, value]
        else:
            agg[0] += 1
            agg[1] += value
            if value < agg[2]:
                agg[2] = value
            if value > agg[3]:
                agg[3] = value
    return {key_of(key): agg for key, agg in buckets.items()}


def coarser(aggregates: dict, factor: int) -> dict:
    """metric_aggregates' slices merged ``factor`` at a time (minutes into 10 minutes)."""
    out: dict[tuple[str, int], list] = {}
    for (name, number), (n, total, low, high) in aggregates.items():
        key = (name, number // factor)
        agg = out.get(key)
        if agg is None:
            out[key] = [n, total, low, high]
        else:
            agg[0] += n
            agg[1] += total
            agg[2] = min(agg[2], low)
            agg[3] = max(agg[3], high)
    return out


def rollup_tier(since: float, until: float, width: float, tiers) -> int | None:
    """The coarsest rollup slice (seconds, one of ``tiers``) that buckets of ``width`` on a
    grid starting at ``since`` are made of, whole; None when none is."""
    for seconds in sorted(tiers, reverse=True):
        if since % seconds == 0 and until % seconds == 0 and width % seconds == 0:
            return seconds
    return None


class Where:
    """A parameterized WHERE clause from optional filters (a None value is no filter)."""

    def __init__(self):
        self.clauses: list[str] = []
        self.params: list = []

    def add(self, clause: str, value) -> None:
        if value is not None:
            self.clauses.append(clause)
            self.params.append(value)

    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


# The largest LIMIT both engines bind (a signed 64-bit integer).
_MAX_LIMIT = (1 << 63) - 1


def row_limit(limit) -> int | None:
    """A ``limit`` argument as a LIMIT to bind: None (no limit) for None, a negative number
    (SQLite's own meaning, which the seed relied on) or one too large to bind."""
    if limit is None or limit < 0 or limit > _MAX_LIMIT:
        return None
    return int(limit)


def dashboard_summary(
    total_events: int,
    total_anomalies: int,
    total_sessions: int,
    events_last_hour: int,
    anomalies_last_hour: int,
    anomalies_by_severity: dict[str, int],
    active_sessions: int,
) -> dict:
    """get_dashboard_summary's dict in the seed's shape: its keys in its order, severities
    in the order of the seed's GROUP BY (by name), the time as ``datetime.now().isoformat()``."""
    return {
        "total_events": total_events,
        "total_anomalies": total_anomalies,
        "total_sessions": total_sessions,
        "events_last_hour": events_last_hour,
        "anomalies_last_hour": anomalies_last_hour,
        "anomalies_by_severity": dict(sorted(anomalies_by_severity.items())),
        "active_sessions": active_sessions,
        "timestamp": dt.datetime.now().isoformat(),
    }


class SqlReader(Reader):
    """The read queries the two stores share, written once; each store gives its
    connection, its parameter marker, how a time and a row are written in its SQL, and the
    queries where it differs (summary, buckets, and on SQLite the rollups)."""

    #: The driver's parameter marker.
    placeholder = "?"
    #: How many rows a limited query reads at once rather than streaming.
    FETCH_ALL_UP_TO = 10_000

    _local: threading.local  # one connection per thread, in ``conn``

    def _conn(self):
        """This thread's connection (opened on first use)."""
        raise NotImplementedError

    def check(self) -> Reader:
        self._conn()
        return self

    def _when(self, epoch_seconds):
        """A time as this store's query parameter."""
        return epoch_seconds

    def _select(self, table: str) -> str:
        """The table's seed columns as this store's SQL returns them in the seed's shape."""
        return TABLE_COLUMNS[table]

    def _all(self, sql: str, params=()) -> list[dict]:
        return self._conn().execute(sql, params).fetchall()

    def tuples(self, sql: str, params=()) -> list[tuple]:
        """A query's rows as plain tuples, no dict per row: for readers of many rows
        (detection reads committed rows this way)."""
        cur = self._conn().cursor()
        cur.row_factory = None
        return cur.execute(sql, params).fetchall()

    def _one(self, sql: str, params=()) -> dict | None:
        return self._conn().execute(sql, params).fetchone()

    def _aggregate(self, sql: str, params=()) -> dict:
        """The one row an aggregate query (count, sum...) always returns."""
        return self._conn().execute(sql, params).fetchone()

    def _stream(self, sql: str, params) -> Iterator[dict]:
        """Rows of a query without holding them all in memory."""
        yield from self._conn().execute(sql, params)

    def _timeline(self, table: str, filters, limit=None, newest_first=True) -> Iterator[dict]:
        """Rows of events, anomalies or metrics matching ``filters`` ((clause, value); a
        None value is no filter), in time order, streamed."""
        w = Where()
        for clause, value in filters:
            w.add(clause, value)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT {self._select(table)} FROM {table}{w.sql()} "
        sql += f"ORDER BY {table}.timestamp {order}"
        params = w.params
        limit = row_limit(limit)
        if limit is not None:
            sql, params = f"{sql} LIMIT {self.placeholder}", [*params, limit]
            if limit <= self.FETCH_ALL_UP_TO:
                yield from self._all(sql, params)
                return
        yield from self._stream(sql, params)

    def get_events(self, event_type=None, component=None, since=None, limit=100, until=None):
        return list(self.iter_events(limit, since, until, event_type, component))

    def get_anomalies(self, anomaly_type=None, severity=None, since=None, limit=100, until=None):
        return list(self.iter_anomalies(limit, since, until, anomaly_type, severity))

    def get_metrics(self, metric_name=None, since=None, limit=1000, until=None) -> list[dict]:
        return list(self.iter_metrics(limit, since, until, metric_name))

    def iter_metrics(
        self, limit=None, since=None, until=None, metric_name=None, newest_first=True
    ) -> Iterator[dict]:
        """Metrics with filters, streamed."""
        p = self.placeholder
        filters = [
            (f"metric_name = {p}", metric_name),
            (f"timestamp >= {p}", self._when(since)),
            (f"timestamp < {p}", self._when(until)),
        ]
        return self._timeline("metrics", filters, limit, newest_first)

    def iter_events(
        self, limit=None, since=None, until=None, event_type=None, component=None, newest_first=True
    ) -> Iterator[dict]:
        """Events with filters, streamed (never all in memory)."""
        p = self.placeholder
        filters = [
            (f"event_type = {p}", event_type),
            (f"component = {p}", component),
            (f"timestamp >= {p}", self._when(since)),
            (f"timestamp < {p}", self._when(until)),
        ]
        return self._timeline("events", filters, limit, newest_first)

    def iter_anomalies(
        self,
        limit=None,
        since=None,
        until=None,
        anomaly_type=None,
        severity=None,
        newest_first=True,
    ) -> Iterator[dict]:
        p = self.placeholder
        filters = [
            (f"anomaly_type = {p}", anomaly_type),
            (f"severity = {p}", severity),
            (f"timestamp >= {p}", self._when(since)),
            (f"timestamp < {p}", self._when(until)),
        ]
        return self._timeline("anomalies", filters, limit, newest_first)

    def get_anomaly_count(self, anomaly_type=None, severity=None, since=None) -> int:
        p = self.placeholder
        w = Where()
        w.add(f"anomaly_type = {p}", anomaly_type)
        w.add(f"severity = {p}", severity)
        w.add(f"timestamp >= {p}", self._when(since))
        return self._aggregate(f"SELECT count(*) AS n FROM anomalies{w.sql()}", w.params)["n"]

    def get_session(self, session_id: str) -> dict | None:
        return self._one(
            f"SELECT {self._select('sessions')} FROM sessions "
            f"WHERE session_id = {self.placeholder}",
            (session_id,),
        )

    def get_recent_sessions(self, limit=10) -> list[dict]:
        sql = f"SELECT {self._select('sessions')} FROM sessions ORDER BY sessions.start_time DESC"
        limit = row_limit(limit)
        if limit is None:
            return self._all(sql)
        return self._all(f"{sql} LIMIT {self.placeholder}", (limit,))

    def get_metric_statistics(self, metric_name, since=None, until=None) -> dict:
        """{'min', 'max', 'avg', 'count'} of a metric in a time window."""
        p = self.placeholder
        w = Where()
        w.add(f"metric_name = {p}", metric_name)
        w.add(f"timestamp >= {p}", self._when(since))
        w.add(f"timestamp < {p}", self._when(until))
        return self._aggregate(
            "SELECT min(metric_value) AS min, max(metric_value) AS max, "
            f"avg(metric_value) AS avg, count(*) AS count FROM metrics{w.sql()}",
            w.params,
        )

    def get_patterns(self, pattern_type=None, min_frequency=1) -> list[dict]:
        p = self.placeholder
        w = Where()
        w.add(f"pattern_type = {p}", pattern_type)
        w.add(f"frequency >= {p}", min_frequency)
        return self._all(
            f"SELECT {self._select('patterns')} FROM patterns{w.sql()} "
            "ORDER BY frequency DESC, patterns.last_seen DESC",
            w.params,
        )

    def iter_table(
        self, table: str, since=None, until=None, newest_first: bool = False
    ) -> Iterator[dict]:
        """Every row of a table in time order, streamed (exports)."""
        if table not in TABLE_COLUMNS:
            raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLE_COLUMNS)}")
        column = f"{table}.{TIME_COLUMN[table]}"
        w = Where()
        w.add(f"{column} >= {self.placeholder}", self._when(since))
        w.add(f"{column} < {self.placeholder}", self._when(until))
        order = "DESC" if newest_first else "ASC"
        yield from self._stream(
            f"SELECT {self._select(table)} FROM {table}{w.sql()} ORDER BY {column} {order}",
            w.params,
        )

    def metric_names(self) -> list[str]:
        """The names of the recorded metrics, sorted: one index probe per name (a loose
        index scan), not a pass over every row."""
        rows = self._all(
            "WITH RECURSIVE names(name) AS ("
            " (SELECT metric_name FROM metrics ORDER BY metric_name LIMIT 1)"
            " UNION ALL SELECT (SELECT metric_name FROM metrics WHERE metric_name > names.name"
            " ORDER BY metric_name LIMIT 1) FROM names WHERE names.name IS NOT NULL)"
            " SELECT name FROM names WHERE name IS NOT NULL"
        )
        return [r["name"] for r in rows]

    def count(self, table: str, since=None, until=None) -> int:
        if table not in TABLE_COLUMNS:
            raise ValueError(f"unknown table {table!r}")
        w = Where()
        w.add(f"{TIME_COLUMN[table]} >= {self.placeholder}", self._when(since))
        w.add(f"{TIME_COLUMN[table]} < {self.placeholder}", self._when(until))
        return self._aggregate(f"SELECT count(*) AS n FROM {table}{w.sql()}", w.params)["n"]

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
