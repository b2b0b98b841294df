"""A database written by the seed's own memory_bank.py opens and is upgraded in place."""

from __future__ import annotations

import json
import sqlite3
import time

from memory_bank import MemoryBank

# The seed's schema as its documentation gives it: AUTOINCREMENT ids, the same five tables.
SEED_SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL NOT NULL,
    event_type TEXT NOT NULL, component TEXT NOT NULL, message TEXT, data TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE anomalies (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL NOT NULL,
    anomaly_type TEXT NOT NULL, severity TEXT NOT NULL, description TEXT, pattern_data TEXT,
    current_value REAL, expected_value REAL, deviation REAL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE sessions (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT UNIQUE NOT NULL,
    start_time REAL NOT NULL, end_time REAL, total_energy REAL, avg_current REAL,
    max_current REAL, min_current REAL, anomaly_count INTEGER DEFAULT 0,
    status TEXT DEFAULT 'ACTIVE', created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL NOT NULL,
    metric_name TEXT NOT NULL, metric_value REAL NOT NULL, unit TEXT, metadata TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE patterns (id INTEGER PRIMARY KEY AUTOINCREMENT, pattern_type TEXT NOT NULL,
    pattern_data TEXT NOT NULL, frequency INTEGER DEFAULT 1, last_seen REAL, confidence REAL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_events_timestamp ON events(timestamp);
CREATE INDEX idx_events_type ON events(event_type);
CREATE INDEX idx_anomalies_timestamp ON anomalies(timestamp);
CREATE INDEX idx_anomalies_type ON anomalies(anomaly_type);
CREATE INDEX idx_sessions_start ON sessions(start_time);
CREATE INDEX idx_metrics_timestamp ON metrics(timestamp);
"""


def _write_seed_database(path) -> float:
    now = time.time() - 60
    conn = sqlite3.connect(path)
    conn.executescript(SEED_SCHEMA)
    for i in range(20):
        conn.execute(
            "INSERT INTO events (timestamp, event_type, component, message, data) "
            "VALUES (?, 'CAN_RX', 'CP', ?, ?)",
            (now + i, f"reading {i}", json.dumps({"i": i})),
        )
        conn.execute(
            "INSERT INTO metrics (timestamp, metric_name, metric_value, unit) "
            "VALUES (?, 'current', ?, 'A')",
            (now + i, float(i)),
        )
    conn.execute(
        "INSERT INTO anomalies (timestamp, anomaly_type, severity, description, current_value, "
        "expected_value, deviation) VALUES (?, 'SPIKE', 'HIGH', 'old', 100, 32, 68)",
        (now,),
    )
    conn.execute(
        "INSERT INTO sessions (session_id, start_time, end_time, status, anomaly_count) "
        "VALUES ('OLD', ?, ?, 'COMPLETED', 2)",
        (now, now + 5),
    )
    # The seed counted the same pattern apart when its keys came in another order.
    conn.execute(
        "INSERT INTO patterns (pattern_type, pattern_data, frequency, last_seen, confidence) "
        "VALUES ('CYCLE', '{\"a\": 1, \"b\": 2}', 3, ?, 0.5)",
        (now,),
    )
    conn.execute(
        "INSERT INTO patterns (pattern_type, pattern_data, frequency, last_seen, confidence) "
        "VALUES ('CYCLE', '{\"b\": 2, \"a\": 1}', 2, ?, 0.9)",
        (now + 1,),
    )
    conn.commit()
    conn.close()
    return now


def test_seed_database_is_upgraded_in_place(db_path, start_daemon):
    now = _write_seed_database(db_path)
    start_daemon(db_path)
    with MemoryBank(db_path) as memory:
        summary = memory.get_dashboard_summary()
        assert summary["total_events"] == 20
        assert summary["total_anomalies"] == 1
        assert memory.get_session("OLD")["anomaly_count"] == 2
        assert memory.get_metric_statistics("current")["count"] == 20
        [pattern] = memory.get_patterns()
        assert (pattern["frequency"], pattern["confidence"]) == (5, 0.9)

        new_id = memory.log_event("OCPP_BOOT", "CSMS", "after upgrade")
        memory.record_pattern("CYCLE", {"b": 2, "a": 1}, confidence=0.1)
        memory.start_session("OLD")
        events = memory.get_events(limit=100)
        assert len(events) == 21 and events[0]["id"] == new_id
        assert memory.get_patterns()[0]["frequency"] == 6
        assert memory.get_session("OLD")["start_time"] == now
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    old_ids = [r[0] for r in conn.execute("SELECT id FROM events WHERE id < 100")]
    assert old_ids == list(range(1, 21))
    conn.close()


def test_lost_ids_file_cannot_cause_collisions(db_path, start_daemon):
    daemon = start_daemon(db_path)
    with MemoryBank(db_path) as memory:
        first = memory.log_event("E", "C", "one")
    daemon.stop()
    db_path.with_name(db_path.name + "-ids").unlink()
    start_daemon(db_path)
    with MemoryBank(db_path) as memory:
        second = memory.log_event("E", "C", "two")
        assert len(memory.get_events()) == 2
    assert second > first


def test_a_database_written_by_a_newer_memorybank_is_refused_not_written(db_path, start_daemon):
    """A schema version above this MemoryBank's (a newer one wrote the file) is refused with
    the reason, by the daemon and by the embedded writer, and the file is left as it was:
    this version would not keep what the newer schema holds."""
    with MemoryBank(db_path, embedded=True) as memory:
        memory.log_event("E", "C", "kept")
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    daemon = start_daemon(db_path, wait=False)
    assert daemon.proc.wait(60) == 2
    assert "database schema version 99 is newer than this MemoryBank" in daemon.log
    assert "upgrade memory_bank" in daemon.log
    try:
        MemoryBank(db_path, embedded=True).close()
    except Exception as exc:
        assert "is newer than this MemoryBank" in str(exc)
    else:
        raise AssertionError("the embedded writer opened a newer database")
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
        assert conn.execute("SELECT message FROM events").fetchall() == [("kept",)]
    conn.close()
