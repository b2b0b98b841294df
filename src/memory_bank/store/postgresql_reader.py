"""The PostgreSQL store, read side: the seed's queries, the seed's return shapes.

Times come back as epoch seconds and ``created_at`` as 'YYYY-MM-DD HH:MM:SS' (UTC), as the
SQLite store returns them; jsonb columns come back decoded. Time filters prune to the day
partitions they touch. One connection per thread, opened on first use.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections.abc import Iterator

from .base import TABLE_COLUMNS, TIME_COLUMN, Reader, Where
from .postgresql import connect

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


def _ts(value):
    return None if value is None else dt.datetime.fromtimestamp(value, tz=dt.UTC)


class PostgresReader(Reader):
    """Read queries with the seed's arguments and return shapes."""

    placeholder = "%s"

    def __init__(self, url: str):
        from psycopg.rows import dict_row

        self.url = url
        self._row_factory = dict_row
        self._local = threading.local()
        self._conn()  # fail now (clearly) when the server cannot be reached

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = connect(
                self.url, row_factory=self._row_factory, application_name="memorybank-reader"
            )
            self._local.conn = conn
        return conn

    def _all(self, sql: str, params=()) -> list[dict]:
        return self._conn().execute(sql, params).fetchall()

    def _one(self, sql: str, params=()) -> dict | None:
        return self._conn().execute(sql, params).fetchone()

    def _when(self, epoch_seconds):
        return _ts(epoch_seconds)

    def _timeline(self, table, filters, limit=None, newest_first=True) -> Iterator[dict]:
        w = Where()
        for clause, value in filters:
            w.add(clause, value)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT {SELECT[table]} FROM {table}{w.sql()} ORDER BY {table}.timestamp {order}"
        params = w.params
        if limit is not None:
            sql, params = sql + " LIMIT %s", [*params, limit]
            if limit <= 10_000:
                yield from self._all(sql, params)
                return
        yield from self._stream(sql, params)

    def _stream(self, sql: str, params) -> Iterator[dict]:
        """Rows through a server-side cursor: millions never sit in memory at once."""
        conn = self._conn()
        name = f"mb_stream_{next(_cursor_numbers)}"
        with conn.transaction(), conn.cursor(name=name) as cur:
            cur.itersize = 2000
            cur.execute(sql, params)
            yield from cur

    def get_anomaly_count(self, anomaly_type=None, severity=None, since=None) -> int:
        w = Where()
        w.add("anomaly_type = %s", anomaly_type)
        w.add("severity = %s", severity)
        w.add("timestamp >= %s", _ts(since))
        return self._one(f"SELECT count(*) AS n FROM anomalies{w.sql()}", w.params)["n"]

    def get_session(self, session_id: str) -> dict | None:
        return self._one(
            f"SELECT {SELECT['sessions']} FROM sessions WHERE session_id = %s", (session_id,)
        )

    def get_recent_sessions(self, limit=10) -> list[dict]:
        return self._all(
            f"SELECT {SELECT['sessions']} FROM sessions ORDER BY sessions.start_time DESC LIMIT %s",
            (limit,),
        )

    def get_metric_statistics(self, metric_name, since=None, until=None) -> dict:
        w = Where()
        w.add("metric_name = %s", metric_name)
        w.add("timestamp >= %s", _ts(since))
        w.add("timestamp < %s", _ts(until))
        return self._one(
            "SELECT min(metric_value) AS min, max(metric_value) AS max, "
            f"avg(metric_value) AS avg, count(*) AS count FROM metrics{w.sql()}",
            w.params,
        )

    def get_patterns(self, pattern_type=None, min_frequency=1) -> list[dict]:
        w = Where()
        w.add("pattern_type = %s", pattern_type)
        w.add("frequency >= %s", min_frequency)
        return self._all(
            f"SELECT {SELECT['patterns']} FROM patterns{w.sql()} "
            "ORDER BY frequency DESC, patterns.last_seen DESC",
            w.params,
        )

    def get_dashboard_summary(self) -> dict:
        """The seed's summary: totals from the writers' per-day counts (a few rows, not
        millions), the last hour from the one or two day partitions it touches."""
        hour_ago = _ts(time.time() - 3600)
        totals = {
            r["name"]: r["n"]
            for r in self._all(
                "SELECT name, sum(n)::bigint AS n FROM mb_day_counts GROUP BY name "
                "ORDER BY n DESC, name"
            )
        }
        counts = self._one(
            "SELECT (SELECT count(*) FROM sessions) AS total_sessions, "
            "(SELECT count(*) FROM events WHERE timestamp >= %(h)s) AS events_last_hour, "
            "(SELECT count(*) FROM anomalies WHERE timestamp >= %(h)s) AS anomalies_last_hour, "
            "(SELECT count(*) FROM sessions WHERE status = 'ACTIVE') AS active_sessions",
            {"h": hour_ago},
        )
        return {
            "total_events": totals.get("events", 0),
            "total_anomalies": totals.get("anomalies", 0),
            "total_sessions": counts["total_sessions"],
            "events_last_hour": counts["events_last_hour"],
            "anomalies_last_hour": counts["anomalies_last_hour"],
            "anomalies_by_severity": {
                name.split(":", 1)[1]: n
                for name, n in totals.items()
                if name.startswith("anomalies:") and n > 0
            },
            "active_sessions": counts["active_sessions"],
            "timestamp": dt.datetime.now().isoformat(timespec="seconds"),
        }

    def iter_table(self, table: str, since=None, until=None) -> Iterator[dict]:
        if table not in TABLE_COLUMNS:
            raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLE_COLUMNS)}")
        column = f"{table}.{TIME_COLUMN[table]}"
        w = Where()
        w.add(f"{column} >= %s", _ts(since))
        w.add(f"{column} < %s", _ts(until))
        yield from self._stream(
            f"SELECT {SELECT[table]} FROM {table}{w.sql()} ORDER BY {column}", w.params
        )

    def metric_buckets(self, metric_name: str, since: float, until: float, buckets: int):
        width = max((until - since) / max(buckets, 1), 1e-6)
        return self._all(
            "SELECT floor((extract(epoch FROM timestamp) - %(since)s) / %(width)s)::int AS bucket,"
            " avg(metric_value) AS avg, min(metric_value) AS min, max(metric_value) AS max,"
            " extract(epoch FROM min(timestamp))::float8 AS first_t, count(*) AS n"
            " FROM metrics WHERE metric_name = %(name)s AND timestamp >= %(lo)s"
            " AND timestamp < %(hi)s GROUP BY bucket ORDER BY bucket",
            {
                "since": since,
                "width": width,
                "name": metric_name,
                "lo": _ts(since),
                "hi": _ts(until),
            },
        )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
