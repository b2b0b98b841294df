"""Every example of the seed document's "API Usage", run as written against a real daemon."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from memory_bank import MemoryBank


@pytest.fixture
def db_path(location):
    """Every test here runs against SQLite and PostgreSQL (a path, or a URL)."""
    return location


@pytest.fixture
def memory(db_path, daemon):
    with MemoryBank(str(db_path)) as memory:
        yield memory


def test_default_database_name(tmp_path, monkeypatch, start_daemon):
    monkeypatch.chdir(tmp_path)
    start_daemon(tmp_path / "ev_charging_memory.db")
    with MemoryBank() as memory:
        memory.log_event("OCPP_BOOT", "CSMS", "hello")
        assert memory.get_events()[0]["message"] == "hello"
    assert (tmp_path / "ev_charging_memory.db").exists()


def test_logging_events(memory):
    event_id = memory.log_event(
        event_type="OCPP_MESSAGE",
        component="CSMS",
        message="RemoteStartTransaction sent",
        data={"transaction_id": 12345, "connector_id": 1},
    )
    memory.log_event("CAN_TX", "CP", "START command sent to charger", {"can_id": "0x200"})
    assert isinstance(event_id, int)

    events = memory.get_events(event_type="OCPP_MESSAGE", component="CSMS", limit=50)
    assert [e["id"] for e in events] == [event_id]
    event = events[0]
    assert event["message"] == "RemoteStartTransaction sent"
    assert event["data"] == {"transaction_id": 12345, "connector_id": 1}
    assert event["created_at"]

    since = datetime.now() - timedelta(hours=1)
    assert len(memory.get_events(since=since)) == 2
    assert memory.get_events(since=datetime.now() + timedelta(hours=1)) == []


def test_recording_anomalies(memory):
    anomaly_id = memory.record_anomaly(
        anomaly_type="CURRENT_FLUCTUATION",
        severity="HIGH",
        description="Rapid current changes detected",
        pattern_data={"frequency": 0.1, "amplitude": 50, "type": "oscillation"},
        current_value=100.0,
        expected_value=50.0,
    )
    memory.record_anomaly("VOLTAGE_DROP", "LOW", "dip")
    anomalies = memory.get_anomalies(anomaly_type="CURRENT_FLUCTUATION", severity="HIGH", limit=20)
    assert [a["id"] for a in anomalies] == [anomaly_id]
    assert anomalies[0]["deviation"] == 50.0
    assert anomalies[0]["pattern_data"] == {
        "frequency": 0.1,
        "amplitude": 50,
        "type": "oscillation",
    }
    assert memory.get_anomaly_count() == 2
    assert memory.get_anomaly_count(anomaly_type="VOLTAGE_DROP") == 1


def test_session_management(memory):
    memory.start_session("SESSION_001")
    memory.increment_session_anomaly_count("SESSION_001")
    memory.end_session(
        "SESSION_001", total_energy=1250.5, avg_current=32.5, max_current=100.0, min_current=0.0
    )
    session = memory.get_session("SESSION_001")
    assert session["status"] == "COMPLETED"
    assert session["anomaly_count"] == 1
    assert (session["total_energy"], session["avg_current"]) == (1250.5, 32.5)
    assert (session["max_current"], session["min_current"]) == (100.0, 0.0)
    assert session["end_time"] >= session["start_time"]
    assert memory.get_recent_sessions(limit=10)[0]["session_id"] == "SESSION_001"
    assert memory.get_session("NOPE") is None


def test_recording_metrics(memory):
    for value in (10.0, 32.5, 100.0):
        memory.record_metric(
            metric_name="current",
            metric_value=value,
            unit="A",
            metadata={"connector_id": 1, "phase": "L1"},
        )
    memory.record_metric("voltage", 230.0, "V")
    metrics = memory.get_metrics(
        metric_name="current", since=datetime.now() - timedelta(minutes=10), limit=1000
    )
    assert sorted(m["metric_value"] for m in metrics) == [10.0, 32.5, 100.0]
    assert metrics[0]["metadata"] == {"connector_id": 1, "phase": "L1"}
    stats = memory.get_metric_statistics(
        metric_name="current", since=datetime.now() - timedelta(hours=1)
    )
    assert stats == {"min": 10.0, "max": 100.0, "avg": pytest.approx(47.5), "count": 3}


def test_pattern_learning(memory):
    for _ in range(5):
        memory.record_pattern(
            pattern_type="ANOMALY_CYCLE",
            pattern_data={
                "sequence": ["0A", "100A", "START", "STOP"],
                "cycle_time": 8,
                "severity": "HIGH",
            },
            confidence=0.95,
        )
    patterns = memory.get_patterns(pattern_type="ANOMALY_CYCLE", min_frequency=5)
    assert len(patterns) == 1
    assert patterns[0]["frequency"] == 5
    assert patterns[0]["pattern_data"]["cycle_time"] == 8
    assert memory.get_patterns(pattern_type="ANOMALY_CYCLE", min_frequency=6) == []


def test_dashboard_summary(memory):
    memory.log_event("OCPP_BOOT", "CSMS", "boot")
    memory.record_anomaly("A", "HIGH", "x")
    memory.record_anomaly("B", "HIGH", "y")
    memory.record_anomaly("C", "LOW", "z")
    memory.start_session("S1")
    summary = memory.get_dashboard_summary()
    assert summary["total_events"] == 1
    assert summary["total_anomalies"] == 3
    assert summary["total_sessions"] == 1
    assert summary["events_last_hour"] == 1
    assert summary["anomalies_last_hour"] == 3
    assert summary["anomalies_by_severity"] == {"HIGH": 2, "LOW": 1}
    assert summary["active_sessions"] == 1
    datetime.fromisoformat(summary["timestamp"])


def test_export_and_clean(memory, tmp_path):
    memory.log_event("OCPP_BOOT", "CSMS", "boot", {"cp_id": "CP_1"})
    memory.record_metric("current", 1.0, "A")
    out = tmp_path / "data_export.json"
    memory.export_to_json(str(out), since=datetime.now() - timedelta(days=7))
    exported = json.loads(out.read_text())
    assert exported["events"][0]["data"] == {"cp_id": "CP_1"}
    assert len(exported["metrics"]) == 1
    assert set(exported) >= {"events", "anomalies", "sessions", "metrics", "patterns"}

    deleted = memory.clear_old_data(days=7)
    assert deleted == {"events": 0, "anomalies": 0, "metrics": 0}
    deleted = memory.clear_old_data(days=0)
    assert deleted["events"] == 1 and deleted["metrics"] == 1
    assert memory.get_events() == []


def test_integration_examples_as_written(memory):
    cp_id, model, vendor, cycle, current, transaction_id = "CP_1", "M", "V", 3, 32, 77
    # In CSMS (csms.py)
    memory.log_event(
        "OCPP_BOOT",
        "CSMS",
        f"Charge point {cp_id} connected",
        {"cp_id": cp_id, "model": model, "vendor": vendor},
    )
    memory.record_anomaly(
        "CURRENT_LIMIT_FLUCTUATION",
        "HIGH",
        "Rapid charging limit change: 0A → 100A",
        {"cycle": cycle, "cp_id": cp_id},
        current_value=100.0,
        expected_value=32.0,
    )
    memory.record_pattern(
        "ANOMALY_CYCLE", {"sequence": ["0A", "100A", "START", "STOP"]}, confidence=1.0
    )
    # In Charge Point (cp.py)
    memory.log_event(
        "CAN_TX", "CP", "START command sent to charger", {"can_id": "0x200", "data": []}
    )
    memory.start_session(f"TXN_{transaction_id}")
    memory.log_event(
        "CAN_RX", "CP", f"Current reading: {current}A", {"can_id": "0x300", "current": current}
    )
    memory.record_metric("current", float(current), "A")
    memory.end_session(f"TXN_{transaction_id}")
    # In Plotter (plot_current.py)
    stats = memory.get_metric_statistics("current", since=datetime.now() - timedelta(minutes=1))
    anomalies = memory.get_anomalies(since=datetime.now() - timedelta(minutes=2), limit=20)
    assert stats["count"] == 1 and stats["avg"] == 32.0
    assert anomalies[0]["anomaly_type"] == "CURRENT_LIMIT_FLUCTUATION"
    session = memory.get_session(f"TXN_{transaction_id}")
    assert session["status"] == "COMPLETED"
    assert session["avg_current"] == 32.0
