"""A chart over days is read from the writer's 10-minute rollups, and says what the rows
say: every bucket's count, min, max and mean equal those of the raw rows in it, at the
slices' edges too, through ingest and retention, on SQLite and on PostgreSQL. An older
database gains the rollups when a newer daemon opens it."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time

import pytest

from memory_bank import MemoryBank, Publisher
from memory_bank.store import open_reader
from memory_bank.web.api import bucket_grid, rollup_slice

WEEK = 7 * 86400
SLICE = 600


def _publish_week(location, now: float) -> list[tuple[str, float, float]]:
    """Three voltage points per 10 minutes over a week and a bit (one at each slice's first
    instant, one a millisecond before its end, one inside), and a sparser 'current'."""
    rng = random.Random(16)
    first = int((now - WEEK) // SLICE) * SLICE - 2 * SLICE
    points = []
    for start in range(first, int(now) - SLICE, SLICE):
        for t in (start, start + SLICE - 0.001, start + round(rng.uniform(1, SLICE - 1), 3)):
            points.append(("voltage", t, round(rng.uniform(200, 250), 3)))
        if rng.random() < 0.3:
            points.append(("current", start + 30.5, round(rng.uniform(0, 32), 3)))
    with Publisher(location) as pub:
        for name, t, value in points:
            pub.record_metric(name, value, "V" if name == "voltage" else "A", timestamp=t)
        assert pub.flush(60)
    return points


def _expected(points, name: str, origin: float, width: float, count: int) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for point_name, t, value in points:
        if point_name != name or not origin <= t < origin + count * width:
            continue
        b = out.setdefault(int((t - origin) // width), {"values": [], "times": []})
        b["values"].append(value)
        b["times"].append(t)
    return out


def _assert_buckets(reader, points, name, origin, width, count, tier):
    got = reader.metric_buckets(name, origin, origin + count * width, count)
    want = _expected(points, name, origin, width, count)
    assert [b["bucket"] for b in got] == sorted(want)
    for b in got:
        w = want[b["bucket"]]
        assert b["n"] == len(w["values"])
        assert (b["min"], b["max"]) == (min(w["values"]), max(w["values"]))
        assert b["avg"] == pytest.approx(sum(w["values"]) / len(w["values"]), rel=1e-12)
        # From a rollup, a bucket starts where its first slice with data does: proof the
        # rollup answered (the rows would give the first point's own time).
        assert b["first_t"] == min(w["times"]) // tier * tier


@contextlib.contextmanager
def _reader(location):
    reader = open_reader(location)
    try:
        yield reader
    finally:
        reader.close()


def _stored_points(reader) -> list[tuple[str, float, float]]:
    return [
        (r["metric_name"], r["timestamp"], r["metric_value"])
        for r in reader.iter_metrics(newest_first=False)
    ]


def _rollups_match_the_rows(location, reader):
    """Every rollup slice (summed over writers) against the rows still stored."""
    points = _stored_points(reader)
    on_sqlite = not str(location).startswith("postgresql")  # its minutes: test_rollups.py
    for seconds in (SLICE,) if on_sqlite else reader.rollup_seconds():
        want: dict[tuple[str, int], list] = {}
        for name, t, value in points:
            want.setdefault((name, int(t // seconds) * seconds), []).append(value)
        rows = reader.tuples(
            "SELECT metric_name, start, sum(n), sum(total), min(min), max(max) "
            f"FROM mb_metric_rollups WHERE seconds = {seconds} GROUP BY metric_name, start"
        )
        got = {(name, start): (n, total, lo, hi) for name, start, n, total, lo, hi in rows}
        assert set(got) == set(want), seconds
        for key, values in want.items():
            n, total, lo, hi = got[key]
            assert (n, lo, hi) == (len(values), min(values), max(values)), key
            assert total == pytest.approx(sum(values), rel=1e-12)


def test_a_week_chart_from_the_rollups_equals_the_rows(location, start_daemon):
    start_daemon(location)
    now = time.time()
    points = _publish_week(location, now)
    since = now - WEEK
    with _reader(location) as reader:
        assert SLICE in reader.rollup_seconds()
        # The page's 7-day chart at 2,000 points: 10-minute buckets from the 10-minute rollup.
        origin, width, count = bucket_grid(since, now, 2000, rollup_slice(reader, WEEK))
        assert (width, count) == (SLICE, 1009)
        _assert_buckets(reader, points, "voltage", origin, width, count, SLICE)
        # Wider buckets made of whole slices, and a sparser metric, likewise.
        for name, width in (("voltage", 3600), ("current", 1200)):
            origin, width, count = bucket_grid(since, now, WEEK // width, width)
            _assert_buckets(reader, points, name, origin, width, count, SLICE)
        # A day of one-minute buckets from the per-minute rollup.
        origin, width, count = bucket_grid(now - 86400, now, 1440, 60)
        _assert_buckets(reader, points, "voltage", origin, width, count, 60)
        _rollups_match_the_rows(location, reader)


def test_retention_trims_the_rollups_to_the_rows_it_keeps(location, start_daemon):
    start_daemon(location)
    now = time.time()
    _publish_week(location, now)
    cutoff = int((now - 3.5 * 86400) // SLICE) * SLICE + SLICE / 2  # mid-slice
    with MemoryBank(location) as memory:
        deleted = memory.clear_old_data(days=(time.time() - cutoff) / 86400)
    assert deleted["metrics"] > 0
    with _reader(location) as reader:
        points = _stored_points(reader)
        assert min(t for _, t, _ in points) >= cutoff
        _rollups_match_the_rows(location, reader)
        origin, width, count = bucket_grid(now - WEEK, now, 2000, SLICE)
        _assert_buckets(reader, points, "voltage", origin, width, count, SLICE)


def test_an_older_sqlite_database_gains_the_rollups(db_path, start_daemon):
    """A database of schema version 4 (per-minute rollups only) is charted from its
    minutes until a newer daemon opens it; then its 10-minute rollups are filled from them,
    and the seed's indexes version 4 dropped stay dropped."""
    daemon = start_daemon(db_path)
    now = time.time()
    points = _publish_week(db_path, now)
    daemon.stop()
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TABLE mb_metric_rollups")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    older = open_reader(db_path)  # open across the upgrade, as the dashboard's stays
    assert older.rollup_seconds() == (60,)
    origin, width, count = bucket_grid(now - WEEK, now, 2000, rollup_slice(older, WEEK))
    _assert_buckets(older, points, "voltage", origin, width, count, 60)
    start_daemon(db_path)
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert not indexes & {"idx_events_type", "idx_anomalies_type"}, indexes
    conn.close()
    with _reader(db_path) as reader:
        _rollups_match_the_rows(db_path, reader)
        origin, width, count = bucket_grid(now - WEEK, now, 2000, rollup_slice(reader, WEEK))
        _assert_buckets(reader, points, "voltage", origin, width, count, SLICE)
    _reads_the_new_rollups(older, points, now)


