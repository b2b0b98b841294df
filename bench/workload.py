"""The benchmark's workload: one deterministic mix of records, used by every measurement.

60% events, 30% metrics, 8% anomalies, 2% session and pattern operations.
"""

from __future__ import annotations

import json
import time

MIX = 50  # records per cycle of the pattern below


def kind_of(i: int) -> str:
    k = i % MIX
    if k < 30:
        return "event"
    if k < 45:
        return "metric"
    if k < 49:
        return "anomaly"
    return "session" if (i // MIX) % 2 else "pattern"


def publish(pub, i: int) -> None:
    """One call on a Publisher or MemoryBank, as a CSMS or charge point makes it."""
    kind = kind_of(i)
    if kind == "event":
        pub.log_event("CAN_RX", "CP", "Current reading: 32A", {"can_id": "0x300", "i": i})
    elif kind == "metric":
        pub.record_metric("current", 32.0 + (i % 7), "A", {"connector_id": 1})
    elif kind == "anomaly":
        pub.record_anomaly(
            "CURRENT_LIMIT_FLUCTUATION", "HIGH", "0A -> 100A", {"cycle": i}, 100.0, 32.0
        )
    elif kind == "session":
        if (i // MIX) % 4 == 1:
            pub.start_session(f"TXN_{i // 200}")
        else:
            pub.increment_session_anomaly_count(f"TXN_{i // 200}")
    else:
        pub.record_pattern("ANOMALY_CYCLE", {"sequence": ["0A", "100A", "START", "STOP"]}, 0.9)


def raw_rows(n: int, base_id: int):
    """The same records as rows for a direct executemany (the ceiling)."""
    now = time.time()
    events, metrics, anomalies = [], [], []
    for i in range(n):
        kind = kind_of(i)
        ts = now + i * 1e-6
        if kind == "event":
            events.append(
                (
                    base_id + i,
                    ts,
                    "CAN_RX",
                    "CP",
                    "Current reading: 32A",
                    json.dumps({"can_id": "0x300", "i": i}),
                )
            )
        elif kind == "metric":
            metrics.append(
                (base_id + i, ts, "current", 32.0 + (i % 7), "A", json.dumps({"connector_id": 1}))
            )
        elif kind == "anomaly":
            anomalies.append(
                (
                    base_id + i,
                    ts,
                    "CURRENT_LIMIT_FLUCTUATION",
                    "HIGH",
                    "0A -> 100A",
                    json.dumps({"cycle": i}),
                    100.0,
                    32.0,
                    68.0,
                )
            )
    return events, metrics, anomalies
