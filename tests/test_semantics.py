"""Session and pattern semantics, and the order and time contracts, against a real daemon."""

from __future__ import annotations

import datetime
import enum
import json
import time

import pytest

from conftest import query
from memory_bank import MemoryBank, Publisher


@pytest.fixture
def db_path(location):
    """Every test here runs against SQLite and PostgreSQL (a path, or a URL)."""
    return location


@pytest.fixture
def memory(db_path, daemon):
    with MemoryBank(db_path) as memory:
        yield memory


def test_start_twice_keeps_the_earlier_record(memory):
    memory.start_session("S")
    first = memory.get_session("S")
    memory.increment_session_anomaly_count("S")
    memory.start_session("S")
    again = memory.get_session("S")
    assert again["start_time"] == first["start_time"]
    assert again["anomaly_count"] == 1
    assert again["id"] == first["id"]


def test_end_without_figures_fills_them_from_current_metrics(memory):
    memory.start_session("S")
    for value in (10.0, 20.0, 30.0):
        memory.record_metric("current", value, "A")
        memory.record_metric("voltage", 200.0, "V")
        time.sleep(0.01)
    memory.end_session("S")
    s = memory.get_session("S")
    assert (s["min_current"], s["max_current"]) == (10.0, 30.0)
    assert s["avg_current"] == pytest.approx(20.0)
    assert s["total_energy"] is not None and s["total_energy"] > 0
    assert s["status"] == "COMPLETED"


def test_partial_figures_keep_what_was_given(memory):
    memory.start_session("S")
    memory.record_metric("current", 5.0, "A")
    memory.end_session("S", total_energy=99.0)
    s = memory.get_session("S")
    assert s["total_energy"] == 99.0
    assert s["avg_current"] == 5.0


def test_anomaly_counted_before_the_start_still_counts(memory):
    memory.increment_session_anomaly_count("S")
    memory.increment_session_anomaly_count("S")
    time.sleep(0.01)
    started_at = time.time()
    memory.start_session("S")
    s = memory.get_session("S")
    assert s["anomaly_count"] == 2
    assert s["start_time"] >= started_at
    assert s["status"] == "ACTIVE"


def test_other_processes_in_any_arrival_order(db_path, daemon):
    """A CP ends a session while the charger's metrics, sent earlier, arrive later."""
    cp = Publisher(db_path)
    charger = Publisher(db_path)
    t0 = time.time()
    cp.start_session("S", timestamp=t0)
    cp.end_session("S", timestamp=t0 + 10)
    assert cp.flush(10)
    for i, value in enumerate((8.0, 16.0)):
        charger.record_metric("current", value, "A", timestamp=t0 + 1 + i)
    charger.increment_session_anomaly_count("S", timestamp=t0 + 5)
    assert charger.flush(10)
    with MemoryBank(db_path) as memory:
        s = memory.get_session("S")
    assert (s["avg_current"], s["min_current"], s["max_current"]) == (12.0, 8.0, 16.0)
    assert s["anomaly_count"] == 1
    # PostgreSQL's timestamptz keeps microseconds: times round-trip to within 1 us.
    assert s["status"] == "COMPLETED"
    assert (s["start_time"], s["end_time"]) == pytest.approx((t0, t0 + 10), abs=1e-6)
    cp.close()
    charger.close()


def test_end_before_start_arrives(db_path, daemon):
    pub = Publisher(db_path)
    t0 = time.time()
    pub.record_metric("current", 4.0, "A", timestamp=t0 + 1)
    pub.end_session("S", timestamp=t0 + 2)
    pub.start_session("S", timestamp=t0)
    assert pub.flush(10)
    pub.close()
    with MemoryBank(db_path) as memory:
        s = memory.get_session("S")
    assert s["status"] == "COMPLETED"
    assert (s["start_time"], s["end_time"]) == pytest.approx((t0, t0 + 2), abs=1e-6)
    assert s["avg_current"] == 4.0


def test_pattern_frequency_ignores_key_order_and_latest_confidence_wins(memory):
    memory.record_pattern("CYCLE", {"a": 1, "b": [1, 2]}, confidence=0.2)
    memory.record_pattern("CYCLE", {"b": [1, 2], "a": 1}, confidence=0.7)
    memory.record_pattern("CYCLE", {"a": 2}, confidence=0.1)
    memory.record_pattern("OTHER", {"a": 1, "b": [1, 2]}, confidence=0.3)
    patterns = {(p["pattern_type"], p["frequency"]): p for p in memory.get_patterns()}
    merged = patterns[("CYCLE", 2)]
    assert merged["confidence"] == 0.7
    assert merged["pattern_data"] == {"a": 1, "b": [1, 2]}
    assert len(memory.get_patterns()) == 3
    assert len(memory.get_patterns(pattern_type="CYCLE")) == 2


