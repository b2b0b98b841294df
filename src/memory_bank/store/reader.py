"""The SQLite store, read side: the seed's queries over read-only connections.

WAL readers never block the writer, and a read-only connection cannot take the write lock
by mistake. One connection per thread, opened on first use.
"""

from __future__ import annotations

import os
import sqlite3
import time

from ..jsontext import loads
from .base import TABLE_RECHECK_SECONDS, InvalidDatabase
from .bounded import BoundedReads
from .schema import COARSE_SECONDS, SEED_TABLES, damaged_database, read_only_uri
from .sql import (
    JSON_COLUMNS,
    TABLE_COLUMNS,
    Where,
    dashboard_summary,
    rollup_tier,
)

try:  # threading.local, from where threading takes it: the rest of threading, which the
    # reader never uses, is a twentieth of `memory-viewer --summary`'s start-up
    from _thread import _local as thread_local
except ImportError:  # (an interpreter without it)
    from threading import local as thread_local


def _row_dict(cursor: sqlite3.Cursor, row: tuple) -> dict:
    out = {}
    for (name, *_), value in zip(cursor.description, row, strict=True):
        if name in JSON_COLUMNS and isinstance(value, str):
            try:
                value = loads(value)
            except ValueError:
                pass
        out[name] = value
    return out


# metric_buckets' columns, in its queries' order.
BUCKET_KEYS = ("bucket", "avg", "min", "max", "first_t", "n")


