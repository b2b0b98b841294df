#!/usr/bin/env python3
"""CPU time of the SQLite store's batch apply, in one process: the writer's hot path alone.

    python bench/store_apply.py                     # 200 batches of 1,000 records, 5 rounds
    python bench/store_apply.py --batches 20 --rounds 1    # small enough for callgrind

What a restructuring of the store must not slow down, measured so that a loaded, shared
machine distorts it little: the CPU time of the thread that calls ``SqliteStore.apply``
(``time.thread_time``; the checkpointer's thread and waits for the disk are left out), the
best of several rounds, each on a new database. The batches are the benchmark's workload
mix (bench/workload.py) as decoded messages, four publishers, with session ends that leave
their statistics to the store and a refused row now and then, so every part of ``apply``
runs: inserts, rollups, session and pattern upserts, computed session statistics, the
rejects insert and trim, and the watermark upsert. No socket, no msgpack, no daemon.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workload import MIX, kind_of  # noqa: E402

from memory_bank import wire  # noqa: E402
from memory_bank.store.sqlite import SqliteStore  # noqa: E402

PUBLISHERS = 4


def batches(count: int, size: int, start: float) -> list[wire.Message]:
    """``count`` messages of ``size`` records each, round robin over the publishers."""
    out = []
    seqs = dict.fromkeys(range(1, PUBLISHERS + 1), 0)
    for b in range(count):
        pub = b % PUBLISHERS + 1
        seqs[pub] += 1
        msg = wire.Message(publisher_id=pub, seq=seqs[pub])
        for j in range(size):
            i = b * size + j
            row_id = (pub << wire.ID_BLOCK_BITS) + i
            ts = start + i * 1e-3
            kind = kind_of(i)
            if kind == "event":
                msg.events.append(
                    [row_id, ts, "CAN_RX", "CP", "Current reading: 32A", json.dumps({"i": i})]
                )
            elif kind == "metric":
                name = ("current", "power", "voltage")[i % 3]
                msg.metrics.append([row_id, ts, name, 32.0 + i % 7, "A", None])
            elif kind == "anomaly":
                msg.anomalies.append(
                    [
                        row_id,
                        ts,
                        "CURRENT_LIMIT_FLUCTUATION",
                        "HIGH",
                        "0A -> 100A",
                        None,
                        100.0,
                        32.0,
                    ]
                )
            elif kind == "session":
                session = f"TXN_{i // (MIX * 4)}"
                if (i // MIX) % 4 == 1:
                    msg.operations.append([wire.OP_SESSION_START, ts, session, row_id])
                elif (i // MIX) % 4 == 3:  # statistics left to the store: computed
                    msg.operations.append(
                        [wire.OP_SESSION_END, ts, session, None, None, None, None, row_id]
                    )
                else:
                    msg.operations.append([wire.OP_SESSION_ANOMALY, ts, session, row_id])
            else:
                msg.operations.append(
                    [wire.OP_PATTERN, ts, "ANOMALY_CYCLE", '{"s":1}', '{"s":1}', 0.9]
                )
        out.append(msg)
    return out


def one_round(folder: Path, count: int, size: int) -> float:
    """CPU seconds of this thread applying every batch to a new database."""
    store = SqliteStore(folder / "apply.db")
    try:
        messages = batches(count, size, time.time() - 86400)
        watermarks: dict[int, int] = {}
        began = time.thread_time()
        for n, msg in enumerate(messages):
            rejects = [(time.time(), msg.publisher_id, "bench", "row")] if n % 10 == 0 else ()
            store.apply([msg], watermarks, rejects)
        return time.thread_time() - began
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--size", type=int, default=1000, help="records per batch")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            times.append(one_round(Path(tmp), args.batches, args.size))
    records = args.batches * args.size
    best = min(times)
    print(
        f"{records:,} records in {args.batches} batches: best {best:.3f} s CPU "
        f"({records / best:,.0f} records per CPU second), median {statistics.median(times):.3f} s "
        f"over {args.rounds} rounds"
    )


if __name__ == "__main__":
    main()
