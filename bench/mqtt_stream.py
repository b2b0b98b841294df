#!/usr/bin/env python3
"""The MQTT stream alone: how fast ``MqttStream`` takes committed batches to a local
Mosquitto, with no daemon and no ingest beside it.

    python bench/mqtt_stream.py                 # from memory, the database, a pipe
    python bench/mqtt_stream.py --batches 50 --per-record
    python bench/mqtt_stream.py --sources pipe --rounds 3

The batches are about the benchmark's mix (bench/workload.py; 60% events, 32% metrics, 8%
anomalies, 2,000 records a batch), handed to the stream as the writer does after each
COMMIT (``put``: the rows in memory) or only logged (``logged``: read back from the
database by ``mb_stream_log``, as a stream does with its backlog), or handed to a stream
in a process of its own (``stream_process = true``) through its pipe, by the daemon's
side of it (``StreamProcess.put``: msgpack of the rows, as the daemon does after each
COMMIT). Reported: records acknowledged by the broker per second (from the first batch to
the last acknowledgement) and the CPU time per record of the process the stream runs in
(the stream's thread and paho's; for ``pipe``, the stream's process alone, from when it
is ready, so its start-up is not counted: the daemon's side of the pipe is left out).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from alerts import available_mosquitto, local_broker, process_cpu  # noqa: E402

from memory_bank.alerts import stream_log  # noqa: E402
from memory_bank.alerts.mqtt import MqttStream  # noqa: E402
from memory_bank.alerts.rules import Sink  # noqa: E402
from memory_bank.alerts.storage import SqliteReaders  # noqa: E402
from memory_bank.alerts.stream_process import StreamProcess  # noqa: E402
from memory_bank.store.schema import migrate  # noqa: E402

BATCH = 2000
AHEAD = 10  # batches handed to a stream process beyond where the broker acknowledged
INSERT = {
    "events": "INSERT INTO events (id, timestamp, event_type, component, message, data) "
    "VALUES (?, ?, ?, ?, ?, ?)",
    "metrics": "INSERT INTO metrics (id, timestamp, metric_name, metric_value, unit, "
    "metadata) VALUES (?, ?, ?, ?, ?, ?)",
    "anomalies": "INSERT INTO anomalies (id, timestamp, anomaly_type, severity, description, "
    "pattern_data, current_value, expected_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
}


def batch(b: int) -> dict[str, list[tuple]]:
    """Batch ``b`` of the mix, in the wire's row layout."""
    base, ts = b * BATCH, 1.7e9 + b
    events = [
        (
            base + i,
            ts,
            "CAN_RX",
            "CP",
            "Current reading: 32A",
            json.dumps({"can_id": "0x300", "i": i}),
        )
        for i in range(1200)
    ]
    metrics = [
        (base + 1200 + i, ts, "current", 32.0 + i % 7, "A", '{"connector_id": 1}')
        for i in range(640)
    ]
    anomalies = [
        (
            base + 1840 + i,
            ts,
            "CURRENT_LIMIT_FLUCTUATION",
            "HIGH",
            "0A -> 100A",
            '{"cycle": 5}',
            100.0,
            32.0,
        )
        for i in range(160)
    ]
    return {"events": events, "metrics": metrics, "anomalies": anomalies}


def run(work: Path, port: int, source: str, batches: int, per_record: bool) -> dict:
    db = work / f"{source}.db"
    conn = sqlite3.connect(db)
    migrate(conn)
    conn.executescript(stream_log.DDL)
    tables = [batch(b) for b in range(batches)]

    def commit(rows: dict[str, list[tuple]]) -> None:  # and log, as the writer does
        for table, sql in INSERT.items():
            conn.executemany(sql, rows[table])
        stream_log.append(conn, rows, set(INSERT))
        conn.commit()

    if source == "database":
        for rows in tables:
            commit(rows)
    sink = Sink(
        name="bench",
        type="mqtt",
        url=f"mqtt://127.0.0.1:{port}",
        stream=tuple(INSERT),
        timeout=30.0,
        stream_batch=not per_record,
    )
    if source == "pipe":
        stream = StreamProcess(sink, str(db), (1, 0)).start()
        while not stream.figures()["process"]["ready"]:
            time.sleep(0.001)
        pid = stream.figures()["process"]["pid"]
        cpu_time = lambda: process_cpu(pid) or 0.0  # noqa: E731
    else:
        stream = MqttStream(sink, SqliteReaders(db), (1, 0)).start()
        cpu_time = time.process_time
    cpu, start = cpu_time(), time.monotonic()
    for seq, rows in enumerate(tables, 1):
        if source == "database":
            stream.logged(seq, BATCH)
            continue
        # The pipe holds PIPE_HOLD bytes at most, past which batches are read back: at
        # most AHEAD batches beyond the broker's position, as an ingest at its speed.
        while source == "pipe" and seq - stream.position[0] > AHEAD:
            time.sleep(0.0005)
        if source == "pipe":  # what the pipe does not take is read back
            commit(rows)
        stream.put(seq, rows)
    while stream.position != (batches + 1, 0):
        time.sleep(0.001)
    seconds, cpu = time.monotonic() - start, cpu_time() - cpu
    read_back = stream.figures()["read_back"]
    stream.stop()
    conn.close()
    n = batches * BATCH
    return {
        "records_per_second": round(n / seconds),
        "cpu_us_per_record": round(cpu / n * 1e6, 1),
        "read_back": read_back,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--per-record", action="store_true", help="one message per record")
    parser.add_argument(
        "--sources", default="memory,database,pipe", help="of memory, database, pipe"
    )
    parser.add_argument("--rounds", type=int, default=1, help="each source this many times")
    args = parser.parse_args()
    if not available_mosquitto():
        print("mosquitto is not installed (apt-get install mosquitto)")
        return 1
    with local_broker("mb-bench-stream-") as broker:
        for n in range(args.rounds):
            for source in args.sources.split(","):
                work = broker.folder / f"round{n}"
                work.mkdir(exist_ok=True)
                out = run(work, broker.port, source, args.batches, args.per_record)
                print(
                    f"from {source}: {out['records_per_second']:,} records/s acknowledged, "
                    f"{out['cpu_us_per_record']} us CPU a record"
                    + (f", {out['read_back']:,} read back" if source == "pipe" else "")
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
