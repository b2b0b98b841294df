"""The SQLite schema: the seed's five tables, and forward migrations tracked in user_version.

A fresh database and one written by the seed's own ``memory_bank.py`` take the same path:
the seed-shaped tables are created if missing (without AUTOINCREMENT, since the writer
supplies ids), then each migration brings the database forward, keeping its data.
"""

from __future__ import annotations

import os
import sqlite3
import time

from ..jsontext import loads
from ..lazylog import lazy_logger

log = lazy_logger(__name__)  # (readers never log: no logging import)

SCHEMA_VERSION = 5

# The seed's tables, column for column. A seed database already has them (with
# AUTOINCREMENT ids), and CREATE ... IF NOT EXISTS leaves those untouched.
SEED_TABLES = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    timestamp REAL NOT NULL,
    event_type TEXT NOT NULL,
    component TEXT NOT NULL,
    message TEXT,
    data TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS anomalies (
    id INTEGER PRIMARY KEY,
    timestamp REAL NOT NULL,
    anomaly_type TEXT NOT NULL,
    severity TEXT NOT NULL,
    description TEXT,
    pattern_data TEXT,
    current_value REAL,
    expected_value REAL,
    deviation REAL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    session_id TEXT UNIQUE NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL,
    total_energy REAL,
    avg_current REAL,
    max_current REAL,
    min_current REAL,
    anomaly_count INTEGER DEFAULT 0,
    status TEXT DEFAULT 'ACTIVE',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY,
    timestamp REAL NOT NULL,
    metric_name TEXT NOT NULL,
    metric_value REAL NOT NULL,
    unit TEXT,
    metadata TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS patterns (
    id INTEGER PRIMARY KEY,
    pattern_type TEXT NOT NULL,
    pattern_data TEXT NOT NULL,
    frequency INTEGER DEFAULT 1,
    last_seen REAL,
    confidence REAL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_events_timestamp ON events(timestamp);
CREATE INDEX IF NOT EXISTS idx_events_type ON events(event_type);
CREATE INDEX IF NOT EXISTS idx_anomalies_timestamp ON anomalies(timestamp);
CREATE INDEX IF NOT EXISTS idx_anomalies_type ON anomalies(anomaly_type);
CREATE INDEX IF NOT EXISTS idx_sessions_start ON sessions(start_time);
CREATE INDEX IF NOT EXISTS idx_metrics_timestamp ON metrics(timestamp);
"""


# SQLite's result codes for a file that is damaged or not a database at all.
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26


def read_only_uri(path) -> str:
    """The URI that opens the database file at ``path`` read-only. SQLite decodes %HH in a
    URI's path and ends the path at ``?`` or ``#``: escaping those three is enough
    (urllib.parse.quote, which escapes more to the same effect, is a tenth of the
    viewer's start-up to import)."""
    escaped = os.fspath(path).replace("%", "%25").replace("?", "%3F").replace("#", "%23")
    return f"file:{escaped}?mode=ro"


def damaged_database(path, exc: sqlite3.DatabaseError) -> str | None:
    """What to tell an operator when SQLite finds ``path`` damaged or no database at all
    (None for any other error): the reader and the writer refuse it in the same words."""
    if exc.sqlite_errorcode not in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return None
    return (
        f"{path} is not a MemoryBank database: it is damaged or not a SQLite database "
        f"({exc}); recover what it holds with: sqlite3 {path} .recover | sqlite3 "
        "recovered.db — then use recovered.db, or move the damaged file away to start afresh"
    )


def pattern_key(pattern_data) -> str:
    """Patterns are the same when their data is, key order aside."""
    import json  # here: readers (the viewer's summary) never load it (see jsontext)

    return json.dumps(pattern_data, sort_keys=True, separators=(",", ":"))


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """Columns and tables the writer's contracts need; seed rows kept as they are."""
    session_cols = _columns(conn, "sessions")
    if "started" not in session_cols:
        # 0 while a session exists only because an anomaly or its end arrived first.
        conn.execute("ALTER TABLE sessions ADD COLUMN started INTEGER NOT NULL DEFAULT 1")
    if "stats_auto" not in session_cols:
        # Bit mask of statistics end_session left to be computed from the metrics:
        # 1 total_energy, 2 avg_current, 4 max_current, 8 min_current.
        conn.execute("ALTER TABLE sessions ADD COLUMN stats_auto INTEGER NOT NULL DEFAULT 0")
    # A seed database may lack the UNIQUE constraint; keep duplicates, renamed.
    dupes = conn.execute(
        "SELECT id, session_id FROM sessions WHERE id NOT IN "
        "(SELECT min(id) FROM sessions GROUP BY session_id)"
    ).fetchall()
    for row_id, session_id in dupes:
        conn.execute(
            "UPDATE sessions SET session_id = ? WHERE id = ?", (f"{session_id}#{row_id}", row_id)
        )
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_sessions_session_id ON sessions(session_id)"
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS idx_sessions_auto_end ON sessions(end_time) "
        "WHERE stats_auto != 0"
    )

    if "pattern_key" not in _columns(conn, "patterns"):
        conn.execute("ALTER TABLE patterns ADD COLUMN pattern_key TEXT")
    _key_legacy_patterns(conn)
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_patterns_key ON patterns(pattern_type, pattern_key)"
    )
    # Serves get_metric_statistics and get_metrics(metric_name=..., since=...).
    conn.execute(
        "CREATE INDEX IF NOT EXISTS idx_metrics_name_ts ON metrics(metric_name, timestamp)"
    )
    # Per publisher, the last message applied: a replayed message is skipped.
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mb_publishers ("
        " publisher_id INTEGER PRIMARY KEY,"
        " applied_seq INTEGER NOT NULL,"
        " last_seen REAL NOT NULL)"
    )


def _key_legacy_patterns(conn: sqlite3.Connection) -> None:
    """Give seed patterns their key; merge rows the seed counted apart."""
    rows = conn.execute(
        "SELECT id, pattern_type, pattern_data, frequency, last_seen, confidence "
        "FROM patterns WHERE pattern_key IS NULL ORDER BY id"
    ).fetchall()
    kept: dict[tuple[str, str], list] = {}
    for row_id, ptype, pdata, freq, last_seen, conf in rows:
        try:
            key = pattern_key(loads(pdata))
        except (TypeError, ValueError):
            key = pdata or ""
        existing = conn.execute(
            "SELECT id, frequency, last_seen, confidence FROM patterns "
            "WHERE pattern_type = ? AND pattern_key = ?",
            (ptype, key),
        ).fetchone() or kept.get((ptype, key))
        if existing is None:
            conn.execute("UPDATE patterns SET pattern_key = ? WHERE id = ?", (key, row_id))
            kept[(ptype, key)] = [row_id, freq, last_seen, conf]
            continue
        keep_id, keep_freq, keep_seen, keep_conf = existing
        newer = (last_seen or 0) >= (keep_seen or 0)
        conn.execute(
            "UPDATE patterns SET frequency = ?, last_seen = ?, confidence = ? WHERE id = ?",
            (
                (keep_freq or 1) + (freq or 1),
                max(last_seen or 0, keep_seen or 0) or None,
                conf if newer else keep_conf,
                keep_id,
            ),
        )
        conn.execute("DELETE FROM patterns WHERE id = ?", (row_id,))


REJECTED_KEEP = 10_000


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Refused input, kept for inspection (the newest REJECTED_KEEP rows)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mb_rejected ("
        " id INTEGER PRIMARY KEY,"
        " received_at REAL NOT NULL,"
        " publisher_id INTEGER,"
        " reason TEXT NOT NULL,"
        " sample TEXT)"
    )


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """Maintenance runs (retention, vacuum): what each did, for `status` and the viewer."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mb_maintenance ("
        " id INTEGER PRIMARY KEY,"
        " job TEXT NOT NULL,"
        " trigger TEXT NOT NULL,"
        " started REAL NOT NULL,"
        " finished REAL,"
        " status TEXT NOT NULL,"
        " deleted TEXT,"
        " bytes_reclaimed INTEGER,"
        " longest_step_ms REAL,"
        " error TEXT)"
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS idx_mb_maintenance_job ON mb_maintenance(job, started)"
    )
    # Facts about the database itself; 'maintenance_since' is when scheduled maintenance
    # began to apply, so a run missed before any run was recorded is still caught up.
    conn.execute("CREATE TABLE IF NOT EXISTS mb_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute(
        "INSERT OR IGNORE INTO mb_meta (key, value) VALUES ('maintenance_since', ?)",
        (str(time.time()),),
    )


def _migrate_to_4(conn: sqlite3.Connection) -> None:
    """Totals and per-minute rollups the writer keeps with every batch, so the summary and
    metric statistics read a few hundred rows instead of scanning millions."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mb_counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL) "
        "WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mb_minutes (tbl TEXT NOT NULL, minute INTEGER NOT NULL,"
        " n INTEGER NOT NULL, PRIMARY KEY (tbl, minute)) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mb_metric_minutes (metric_name TEXT NOT NULL,"
        " minute INTEGER NOT NULL, n INTEGER NOT NULL, total REAL NOT NULL, min REAL,"
        " max REAL, PRIMARY KEY (metric_name, minute)) WITHOUT ROWID"
    )
    # Indexes, each for a query that needs it (each one costs 25-40% of insert speed):
    # events(timestamp) [seed]: recent events, time filters, last hour, retention;
    # events(event_type, timestamp): get_events(event_type=...) newest first, no sort;
    # anomalies(timestamp) [seed] and anomalies(anomaly_type, timestamp): likewise;
    # metrics(timestamp) [seed]: time windows (session statistics, plots, edges of the
    # rollups) and retention. metrics(metric_name, timestamp) is dropped: statistics come
    # from mb_metric_minutes now, and a name filter over a time window is cheap without it.
    conn.execute("DROP INDEX IF EXISTS idx_events_type")
    conn.execute("CREATE INDEX IF NOT EXISTS idx_events_type_ts ON events(event_type, timestamp)")
    conn.execute("DROP INDEX IF EXISTS idx_anomalies_type")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS idx_anomalies_type_ts ON anomalies(anomaly_type, timestamp)"
    )
    conn.execute("DROP INDEX IF EXISTS idx_metrics_name_ts")
    # A database with rows already (the seed's, or an older MemoryBank's): count them once.
    conn.execute("DELETE FROM mb_counts")
    conn.execute("DELETE FROM mb_minutes")
    conn.execute("DELETE FROM mb_metric_minutes")
    conn.execute("INSERT INTO mb_counts SELECT 'events', count(*) FROM events")
    conn.execute("INSERT INTO mb_counts SELECT 'anomalies', count(*) FROM anomalies")
    conn.execute(
        "INSERT INTO mb_counts SELECT 'anomalies:' || severity, count(*) FROM anomalies "
        "GROUP BY severity"
    )
    for table in ("events", "anomalies"):
        conn.execute(
            f"INSERT INTO mb_minutes SELECT '{table}', CAST(timestamp / 60 AS INTEGER),"
            f" count(*) FROM {table} GROUP BY 2"
        )
    conn.execute(
        "INSERT INTO mb_metric_minutes SELECT metric_name, CAST(timestamp / 60 AS INTEGER), "
        "count(*), total(metric_value), min(metric_value), max(metric_value) "
        "FROM metrics GROUP BY 1, 2"
    )


