"""The seed's MemoryBank, rebuilt as the reference the parity tests compare against.

The seed document gives every method's arguments and return shapes; its schema gives the
SQL. Behaviour was checked line by line against the original ``memory_bank.py`` (public
repository barikuz/ev-charging-security-project-g9, file
230541106_EnisUZUN/ev-anomaly-sim/memory_bank.py, commit dbccc8f1cd66). This is a
re-implementation of that behaviour, not a copy. What the parity tests rely on:

- one connection per call, ``SELECT *`` rows as dicts, ids from AUTOINCREMENT;
- filters are applied only when truthy (``if event_type:``), ``since`` is a datetime;
- data / pattern_data / metadata are stored as JSON only when truthy (``{}`` becomes NULL)
  and decoded only when stored; record_pattern always stores JSON (None becomes "null");
- ``LIMIT ?`` is bound as given (negative: no limit, None: an error, > 2**63: an error);
- get_metric_statistics returns ``value or 0`` for min/max/avg/count;
- start_session inserts (a second start raises sqlite3.IntegrityError) and returns lastrowid;
  end_session and increment_session_anomaly_count update an existing row only;
- record_pattern matches an existing pattern by its exact JSON text (key order matters);
- export_to_json writes events/anomalies (10,000 newest since ``since``), the 1,000 newest
  sessions, every pattern and the summary, and returns None; clear_old_data returns None.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from datetime import datetime, timedelta

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL NOT NULL, event_type TEXT NOT NULL,
    component TEXT NOT NULL, message TEXT, data TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS anomalies (
    id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL NOT NULL, anomaly_type TEXT NOT NULL,
    severity TEXT NOT NULL, description TEXT, pattern_data TEXT, current_value REAL,
    expected_value REAL, deviation REAL, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT UNIQUE NOT NULL,
    start_time REAL NOT NULL, end_time REAL, total_energy REAL, avg_current REAL,
    max_current REAL, min_current REAL, anomaly_count INTEGER DEFAULT 0, status TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL NOT NULL, metric_name TEXT NOT NULL,
    metric_value REAL NOT NULL, unit TEXT, metadata TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS patterns (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pattern_type TEXT NOT NULL, pattern_data TEXT NOT NULL,
    frequency INTEGER DEFAULT 1, last_seen REAL, confidence REAL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX IF NOT EXISTS idx_events_timestamp ON events(timestamp);
CREATE INDEX IF NOT EXISTS idx_events_type ON events(event_type);
CREATE INDEX IF NOT EXISTS idx_anomalies_timestamp ON anomalies(timestamp);
CREATE INDEX IF NOT EXISTS idx_anomalies_type ON anomalies(anomaly_type);
CREATE INDEX IF NOT EXISTS idx_sessions_start ON sessions(start_time);
CREATE INDEX IF NOT EXISTS idx_metrics_timestamp ON metrics(timestamp);
"""


def _json_or_null(value):
    return json.dumps(value) if value else None


def _decoded(row: sqlite3.Row, column: str) -> dict:
    out = dict(row)
    if out[column]:
        out[column] = json.loads(out[column])
    return out


