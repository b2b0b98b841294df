"""The PostgreSQL store, read side: the seed's queries, the seed's return shapes.

Times come back as epoch seconds and ``created_at`` as 'YYYY-MM-DD HH:MM:SS' (UTC), as the
SQLite store returns them; jsonb columns come back decoded. Time filters prune to the day
partitions they touch. One connection per thread, opened on first use.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator

from .base import TABLE_RECHECK_SECONDS
from .bounded import BoundedReads
from .postgresql_connection import connect, to_datetime
from .postgresql_schema import ROLLUP_SECONDS
from .schema import COARSE_SECONDS
from .sql import TABLE_COLUMNS, dashboard_summary, rollup_tier

try:
    from psycopg.rows import dict_row
except ImportError:  # connect() raises the ImportError that names the extra to install
    dict_row = None  # type: ignore[assignment]

# The columns as SQLite returns them, as SQL over the PostgreSQL types.
_TIME_COLUMNS = ("timestamp", "start_time", "end_time", "last_seen")
_TEXT_TIME_COLUMNS = ("created_at", "updated_at")


def _select_list(table: str) -> str:
    out = []
    for name in (c.strip() for c in TABLE_COLUMNS[table].split(",")):
        if name in _TIME_COLUMNS:
            out.append(f"extract(epoch FROM {name})::float8 AS {name}")
        elif name in _TEXT_TIME_COLUMNS:
            out.append(f"to_char({name} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS {name}")
        else:
            out.append(name)
    return ", ".join(out)


SELECT = {table: _select_list(table) for table in TABLE_COLUMNS}
_cursor_numbers = itertools.count(1)
_NAMED = re.compile(r"(?<![:\w]):([a-z_]+)")  # :name, not a ::cast


class PostgresReader(BoundedReads):
    """Read queries with the seed's arguments and return shapes."""

    placeholder = "%s"

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()
        self._conn()  # fail now (clearly) when psycopg is missing or the server is down

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = connect(self.url, row_factory=dict_row, application_name="memorybank-reader")
            self._local.conn = conn
        return conn

    def _when(self, epoch_seconds):
        return to_datetime(epoch_seconds)

    def tuples(self, sql: str, params=()) -> list[tuple]:
        from psycopg.rows import tuple_row

        with self._conn().cursor(row_factory=tuple_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall()  # autocommit: each query sees the newest commits

    def _select(self, table: str) -> str:
        return SELECT[table]

    def _epoch_as_time(self, sql: str) -> str:
        return f"to_timestamp({sql})"

    def _slices_after(self, time_sql: str, start_sql: str) -> str:
        # greatest(): a time just after a microsecond-rounded start may read just before it
        return f"greatest(floor((extract(epoch FROM {time_sql}) - ({start_sql})) / :width), 0)::int"

    def _named(self, sql: str) -> str:
        return _NAMED.sub(r"%(\1)s", sql)

    def _stream(self, sql: str, params) -> Iterator[dict]:
        """Rows through a server-side cursor: millions never sit in memory at once."""
        conn = self._conn()
        name = f"mb_stream_{next(_cursor_numbers)}"
        with conn.transaction(), conn.cursor(name=name) as cur:
            cur.itersize = 2000
            cur.execute(sql, params)
            yield from cur

    def get_dashboard_summary(self) -> dict:
        """The seed's summary: totals from the writers' per-day counts (a few rows, not
        millions), the last hour from the one or two day partitions it touches."""
        hour_ago = to_datetime(time.time() - 3600)
        totals = {
            r["name"]: r["n"]
            for r in self._all("SELECT name, sum(n)::bigint AS n FROM mb_day_counts GROUP BY name")
        }
        counts = self._aggregate(
            "SELECT (SELECT count(*) FROM sessions) AS total_sessions, "
            "(SELECT count(*) FROM events WHERE timestamp >= %(h)s) AS events_last_hour, "
            "(SELECT count(*) FROM anomalies WHERE timestamp >= %(h)s) AS anomalies_last_hour, "
            "(SELECT count(*) FROM sessions WHERE status = 'ACTIVE') AS active_sessions",
            {"h": hour_ago},
        )
        return dashboard_summary(
            totals.get("events", 0),
            totals.get("anomalies", 0),
            counts["total_sessions"],
            counts["events_last_hour"],
            counts["anomalies_last_hour"],
            {
                name.split(":", 1)[1]: n
                for name, n in totals.items()
                if name.startswith("anomalies:") and n > 0
            },
            counts["active_sessions"],
        )

    def rollup_seconds(self) -> tuple[int, ...]:
        """mb_metric_rollups' slices, once a daemon of this version has made the table (not
        found, asked again after TABLE_RECHECK_SECONDS, as the SQLite reader does)."""
        conn = self._conn()
        if getattr(self._local, "rollups_checked", None) is not conn or (
            not self._local.rollups and time.monotonic() >= self._local.recheck_at
        ):
            self._local.rollups = self._aggregate(
                "SELECT to_regclass('mb_metric_rollups') IS NOT NULL AS here"
            )["here"]
            self._local.rollups_checked = conn
            self._local.recheck_at = time.monotonic() + TABLE_RECHECK_SECONDS
        return ROLLUP_SECONDS if self._local.rollups else ()

    def estimate_metric_rows(self, metric_name: str, since: float, until: float) -> int | None:
        """The metric's rows in the 10-minute slices the window touches (its own rows
        only: its window is read through the (name, time) index)."""
        if not self.rollup_seconds():
            return None
        return self._aggregate(
            "SELECT coalesce(sum(n), 0)::bigint AS n FROM mb_metric_rollups "
            "WHERE metric_name = %s AND seconds = %s AND start >= %s AND start < %s",
            (metric_name, COARSE_SECONDS, since // COARSE_SECONDS * COARSE_SECONDS, until),
        )["n"]

    def metric_buckets(self, metric_name: str, since: float, until: float, buckets: int):
        """Buckets made of whole rollup slices come from mb_metric_rollups (their
        ``first_t`` is the start of their first slice with data), others from the rows."""
        width = max((until - since) / max(buckets, 1), 1e-6)
        params = {"since": since, "width": width, "name": metric_name, "until": until}
        tier = rollup_tier(since, until, width, self.rollup_seconds())
        if tier is not None:
            return self._all(
                "SELECT floor((start - %(since)s) / %(width)s)::int AS bucket,"
                " sum(total) / sum(n) AS avg, min(min) AS min, max(max) AS max,"
                " min(start)::float8 AS first_t, sum(n)::bigint AS n FROM mb_metric_rollups"
                " WHERE metric_name = %(name)s AND seconds = %(tier)s AND start >= %(since)s"
                " AND start < %(until)s GROUP BY bucket ORDER BY bucket",
                {**params, "tier": tier},
            )
        return self._all(
            "SELECT floor((extract(epoch FROM timestamp) - %(since)s) / %(width)s)::int AS bucket,"
            " avg(metric_value) AS avg, min(metric_value) AS min, max(metric_value) AS max,"
            " extract(epoch FROM min(timestamp))::float8 AS first_t, count(*) AS n"
            " FROM metrics WHERE metric_name = %(name)s AND timestamp >= %(lo)s"
            " AND timestamp < %(hi)s GROUP BY bucket ORDER BY bucket",
            {**params, "lo": to_datetime(since), "hi": to_datetime(until)},
        )