class SqliteReader(BoundedReads):
    """Read queries with the seed's arguments and return shapes."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self._local = thread_local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and (
            not getattr(self._local, "placeholder", False) or not os.path.exists(self.path)
        ):
            return conn
        if conn is not None:
            conn.close()
        conn = self._open() if os.path.exists(self.path) else None
        self._local.placeholder = conn is None
        if conn is None:
            # No database yet (no daemon has run, or its schema is not made yet): answer
            # from an empty schema, create nothing, and look again at the next query.
            conn = sqlite3.connect(":memory:")
            conn.executescript(SEED_TABLES)
        conn.row_factory = _row_dict
        self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection | None:
        """A read-only connection to the file, once it is seen to hold MemoryBank's tables;
        None while it holds no table at all. Anything else is an InvalidDatabase."""
        try:
            conn = sqlite3.connect(read_only_uri(self.path), uri=True)
            conn.execute("PRAGMA query_only=1")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            if (exc.sqlite_errorname or "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                raise  # a writer holds it for now (a migration at start): not the file's fault
            raise InvalidDatabase(
                damaged_database(self.path, exc)
                or f"{self.path} is not a MemoryBank database: SQLite says {exc}"
            ) from None
        missing = [t for t in TABLE_COLUMNS if t not in tables]
        if missing and tables:
            conn.close()
            raise InvalidDatabase(
                f"{self.path} is not a MemoryBank database: it has no "
                f"{', '.join(missing)} table{'s' if len(missing) > 1 else ''}"
            )
        if missing:
            conn.close()
            return None
        return conn

    # -- where the writer's rollups answer faster than the shared queries -------------
    def get_anomaly_count(self, anomaly_type=None, severity=None, since=None) -> int:
        if self._has_rollups() and anomaly_type is None and since is None:
            name = "anomalies" if severity is None else f"anomalies:{severity}"
            row = self._one("SELECT n FROM mb_counts WHERE name = ?", (name,))
            return row["n"] if row else 0
        return super().get_anomaly_count(anomaly_type, severity, since)

    def _has_table(self, name: str) -> bool:
        """Whether the database has the table: once found, found for the connection's life;
        not found, asked again after TABLE_RECHECK_SECONDS (a daemon may upgrade the
        database under a reader that stays open, such as the dashboard's)."""
        conn = self._conn()
        if getattr(self._local, "tables_of", None) is not conn:
            self._local.tables, self._local.tables_of = {}, conn
        found = self._local.tables.get(name)
        if found is True or (found is not None and time.monotonic() < found):
            return found is True
        here = bool(conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone())
        self._local.tables[name] = True if here else time.monotonic() + TABLE_RECHECK_SECONDS
        return here

    def _has_rollups(self) -> bool:
        return self._has_table("mb_metric_minutes")

    def get_metric_statistics(self, metric_name, since=None, until=None) -> dict:
        """{'min', 'max', 'avg', 'count'}: whole minutes from the rollup, the partial minutes
        at either end exactly from the table."""
        if self._has_rollups() and metric_name is not None:
            return self._metric_statistics_rolled([metric_name], since, until)[0][metric_name]
        return super().get_metric_statistics(metric_name, since, until)

    def metric_statistics(
        self, names, since: float, until: float, scan_budget: int | None = None
    ) -> tuple[dict[str, dict], float, float]:
        if self._has_rollups():
            return self._metric_statistics_rolled(names, since, until, scan_budget)
        return super().metric_statistics(names, since, until)

    def _metric_statistics_rolled(self, names, since, until, scan_budget=None):
        """Whole minutes from the rollup, the partial minutes at either end from the table:
        one query each, for every name at once. An end whose partial minute would pass more
        than ``scan_budget`` rows (the time index passes every metric's) is left out when
        whole minutes remain: the figures then cover the window shrunk to whole minutes at
        that end, which is returned with them."""
        conn = self._conn()
        first_full = None if since is None else -(-since // 60)  # ceil to a whole minute
        last_full = None if until is None else until // 60  # exclusive
        marks = ", ".join("?" * len(names))
        w = Where()
        w.add("minute >= ?", first_full)
        w.add("minute < ?", last_full)
        w.clauses.insert(0, f"metric_name IN ({marks})")
        parts = conn.execute(
            "SELECT metric_name, sum(n) AS n, sum(total) AS t, min(min) AS lo, max(max) AS hi "
            f"FROM mb_metric_minutes{w.sql()} GROUP BY metric_name",
            [*names, *w.params],
        ).fetchall()
        whole_minutes = first_full is None or last_full is None or last_full > first_full
        covered = [since, until]
        edges = []
        if since is not None:
            edges.append(
                (0, since, first_full * 60 if until is None else min(first_full * 60, until))
            )
        if until is not None and (since is None or last_full * 60 >= since):
            edges.append((1, max(last_full * 60, since or last_full * 60), until))
        for end, lo, hi in edges:
            if hi <= lo:
                continue
            if scan_budget is not None and whole_minutes and self._rows_near(lo, hi) > scan_budget:
                covered[end] = first_full * 60 if end == 0 else last_full * 60
                continue
            parts += conn.execute(
                "SELECT metric_name, count(*) AS n, total(metric_value) AS t, "
                "min(metric_value) AS lo, max(metric_value) AS hi FROM metrics "
                f"WHERE metric_name IN ({marks}) AND timestamp >= ? AND timestamp < ? "
                "GROUP BY metric_name",
                [*names, lo, hi],
            ).fetchall()
        stats = {}
        for name in names:
            mine = [p for p in parts if p["metric_name"] == name and p["n"]]
            n = sum(p["n"] for p in mine)
            if not n:
                stats[name] = {"min": None, "max": None, "avg": None, "count": 0}
                continue
            stats[name] = {
                "min": min(p["lo"] for p in mine),
                "max": max(p["hi"] for p in mine),
                "avg": sum(p["t"] or 0.0 for p in mine) / n,
                "count": n,
            }
        return stats, covered[0], covered[1]

    def _rows_near(self, lo: float, hi: float) -> float:
        """About how many metric rows (of every name) lie in [lo, hi), a part of one minute:
        its share of that minute's rows in the rollup."""
        return self._rolled_rows(lo // 60, lo // 60) * (hi - lo) / 60

    def _rolled_rows(self, first_minute: float, last_minute: float) -> int:
        """Metric rows of every name in minutes first_minute..last_minute, from the rollup
        (one key range per name)."""
        names = self.metric_names()
        return self._aggregate(
            "SELECT coalesce(sum(n), 0) AS n FROM mb_metric_minutes "
            f"WHERE metric_name IN ({', '.join('?' * len(names))}) AND minute >= ? AND minute <= ?",
            [*names, first_minute, last_minute],
        )["n"]

    def _count_since(self, table: str, since: float) -> int:
        """Rows of ``table`` at or after ``since``: whole minutes from mb_minutes, the first
        partial minute exactly."""
        conn = self._conn()
        first_full = -(-since // 60)
        whole = conn.execute(
            "SELECT coalesce(sum(n), 0) AS n FROM mb_minutes WHERE tbl = ? AND minute >= ?",
            (table, first_full),
        ).fetchone()["n"]
        edge = conn.execute(
            f"SELECT count(*) AS n FROM {table} WHERE timestamp >= ? AND timestamp < ?",
            (since, first_full * 60),
        ).fetchone()["n"]
        return whole + edge

    # -- patterns ---------------------------------------------------------------------
    # -- analytics --------------------------------------------------------------------
    def get_dashboard_summary(self) -> dict:
        """The seed's summary, from the writer's counters (no scan of millions of rows)."""
        hour_ago = time.time() - 3600
        conn = self._conn()

        def scalar(sql, params=()):
            return next(iter(conn.execute(sql, params).fetchone().values()))

        if self._has_rollups():
            counts = {r["name"]: r["n"] for r in conn.execute("SELECT name, n FROM mb_counts")}
            by_severity = {
                k.split(":", 1)[1]: n
                for k, n in counts.items()
                if k.startswith("anomalies:") and n > 0
            }
            total_events = counts.get("events", 0)
            total_anomalies = counts.get("anomalies", 0)
            events_last_hour = self._count_since("events", hour_ago)
            anomalies_last_hour = self._count_since("anomalies", hour_ago)
        else:
            by_severity = {
                r["severity"]: r["n"]
                for r in conn.execute(
                    "SELECT severity, count(*) AS n FROM anomalies GROUP BY severity"
                )
            }
            total_events = scalar("SELECT count(*) FROM events")
            total_anomalies = scalar("SELECT count(*) FROM anomalies")
            events_last_hour = scalar(
                "SELECT count(*) FROM events WHERE timestamp >= ?", (hour_ago,)
            )
            anomalies_last_hour = scalar(
                "SELECT count(*) FROM anomalies WHERE timestamp >= ?", (hour_ago,)
            )
        return dashboard_summary(
            total_events,
            total_anomalies,
            scalar("SELECT count(*) FROM sessions"),
            events_last_hour,
            anomalies_last_hour,
            by_severity,
            scalar("SELECT count(*) FROM sessions WHERE status = 'ACTIVE'"),
        )

    def estimate_metric_rows(self, metric_name: str, since: float, until: float) -> int | None:
        """From the per-minute rollup: the rows of every minute the window touches, of every
        name, since a window is read through the time index, which passes them all (a
        sparse metric beside a dense one is as costly to scan as the dense one)."""
        if not self._has_rollups():
            return None
        return self._rolled_rows(since // 60, until // 60)

    def metric_names(self) -> list[str]:
        """From the per-minute rollup's key (metrics has no name index here)."""
        return self._distinct_names("mb_metric_minutes" if self._has_rollups() else "metrics")

    def rollup_seconds(self) -> tuple[int, ...]:
        """Per-minute rollups where the writer keeps them, and 10-minute ones once its
        schema has them (a database not yet opened by a newer daemon lacks them)."""
        if not self._has_rollups():
            return ()
        return (60, COARSE_SECONDS) if self._has_table("mb_metric_rollups") else (60,)

    def metric_buckets(
        self, metric_name: str, since: float, until: float, buckets: int
    ) -> list[dict]:
        """The metric averaged (with min and max) over ``buckets`` equal time slices: what
        a plot needs, computed in SQL so millions of points never leave the database.
        Slices made of whole 10-minute slices or whole minutes on their grid come from the
        rollups (a 7-day chart reads 1,008 rows, not millions); their ``first_t`` is then
        the start of their first 10 minutes (or minute) with data."""
        width = max((until - since) / max(buckets, 1), 1e-6)
        tier = rollup_tier(since, until, width, self.rollup_seconds())
        if tier == 60:
            return self._buckets(
                "SELECT CAST((minute * 60 - ?1) / ?2 AS INTEGER) AS bucket, "
                "sum(total) / sum(n) AS avg, min(min) AS min, max(max) AS max, "
                "min(minute) * 60.0 AS first_t, sum(n) AS n FROM mb_metric_minutes "
                "WHERE metric_name = ?3 AND minute >= ?1 / 60 AND minute < ?4 / 60 "
                "GROUP BY bucket ORDER BY bucket",
                (since, width, metric_name, until),
            )
        if tier is not None:
            return self._buckets(
                "SELECT CAST((start - ?1) / ?2 AS INTEGER) AS bucket, "
                "sum(total) / sum(n) AS avg, min(min) AS min, max(max) AS max, "
                "min(start) * 1.0 AS first_t, sum(n) AS n FROM mb_metric_rollups "
                "WHERE metric_name = ?3 AND seconds = ?5 AND start >= ?1 AND start < ?4 "
                "GROUP BY bucket ORDER BY bucket",
                (since, width, metric_name, until, tier),
            )
        return self._buckets(
            "SELECT CAST((timestamp - ?1) / ?2 AS INTEGER) AS bucket, "
            "avg(metric_value) AS avg, min(metric_value) AS min, max(metric_value) AS max, "
            "min(timestamp) AS first_t, count(*) AS n FROM metrics "
            "WHERE metric_name = ?3 AND timestamp >= ?1 AND timestamp < ?4 "
            "GROUP BY bucket ORDER BY bucket",
            (since, width, metric_name, until),
        )

    def _buckets(self, sql: str, params) -> list[dict]:
        """metric_buckets' rows as dicts made here: the generic row factory, which reads
        the cursor's description for every row, costs three times as much over a
        thousand buckets."""
        return [dict(zip(BUCKET_KEYS, row, strict=True)) for row in self.tuples(sql, params)]
