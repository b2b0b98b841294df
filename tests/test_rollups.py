"""The writer's counters and per-minute rollups agree with the tables, always."""

from __future__ import annotations

import random
import sqlite3
import time

from click.testing import CliRunner

from memory_bank import MemoryBank, Publisher
from memory_bank.cli import main


def _exact(db, since=None, until=None, metric="current"):
    conn = sqlite3.connect(db)
    where, params = ["metric_name = ?"], [metric]
    if since is not None:
        where.append("timestamp >= ?")
        params.append(since)
    if until is not None:
        where.append("timestamp < ?")
        params.append(until)
    n, total, lo, hi = conn.execute(
        f"SELECT count(*), total(metric_value), min(metric_value), max(metric_value) "
        f"FROM metrics WHERE {' AND '.join(where)}",
        params,
    ).fetchone()
    hour_ago = time.time() - 3600
    summary = {
        "total_events": conn.execute("SELECT count(*) FROM events").fetchone()[0],
        "total_anomalies": conn.execute("SELECT count(*) FROM anomalies").fetchone()[0],
        "events_last_hour": conn.execute(
            "SELECT count(*) FROM events WHERE timestamp >= ?", (hour_ago,)
        ).fetchone()[0],
        "anomalies_by_severity": dict(
            conn.execute("SELECT severity, count(*) FROM anomalies GROUP BY severity")
        ),
    }
    conn.close()
    return {"count": n, "avg": total / n if n else None, "min": lo, "max": hi}, summary


def _check(memory, db, windows):
    asked = time.time()
    summary = memory.get_dashboard_summary()
    for since, until in windows:
        stats = memory._reader.get_metric_statistics("current", since, until)
        exact, exact_summary = _exact(db, since, until)
        assert stats["count"] == exact["count"], (since, until)
        assert (stats["min"], stats["max"]) == (exact["min"], exact["max"])
        if exact["count"]:
            assert abs(stats["avg"] - exact["avg"]) < 1e-9
    for key in ("total_events", "total_anomalies"):
        assert summary[key] == exact_summary[key], key
    # The summary's last hour ends at its own reading of the clock, between `asked` and the
    # exact count's (taken after it): an event may cross the hour's edge in between.
    conn = sqlite3.connect(db)
    at_asked = conn.execute(
        "SELECT count(*) FROM events WHERE timestamp >= ?", (asked - 3600,)
    ).fetchone()[0]
    conn.close()
    assert exact_summary["events_last_hour"] <= summary["events_last_hour"] <= at_asked
    assert summary["anomalies_by_severity"] == exact_summary["anomalies_by_severity"]


def test_rollups_match_the_tables_through_ingest_and_retention(db_path, daemon):
    rng = random.Random(3)
    now = time.time()
    pub = Publisher(db_path)
    for _ in range(6000):
        t = now - rng.uniform(0, 3 * 3600)
        pub.log_event("E", "C", "m", timestamp=t)
        pub.record_metric("current", rng.uniform(0, 100), "A", timestamp=t)
        if rng.random() < 0.2:
            pub.record_anomaly("A", rng.choice(["LOW", "HIGH", "CRITICAL"]), "d", timestamp=t)
    assert pub.flush(30)
    pub.close()
    windows = [
        (None, None),
        (now - 3600, None),
        (now - 5000.5, now - 1234.25),
        (now - 7200, now - 7199),
        (now - 90, now + 10),
        (now - 10_000, now - 10_000),
    ]
    with MemoryBank(db_path) as memory:
        _check(memory, db_path, windows)
    result = CliRunner().invoke(
        main, ["maintenance", "--db", str(db_path), "retention", "--days", str(5000 / 86400)]
    )
    assert result.exit_code == 0, result.output
    with MemoryBank(db_path) as memory:
        _check(memory, db_path, windows)
        assert memory.get_anomaly_count() == _exact(db_path)[1]["total_anomalies"]


def test_a_batch_in_one_minute_and_across_minutes_is_rolled_up_row_for_row():
    """A batch's rows mostly fall in one minute, which the writer tells from their first
    and last time alone (no step per row); across two or more minutes each row counts in
    its own. Both ways give what counting the rows one by one gives."""
    from memory_bank.store.sql import bucket_counts, metric_aggregates

    rng = random.Random(7)
    for start, spread in ((1_700_000_040.0, 10.0), (1_700_000_055.0, 10.0), (1e9, 900.0)):
        rows = [
            (n, start + rng.random() * spread, rng.choice(["current", "power"]), rng.random())
            for n in range(500)
        ]
        by_minute: dict = {}
        by_metric: dict = {}
        for _, ts, name, value in rows:
            by_minute[ts // 60] = by_minute.get(ts // 60, 0) + 1
            agg = by_metric.setdefault((name, int(ts // 60)), [0, 0.0, value, value])
            agg[0], agg[1] = agg[0] + 1, agg[1] + value
            agg[2], agg[3] = min(agg[2], value), max(agg[3], value)
        assert dict(bucket_counts(rows, 60)) == by_minute
        assert metric_aggregates(rows, 60, 2, 1, 3) == by_metric
