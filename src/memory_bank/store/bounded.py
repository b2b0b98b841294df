"""Reads whose cost is bounded whatever the database holds, for pages that must answer in
time (the web dashboard): several metrics' statistics in one pass, counts that stop at a
limit, a window's anomalies sampled slice by slice. Shared by both stores' readers (SQL
either runs); the Reader interface declares them."""

from __future__ import annotations

from .sql import TABLE_COLUMNS, TIME_COLUMN, SqlReader, Where


class BoundedReads(SqlReader):
    """The shared SQL reader with the bounded reads both stores' readers inherit."""

    def metric_statistics(
        self, names, since: float, until: float, scan_budget: int | None = None
    ) -> tuple[dict[str, dict], float, float]:
        """get_metric_statistics for several metrics over [since, until) in one query, and
        the window the figures cover: here the whole window, every row read (a store with
        per-minute rollups may leave out dense partial minutes beyond ``scan_budget``)."""
        p = self.placeholder
        rows = self._all(
            "SELECT metric_name, min(metric_value) AS min, max(metric_value) AS max, "
            "avg(metric_value) AS avg, count(*) AS count FROM metrics "
            f"WHERE metric_name IN ({', '.join([p] * len(names))}) "
            f"AND timestamp >= {p} AND timestamp < {p} GROUP BY metric_name",
            [*names, self._when(since), self._when(until)],
        )
        found = {r.pop("metric_name"): r for r in rows}
        empty = {"min": None, "max": None, "avg": None, "count": 0}
        return {name: found.get(name, dict(empty)) for name in names}, since, until

    def count_up_to(self, table: str, since, until, up_to: int) -> int:
        """Rows of ``table`` in the window, counted no further than ``up_to``: 'more than
        N' costs N index entries, not millions."""
        if table not in TABLE_COLUMNS:
            raise ValueError(f"unknown table {table!r}")
        w = Where()
        w.add(f"{TIME_COLUMN[table]} >= {self.placeholder}", self._when(since))
        w.add(f"{TIME_COLUMN[table]} < {self.placeholder}", self._when(until))
        return self._aggregate(
            f"SELECT count(*) AS n FROM (SELECT 1 FROM {table}{w.sql()} "
            f"LIMIT {self.placeholder}) AS counted",
            [*w.params, up_to],
        )["n"]

    def _distinct_names(self, table: str) -> list[str]:
        """The metric_name values of ``table``, sorted: one index probe per name (a loose
        index scan over an index led by metric_name), not a pass over every row."""
        rows = self._all(
            "WITH RECURSIVE names(name) AS ("
            f" SELECT * FROM (SELECT metric_name FROM {table} ORDER BY metric_name LIMIT 1) AS f"
            f" UNION ALL SELECT (SELECT metric_name FROM {table} WHERE metric_name > names.name"
            " ORDER BY metric_name LIMIT 1) FROM names WHERE names.name IS NOT NULL)"
            " SELECT name FROM names WHERE name IS NOT NULL"
        )
        return [r["name"] for r in rows]

    def _epoch_as_time(self, sql: str) -> str:
        """SQL turning an epoch-seconds expression into this store's time column type."""
        return sql

    def _slices_after(self, time_sql: str, start_sql: str) -> str:
        """SQL for how many whole ``:width`` slices lie between ``start_sql`` (epoch seconds)
        and a time column expression at or after it: never negative."""
        return f"CAST(({time_sql} - ({start_sql})) / :width AS INTEGER)"

    def _named(self, sql: str) -> str:
        """SQL written with ``:name`` parameters, in this driver's style."""
        return sql

    def anomaly_slices(self, since: float, until: float, slices: int, up_to: int) -> list[dict]:
        """The window cut into ``slices`` equal slices; for each slice holding anomalies,
        ``{slice, count, anomaly}``: how many it holds (counted up to ``up_to``) and the
        most severe of its newest ``up_to`` (the newest among equals). Each slice costs an
        index range of at most ``up_to`` entries, however many millions the window holds,
        so a week of anomalies is drawn everywhere it has them, not only where the newest
        thousand are. Empty slices cost nothing: the slices holding anomalies are found by
        skipping from one to the next (one index probe each)."""
        width = (until - since) / slices
        lo = self._epoch_as_time(":since + s.i * :width")
        hi = self._epoch_as_time(":since + (s.i + 1) * :width")
        in_slice = f"timestamp >= {lo} AND timestamp < {hi}"

        def first_from(start: str) -> str:  # the next slice holding one, counted from start
            return (
                f"(SELECT {self._slices_after('min(timestamp)', start)} FROM anomalies "
                f"WHERE timestamp >= {self._epoch_as_time(start)} "
                f"AND timestamp < {self._epoch_as_time(':until')})"
            )

        sql = (
            f"WITH RECURSIVE s(i) AS (SELECT {first_from(':since')} UNION ALL "
            f"SELECT s.i + 1 + {first_from(':since + (s.i + 1) * :width')} FROM s "
            "WHERE s.i IS NOT NULL AND s.i < :slices) "
            "SELECT i, "
            f"(SELECT count(*) FROM (SELECT 1 FROM anomalies WHERE {in_slice} LIMIT :up_to) AS c) "
            "AS n, "
            f"(SELECT id FROM (SELECT id, severity, timestamp FROM anomalies WHERE {in_slice} "
            "ORDER BY timestamp DESC LIMIT :up_to) AS newest ORDER BY CASE severity "
            "WHEN 'CRITICAL' THEN 0 WHEN 'HIGH' THEN 1 WHEN 'MEDIUM' THEN 2 ELSE 3 END, "
            "timestamp DESC LIMIT 1) AS shown FROM s WHERE s.i IS NOT NULL AND s.i < :slices"
        )
        params = {"since": since, "until": until, "width": width, "slices": slices, "up_to": up_to}
        found = [r for r in self._all(self._named(sql), params) if r["n"]]
        if not found:
            return []
        p = self.placeholder
        rows = self._all(
            f"SELECT {self._select('anomalies')} FROM anomalies WHERE timestamp >= {p} "
            f"AND timestamp < {p} AND id IN ({', '.join([p] * len(found))})",
            [self._when(since), self._when(until), *(r["shown"] for r in found)],
        )
        by_id = {row["id"]: row for row in rows}
        return [
            {"slice": r["i"], "count": r["n"], "anomaly": by_id[r["shown"]]}
            for r in found
            if r["shown"] in by_id
        ]
