"""The benchmark's workload: one deterministic mix of records, used by every measurement.

60% events, 30% metrics, 8% anomalies, 2% session and pattern operations.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

SEED_MODULE = Path(__file__).resolve().parent.parent / "tests" / "seed_reference" / "memory_bank.py"

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


def call(pub, i: int):
    """Call number ``i`` of the mix on a Publisher or MemoryBank, as (bound method, its
    arguments): what ``publish`` calls, split so that a measurement can time the call alone.
    Building the arguments (the ``data`` dict, the session's name) is the caller's own work,
    done with or without MemoryBank."""
    kind = kind_of(i)
    if kind == "event":
        return pub.log_event, ("CAN_RX", "CP", "Current reading: 32A", {"can_id": "0x300", "i": i})
    if kind == "metric":
        return pub.record_metric, ("current", 32.0 + (i % 7), "A", {"connector_id": 1})
    if kind == "anomaly":
        args = ("CURRENT_LIMIT_FLUCTUATION", "HIGH", "0A -> 100A", {"cycle": i}, 100.0, 32.0)
        return pub.record_anomaly, args
    if kind == "session":
        if (i // MIX) % 4 == 1:
            return pub.start_session, (f"TXN_{i // 200}",)
        return pub.increment_session_anomaly_count, (f"TXN_{i // 200}",)
    return pub.record_pattern, ("ANOMALY_CYCLE", {"sequence": ["0A", "100A", "START", "STOP"]}, 0.9)


def publish(pub, i: int) -> None:
    """One call on a Publisher or MemoryBank, as a CSMS or charge point makes it: the call
    ``call`` returns, made directly (unpacking a (method, arguments) pair costs about 1,600
    instructions a call (callgrind), a fifth of the call itself, which throughput runs would
    count)."""
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


def paced(rate: float, seconds: float):
    """Call numbers 0, 1, ... each yielded at its moment, ``rate`` a second for ``seconds``,
    as a CSMS or charge point paced by its I/O calls: asleep (GIL released) through a wait
    longer than 200 us, spinning through the last 100 us (at 10,000/s every wait is 100 us:
    the caller spins and never lets go of the GIL between calls)."""
    period = 1.0 / rate
    next_at = time.perf_counter()
    end = next_at + seconds
    i = 0
    while next_at < end:
        delay = next_at - time.perf_counter()
        if delay > 0.0002:
            time.sleep(delay - 0.0001)
        while time.perf_counter() < next_at:
            pass
        yield i
        i += 1
        next_at += period


PATTERN = {"sequence": ["0A", "100A", "START", "STOP"]}


def seed_memory_bank():
    """The seed's MemoryBank class (tests/seed_reference: a module named like ours)."""
    spec = importlib.util.spec_from_file_location("seed_memory_bank", SEED_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MemoryBank


def raw_batches(n: int, base_id: int, batch: int = 2000):
    """The same records as ``publish`` makes, as the rows and operations a daemon receives
    (wire form: anomalies without their deviation, which the store computes), ``batch``
    records at a time in workload order: (events, anomalies, metrics, operations)."""
    from memory_bank import wire

    now = time.time()
    pattern_json = json.dumps(PATTERN)
    pattern_key = json.dumps(PATTERN, sort_keys=True, separators=(",", ":"))
    events, anomalies, metrics, operations = [], [], [], []
    for i in range(n):
        kind = kind_of(i)
        ts = now + i * 1e-6
        row_id = base_id + i
        if kind == "event":
            data = json.dumps({"can_id": "0x300", "i": i})
            events.append([row_id, ts, "CAN_RX", "CP", "Current reading: 32A", data])
        elif kind == "metric":
            metadata = json.dumps({"connector_id": 1})
            metrics.append([row_id, ts, "current", 32.0 + (i % 7), "A", metadata])
        elif kind == "anomaly":
            data = json.dumps({"cycle": i})
            row = [row_id, ts, "CURRENT_LIMIT_FLUCTUATION", "HIGH", "0A -> 100A", data]
            anomalies.append(row + [100.0, 32.0])
        elif kind == "session":
            start = (i // MIX) % 4 == 1
            code = wire.OP_SESSION_START if start else wire.OP_SESSION_ANOMALY
            operations.append([code, ts, f"TXN_{i // 200}", row_id])
        else:
            pattern = [wire.OP_PATTERN, ts, "ANOMALY_CYCLE", pattern_json, pattern_key, 0.9]
            operations.append(pattern)
        if (i + 1) % batch == 0 or i == n - 1:
            yield events, anomalies, metrics, operations
            events, anomalies, metrics, operations = [], [], [], []


def arriving_parts(n: int, publishers: int, per_message: int = 400):
    """The workload's ``n`` records as ``publishers`` publishers send them, each numbering
    its own records from its own id block (as a daemon hands them out), ``per_message``
    records a message, interleaved round-robin as they arrive at the daemon:
    (publisher, message seq, (events, anomalies, metrics, operations)) per message."""
    streams = [
        enumerate(raw_batches(n // publishers, pub << 32, per_message), 1)
        for pub in range(1, publishers + 1)
    ]
    for group in zip(*streams, strict=True):
        for pub, (seq, part) in enumerate(group, 1):
            yield pub, seq, part


def publishers_batches(n: int, publishers: int, batch: int = 2000, per_message: int = 400):
    """``arriving_parts`` regrouped into transactions of ``batch`` records, as the daemon
    commits them: the rows SQLite gets from ``publishers`` publishers, whose id blocks put
    each table's inserts at as many places of its rowid B-tree (one block only appends)."""
    rows: tuple[list, list, list, list] = ([], [], [], [])
    count = 0
    for _, _, part in arriving_parts(n, publishers, per_message):
        for kept, more in zip(rows, part, strict=True):
            kept.extend(more)
        count += sum(map(len, part))
        if count >= batch:
            yield rows
            rows, count = ([], [], [], []), 0
    if count:
        yield rows