def _reads_the_new_rollups(reader, points, now: float) -> None:
    """A reader opened before the upgrade finds the new rollups within a few seconds
    (it does not keep what it first found for its connection's life), then charts from
    them."""
    try:
        deadline = time.monotonic() + 20
        while SLICE not in reader.rollup_seconds():
            assert time.monotonic() < deadline, "the open reader never found the new rollups"
            time.sleep(0.2)
        origin, width, count = bucket_grid(now - WEEK, now, 2000, rollup_slice(reader, WEEK))
        _assert_buckets(reader, points, "voltage", origin, width, count, SLICE)
    finally:
        reader.close()


def test_an_older_postgresql_database_gains_the_rollups(pg_url, start_daemon):
    """A database of schema version 1 (no metric rollups) has them filled from its metrics
    by the first newer daemon, and its charts read them from then on."""
    import psycopg

    daemon = start_daemon(pg_url)
    now = time.time()
    points = _publish_week(pg_url, now)
    daemon.stop()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE mb_metric_rollups")
        conn.execute("UPDATE mb_meta SET value = '1' WHERE key = 'schema_version'")
    older = open_reader(pg_url)  # open across the upgrade, as the dashboard's stays
    assert older.rollup_seconds() == ()
    assert older.estimate_metric_rows("voltage", now - WEEK, now) is None
    start_daemon(pg_url)
    with psycopg.connect(pg_url) as conn:
        version = conn.execute("SELECT value FROM mb_meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == "3"
    with _reader(pg_url) as reader:
        _rollups_match_the_rows(pg_url, reader)
        origin, width, count = bucket_grid(now - WEEK, now, 2000, rollup_slice(reader, WEEK))
        _assert_buckets(reader, points, "voltage", origin, width, count, SLICE)
    _reads_the_new_rollups(older, points, now)


def test_migrate_rolls_up_what_it_copies(db_path, pg_url, start_daemon):
    """`memorybank migrate` from SQLite: PostgreSQL's rollups hold every copied row, and
    the week's chart reads them."""
    from memory_bank.store.migrate import Migration

    daemon = start_daemon(db_path)
    now = time.time()
    points = _publish_week(db_path, now)
    daemon.stop()
    migration = Migration(db_path, pg_url)
    try:
        assert migration.run().complete
    finally:
        migration.close()
    with _reader(pg_url) as reader:
        _rollups_match_the_rows(pg_url, reader)
        origin, width, count = bucket_grid(now - WEEK, now, 2000, rollup_slice(reader, WEEK))
        _assert_buckets(reader, points, "voltage", origin, width, count, SLICE)