class MemoryBank:
    def __init__(self, db_path: str = "memory_bank.db"):
        self.db_path = db_path
        self.lock = threading.Lock()
        with self._connect() as conn:
            conn.executescript(SCHEMA)
            conn.commit()

    @contextlib.contextmanager
    def _connect(self):
        with self.lock:
            conn = sqlite3.connect(self.db_path)
            conn.row_factory = sqlite3.Row
            try:
                yield conn
            finally:
                conn.close()

    def _write(self, sql: str, params=()) -> int:
        with self._connect() as conn:
            cursor = conn.execute(sql, params)
            conn.commit()
            return cursor.lastrowid

    def _rows(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._connect() as conn:
            return conn.execute(sql, params).fetchall()

    @staticmethod
    def _filtered(table: str, filters, since, limit) -> tuple[str, list]:
        sql, params = f"SELECT * FROM {table} WHERE 1=1", []
        for column, value in filters:
            if value:
                sql += f" AND {column} = ?"
                params.append(value)
        if since:
            sql += " AND timestamp >= ?"
            params.append(since.timestamp())
        return sql + " ORDER BY timestamp DESC LIMIT ?", [*params, limit]

    # -- events -------------------------------------------------------------------------
    def log_event(self, event_type, component, message="", data=None) -> int:
        return self._write(
            "INSERT INTO events (timestamp, event_type, component, message, data) "
            "VALUES (?, ?, ?, ?, ?)",
            (datetime.now().timestamp(), event_type, component, message, _json_or_null(data)),
        )

    def get_events(self, event_type=None, component=None, since=None, limit=100):
        sql, params = self._filtered(
            "events", [("event_type", event_type), ("component", component)], since, limit
        )
        return [_decoded(row, "data") for row in self._rows(sql, params)]

    # -- anomalies ----------------------------------------------------------------------
    def record_anomaly(
        self,
        anomaly_type,
        severity,
        description="",
        pattern_data=None,
        current_value=None,
        expected_value=None,
    ) -> int:
        deviation = None
        if current_value is not None and expected_value is not None:
            deviation = abs(current_value - expected_value)
        return self._write(
            "INSERT INTO anomalies (timestamp, anomaly_type, severity, description, "
            "pattern_data, current_value, expected_value, deviation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                datetime.now().timestamp(),
                anomaly_type,
                severity,
                description,
                _json_or_null(pattern_data),
                current_value,
                expected_value,
                deviation,
            ),
        )

    def get_anomalies(self, anomaly_type=None, severity=None, since=None, limit=100):
        sql, params = self._filtered(
            "anomalies", [("anomaly_type", anomaly_type), ("severity", severity)], since, limit
        )
        return [_decoded(row, "pattern_data") for row in self._rows(sql, params)]

    def get_anomaly_count(self, since=None) -> int:
        if since:
            rows = self._rows(
                "SELECT COUNT(*) FROM anomalies WHERE timestamp >= ?", (since.timestamp(),)
            )
        else:
            rows = self._rows("SELECT COUNT(*) FROM anomalies")
        return rows[0][0]

    # -- sessions -----------------------------------------------------------------------
    def start_session(self, session_id) -> int:
        return self._write(
            "INSERT INTO sessions (session_id, start_time, status) VALUES (?, ?, 'ACTIVE')",
            (session_id, datetime.now().timestamp()),
        )

    def end_session(
        self, session_id, total_energy=None, avg_current=None, max_current=None, min_current=None
    ) -> None:
        self._write(
            "UPDATE sessions SET end_time = ?, total_energy = ?, avg_current = ?, "
            "max_current = ?, min_current = ?, status = 'COMPLETED' WHERE session_id = ?",
            (
                datetime.now().timestamp(),
                total_energy,
                avg_current,
                max_current,
                min_current,
                session_id,
            ),
        )

    def increment_session_anomaly_count(self, session_id) -> None:
        self._write(
            "UPDATE sessions SET anomaly_count = anomaly_count + 1 WHERE session_id = ?",
            (session_id,),
        )

    def get_session(self, session_id):
        rows = self._rows("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        return dict(rows[0]) if rows else None

    def get_recent_sessions(self, limit=10):
        rows = self._rows("SELECT * FROM sessions ORDER BY start_time DESC LIMIT ?", (limit,))
        return [dict(row) for row in rows]

    # -- metrics ------------------------------------------------------------------------
    def record_metric(self, metric_name, metric_value, unit="", metadata=None) -> None:
        self._write(
            "INSERT INTO metrics (timestamp, metric_name, metric_value, unit, metadata) "
            "VALUES (?, ?, ?, ?, ?)",
            (datetime.now().timestamp(), metric_name, metric_value, unit, _json_or_null(metadata)),
        )

    def get_metrics(self, metric_name, since=None, limit=1000):
        sql, params = "SELECT * FROM metrics WHERE metric_name = ?", [metric_name]
        if since:
            sql += " AND timestamp >= ?"
            params.append(since.timestamp())
        rows = self._rows(sql + " ORDER BY timestamp DESC LIMIT ?", [*params, limit])
        return [_decoded(row, "metadata") for row in rows]

    def get_metric_statistics(self, metric_name, since=None) -> dict:
        sql = (
            "SELECT MIN(metric_value) AS min_value, MAX(metric_value) AS max_value, "
            "AVG(metric_value) AS avg_value, COUNT(*) AS count FROM metrics WHERE metric_name = ?"
        )
        params = [metric_name]
        if since:
            sql += " AND timestamp >= ?"
            params.append(since.timestamp())
        row = self._rows(sql, params)[0]
        return {
            "min": row["min_value"] or 0,
            "max": row["max_value"] or 0,
            "avg": row["avg_value"] or 0,
            "count": row["count"] or 0,
        }

    # -- patterns -----------------------------------------------------------------------
    def record_pattern(self, pattern_type, pattern_data, confidence=1.0) -> None:
        now, text = datetime.now().timestamp(), json.dumps(pattern_data)
        with self._connect() as conn:
            found = conn.execute(
                "SELECT id FROM patterns WHERE pattern_type = ? AND pattern_data = ?",
                (pattern_type, text),
            ).fetchone()
            if found:
                conn.execute(
                    "UPDATE patterns SET frequency = frequency + 1, last_seen = ?, "
                    "confidence = ?, updated_at = CURRENT_TIMESTAMP WHERE id = ?",
                    (now, confidence, found["id"]),
                )
            else:
                conn.execute(
                    "INSERT INTO patterns (pattern_type, pattern_data, last_seen, confidence) "
                    "VALUES (?, ?, ?, ?)",
                    (pattern_type, text, now, confidence),
                )
            conn.commit()

    def get_patterns(self, pattern_type=None, min_frequency=1):
        sql, params = "SELECT * FROM patterns WHERE frequency >= ?", [min_frequency]
        if pattern_type:
            sql += " AND pattern_type = ?"
            params.append(pattern_type)
        rows = self._rows(sql + " ORDER BY frequency DESC, last_seen DESC", params)
        out = []
        for row in rows:
            pattern = dict(row)
            pattern["pattern_data"] = json.loads(pattern["pattern_data"])
            out.append(pattern)
        return out

    # -- analytics and data management --------------------------------------------------
    def get_dashboard_summary(self) -> dict:
        now = datetime.now()
        hour_ago = (now - timedelta(hours=1)).timestamp()

        def count(sql, params=()):
            return self._rows(sql, params)[0][0]

        return {
            "total_events": count("SELECT COUNT(*) FROM events"),
            "total_anomalies": count("SELECT COUNT(*) FROM anomalies"),
            "total_sessions": count("SELECT COUNT(*) FROM sessions"),
            "events_last_hour": count(
                "SELECT COUNT(*) FROM events WHERE timestamp >= ?", (hour_ago,)
            ),
            "anomalies_last_hour": count(
                "SELECT COUNT(*) FROM anomalies WHERE timestamp >= ?", (hour_ago,)
            ),
            "anomalies_by_severity": {
                row["severity"]: row["count"]
                for row in self._rows(
                    "SELECT severity, COUNT(*) AS count FROM anomalies GROUP BY severity"
                )
            },
            "active_sessions": count("SELECT COUNT(*) FROM sessions WHERE status = 'ACTIVE'"),
            "timestamp": now.isoformat(),
        }

    def clear_old_data(self, days=7) -> None:
        cutoff = (datetime.now() - timedelta(days=days)).timestamp()
        with self._connect() as conn:
            for table in ("events", "anomalies", "metrics"):
                conn.execute(f"DELETE FROM {table} WHERE timestamp < ?", (cutoff,))
            conn.commit()

    def export_to_json(self, output_path, since=None) -> None:
        data = {
            "events": self.get_events(since=since, limit=10000),
            "anomalies": self.get_anomalies(since=since, limit=10000),
            "sessions": self.get_recent_sessions(limit=1000),
            "patterns": self.get_patterns(),
            "summary": self.get_dashboard_summary(),
        }
        with open(output_path, "w") as f:
            json.dump(data, f, indent=2)

    def close(self) -> None:
        pass