class Level(enum.IntEnum):
    HIGH = 3


class Phase(enum.StrEnum):
    START = "START"


class Plain(enum.Enum):
    HIGH = "HIGH"


# Pattern data at the edges of how its key is made: (given, the same data spelled otherwise).
SPELLINGS = [
    ({"sequence": ["0A", "100A", "START", "STOP"]}, {"sequence": ("0A", "100A", "START", "STOP")}),
    (
        {"b": {"y": 1, "x": [2.5, None, True]}, "a": 1},
        {"a": 1, "b": {"x": [2.5, None, True], "y": 1}},
    ),
    ({"small": 1e-05, "tiny": -1.5e-07, "big": 1e16, "zero": -0.0}, None),
    ({"level": Level.HIGH, "phase": Phase.START}, {"level": 3, "phase": "START"}),
    ({"name": "Zählpunkt \x7f"}, None),
    ({10: "ten", 9: "nine"}, {9: "nine", 10: "ten"}),
    ({"at": datetime.date(2026, 11, 26), "count": 2**70}, None),
]


@pytest.mark.parametrize("given, respelled", SPELLINGS)
def test_a_patterns_key_is_its_data_as_the_standard_library_sorts_it(
    memory, db_path, given, respelled
):
    """The key is what makes the same data one pattern, across versions: a pattern recorded
    by an earlier version (its key the standard library's sorted text) keeps counting."""
    for data in (given, given, respelled or given):
        memory.record_pattern("EDGE", data)
    assert memory.flush()
    [(key, frequency)] = query(db_path, "SELECT pattern_key, frequency FROM patterns")
    expected = json.dumps(given, default=str, sort_keys=True, separators=(",", ":"))
    assert (key, frequency) == (expected, 3)


def test_a_plain_enum_in_pattern_data_is_keyed_by_its_stored_value(memory, db_path):
    memory.record_pattern("EDGE", {"severity": Plain.HIGH})
    memory.record_pattern("EDGE", {"severity": "HIGH"})
    assert memory.flush()
    [(key, frequency)] = query(db_path, "SELECT pattern_key, frequency FROM patterns")
    assert (key, frequency) == ('{"severity":"HIGH"}', 2)
    [pattern] = memory.get_patterns()
    assert pattern["pattern_data"] == {"severity": "HIGH"}


def test_time_is_the_callers(db_path, daemon):
    with MemoryBank(db_path) as memory:
        before = time.time()
        event_id = memory.log_event("E", "C", "m")
        after = time.time()
        time.sleep(0.3)
        event = memory.get_events()[0]
    assert event["id"] == event_id
    assert before <= event["timestamp"] <= after


def test_ids_come_back_at_once_and_become_row_ids(memory):
    ids = [memory.log_event("E", "C", str(i)) for i in range(100)]
    ids += [memory.record_anomaly("A", "LOW", str(i)) for i in range(10)]
    assert len(set(ids)) == 110 and ids == sorted(ids)
    stored = [e["id"] for e in memory.get_events(limit=1000)]
    stored += [a["id"] for a in memory.get_anomalies(limit=1000)]
    assert sorted(stored) == ids


def test_order_per_publisher(memory):
    for i in range(1, 51):
        memory.record_pattern("P", {"k": 1}, confidence=i / 100)
    memory.start_session("S")
    memory.end_session("S", 1.0, 2.0, 3.0, 4.0)
    memory.end_session("S", 5.0, 6.0, 7.0, 8.0)
    [pattern] = memory.get_patterns()
    assert (pattern["frequency"], pattern["confidence"]) == (50, 0.5)
    assert memory.get_session("S")["total_energy"] == 5.0


def test_reads_without_writes_do_not_wait_on_a_daemon(tmp_path):
    """No daemon and nothing written: reads answer at once, from no database at all."""
    db_path = tmp_path / "ev.db"
    with MemoryBank(db_path) as memory:
        assert memory.get_events() == []
        assert memory.get_dashboard_summary()["total_events"] == 0
    assert not db_path.exists()