# mb_metric_rollups' slices (seconds) coarser than a minute: a chart over days reads one
# row per 10 minutes (1,008 for a week) instead of 10,080 per-minute rows, and still
# draws about one bucket per pixel or two. (Both stores keep them.)
COARSE_SECONDS = 600


def _migrate_to_5(conn: sqlite3.Connection) -> None:
    """10-minute rollups of the metrics beside the per-minute ones (filled from them), so a
    chart over days reads a thousand rows rather than ten thousand. ``seconds`` names the
    slice (600; coarser ones may join), ``start`` its first second (epoch)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mb_metric_rollups (metric_name TEXT NOT NULL,"
        " seconds INTEGER NOT NULL, start INTEGER NOT NULL, n INTEGER NOT NULL,"
        " total REAL NOT NULL, min REAL, max REAL,"
        " PRIMARY KEY (metric_name, seconds, start)) WITHOUT ROWID"
    )
    conn.execute("DELETE FROM mb_metric_rollups")
    conn.execute(
        "INSERT INTO mb_metric_rollups SELECT metric_name, ?1, minute * 60 / ?1 * ?1, sum(n),"
        " sum(total), min(min), max(max) FROM mb_metric_minutes GROUP BY 1, 3",
        (COARSE_SECONDS,),
    )


MIGRATIONS = {
    1: _migrate_to_1,
    2: _migrate_to_2,
    3: _migrate_to_3,
    4: _migrate_to_4,
    5: _migrate_to_5,
}


class NewerSchema(RuntimeError):
    """The database was written by a newer MemoryBank."""


def refuse_newer(found: int, supported: int) -> None:
    """A database written by a newer MemoryBank is refused, not written to: this version
    would not keep what the newer one's schema holds."""
    if found > supported:
        raise NewerSchema(
            f"database schema version {found} is newer than this MemoryBank ({supported}); "
            "upgrade memory_bank"
        )


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION in one transaction; returns the old version."""
    old = conn.execute("PRAGMA user_version").fetchone()[0]
    refuse_newer(old, SCHEMA_VERSION)
    if old == SCHEMA_VERSION:
        return old
    conn.execute("BEGIN IMMEDIATE")
    try:
        # The seed's tables, once: later versions have them, and indexes the seed made
        # that a migration dropped (version 4) must not come back.
        for statement in SEED_TABLES.split(";") if old == 0 else ():
            if statement.strip():
                conn.execute(statement)
        for version in range(old + 1, SCHEMA_VERSION + 1):
            log.info("migrating schema to version %d", version)
            MIGRATIONS[version](conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return old
