"""The lab with real clients: an OCPP 1.6 CSMS and charge point (the `ocpp` package over
websockets) and a charger on python-can's virtual bus; and code written for the seed's
API, unchanged, as three processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

BIN = Path(sys.executable).parent

EVENT_TYPES = {
    "OCPP_BOOT",
    "OCPP_COMMAND",
    "OCPP_SET_PROFILE",
    "OCPP_REMOTE_START",
    "OCPP_REMOTE_STOP",
    "CAN_TX",
    "CAN_RX",
    "ANOMALY_CYCLE_START",
}


def test_demo_runs_the_lab_and_the_tables_hold_it(tmp_path):
    db = tmp_path / "lab.db"
    result = subprocess.run(
        [str(BIN / "memorybank"), "demo", "--seconds", "20", "--cycle", "4", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert "MemoryBank summary" in result.stdout and "Sessions" in result.stdout

    conn = sqlite3.connect(db)
    types = {r[0] for r in conn.execute("SELECT DISTINCT event_type FROM events")}
    assert EVENT_TYPES <= types
    assert not conn.execute("SELECT count(*) FROM events WHERE event_type = 'ERROR'").fetchone()[0]
    cycles = conn.execute(
        "SELECT count(*) FROM events WHERE event_type = 'ANOMALY_CYCLE_START'"
    ).fetchone()[0]
    assert cycles >= 4
    anomalies = conn.execute(
        "SELECT count(*) FROM anomalies WHERE anomaly_type = 'CURRENT_LIMIT_FLUCTUATION'"
    ).fetchone()[0]
    completed = conn.execute(
        "SELECT session_id, avg_current, max_current, min_current, total_energy, anomaly_count "
        "FROM sessions WHERE status = 'COMPLETED'"
    ).fetchall()
    # One anomaly per cycle that reached 100 A; every completed transaction has statistics
    # computed from the charger's current, and carries its cycle's anomaly.
    assert cycles - 1 <= anomalies <= cycles
    assert len(completed) >= 3
    for session_id, avg, high, low, energy, anomaly_count in completed:
        assert session_id.startswith("TXN_")
        assert avg is not None and 20 < high <= 34 and low >= 0 and energy > 0
        assert anomaly_count == 1
    assert len({s[0] for s in completed}) == len(completed)  # ids from the CSMS, unique
    [(frequency,)] = conn.execute(
        "SELECT frequency FROM patterns WHERE pattern_type = 'ANOMALY_CYCLE'"
    ).fetchall()
    assert frequency == len(completed)
    readings = conn.execute("SELECT count(*) FROM events WHERE event_type = 'CAN_RX'").fetchone()[0]
    currents = conn.execute(
        "SELECT count(*) FROM metrics WHERE metric_name = 'current'"
    ).fetchone()[0]
    assert readings == currents > 20


SEED_CSMS = """
from memory_bank import MemoryBank

memory = MemoryBank("{db}")
cp_id, model, vendor = "CP_1", "SimCharger", "MemoryBank"
for cycle in range(1, 4):
    # Log boot notification
    memory.log_event(
        "OCPP_BOOT",
        "CSMS",
        f"Charge point {{cp_id}} connected",
        {{"cp_id": cp_id, "model": model, "vendor": vendor}}
    )

    # Record anomaly during cycle
    memory.record_anomaly(
        "CURRENT_LIMIT_FLUCTUATION",
        "HIGH",
        f"Rapid charging limit change: 0A → 100A",
        {{"cycle": cycle, "cp_id": cp_id}},
        current_value=100.0,
        expected_value=32.0
    )

    # Record learned pattern
    memory.record_pattern(
        "ANOMALY_CYCLE",
        {{"sequence": ["0A", "100A", "START", "STOP"]}},
        confidence=1.0
    )
"""

SEED_CP = """
from memory_bank import MemoryBank

memory = MemoryBank("{db}")
for transaction_id in (101, 102, 103):
    # Log CAN transmission
    memory.log_event(
        "CAN_TX",
        "CP",
        "START command sent to charger",
        {{"can_id": "0x200", "data": []}}
    )
    memory.start_session(f"TXN_{{transaction_id}}")
    for current in (30, 31, 32):
        # Log CAN reception and record metric
        memory.log_event(
            "CAN_RX",
            "CP",
            f"Current reading: {{current}}A",
            {{"can_id": "0x300", "current": current}}
        )
        memory.record_metric("current", float(current), "A")
    memory.end_session(f"TXN_{{transaction_id}}")
"""

SEED_PLOTTER = """
import json
from memory_bank import MemoryBank
from datetime import datetime, timedelta

memory = MemoryBank("{db}")

# Get statistics for display
stats = memory.get_metric_statistics(
    "current",
    since=datetime.now() - timedelta(minutes=1)
)

# Show historical anomalies
anomalies = memory.get_anomalies(
    since=datetime.now() - timedelta(minutes=2),
    limit=20
)
print(json.dumps({{"stats": stats, "anomalies": len(anomalies)}}))
"""


def test_seed_integration_examples_run_unchanged_as_three_processes(db_path, daemon):
    def run(snippet: str) -> subprocess.CompletedProcess:
        code = textwrap.dedent(snippet.format(db=db_path))
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )

    writers = [
        subprocess.Popen([sys.executable, "-c", s.format(db=db_path)]) for s in (SEED_CSMS, SEED_CP)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    plotter = run(SEED_PLOTTER)
    assert plotter.returncode == 0, plotter.stderr
    import json

    seen = json.loads(plotter.stdout)
    assert seen["anomalies"] == 3
    assert seen["stats"]["count"] == 9 and seen["stats"]["avg"] == 31.0
    conn = sqlite3.connect(db_path)
    sessions = conn.execute(
        "SELECT session_id, avg_current, status FROM sessions ORDER BY session_id"
    ).fetchall()
    assert sessions == [(f"TXN_{t}", 31.0, "COMPLETED") for t in (101, 102, 103)]
    assert conn.execute("SELECT frequency FROM patterns").fetchall() == [(3,)]
