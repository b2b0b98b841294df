#!/usr/bin/env python3
"""How long does ingest stall while retention deletes millions of rows, and during VACUUM?

    python bench/maintenance_stall.py --rows 5000000

Builds a database of old rows (through the store's own schema and batch applier), starts
the daemon, keeps a probe publisher writing one event and waiting for its commit every
20 ms (plus a steady background load), and runs retention then VACUUM through the daemon.
Prints, for idle / retention / vacuum: the probe's publish->committed latency (median,
p99, max) and the run's longest step. The longest stall of ingest is the max latency.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from memory_bank import Publisher, wire
from memory_bank.control import ControlClient, wait_for_daemon
from memory_bank.discovery import find_endpoints, resolve_db_path
from memory_bank.store.sqlite import SqliteStore


def build(db: Path, rows: int) -> None:
    store = SqliteStore(db, synchronous="OFF")
    old = time.time() - 10 * 86400
    pub = 1 << wire.ID_BLOCK_BITS
    chunk = 50_000
    seq = 0
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        events = [
            [pub + start + i, old + i * 1e-3, "CAN_RX", "CP", "reading", '{"i": 1}']
            for i in range(0, n, 2)
        ]
        metrics = [
            [pub + start + i, old + i * 1e-3, "current", 32.0, "A", None] for i in range(1, n, 2)
        ]
        seq += 1
        store.apply([wire.Message(1, seq, 0, events=events, metrics=metrics)], {})
    store.close()


class Probe(threading.Thread):
    """Writes one event and waits for its commit, every 20 ms, labelling each sample."""

    def __init__(self, db: Path):
        super().__init__(daemon=True)
        self.pub = Publisher(db)
        self.phase = "idle"
        self.samples: dict[str, list[float]] = {}
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            began = time.perf_counter()
            self.pub.log_event("PROBE", "BENCH", self.phase)
            self.pub.flush(120)
            self.samples.setdefault(self.phase, []).append(time.perf_counter() - began)
            time.sleep(0.02)


def load(db: Path, stop: threading.Event) -> None:
    """A steady background load of about 2,000 records/s."""
    pub = Publisher(db)
    while not stop.is_set():
        for _ in range(20):
            pub.record_metric("current", 32.0, "A")
        time.sleep(0.01)
    pub.close()


def summary(values: list[float]) -> dict:
    values = sorted(values)
    return {
        "samples": len(values),
        "median_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(values[int(len(values) * 0.99) - 1] * 1000, 1),
        "max_ms": round(values[-1] * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--dir")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="mb-stall-"))
    db = work / "stall.db"
    t = time.perf_counter()
    build(db, args.rows)
    print(
        f"built {args.rows} old rows in {time.perf_counter() - t:.0f}s "
        f"({os.path.getsize(db) / 1e6:.0f} MB)",
        flush=True,
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "memory_bank", "daemon", "--db", str(db), "--log-level", "WARNING"]
    )
    wait_for_daemon(db, timeout=60)
    stop = threading.Event()
    loader = threading.Thread(target=load, args=(db, stop), daemon=True)
    loader.start()
    probe = Probe(db)
    probe.start()
    time.sleep(5)
    runs = {}
    client = ControlClient(find_endpoints(resolve_db_path(db)).control)
    for job, fields in (("retention", {"days": 1}), ("vacuum", {})):
        probe.phase = job
        runs[job] = client.request(job, timeout=7200, **fields)["run"]
        probe.phase = f"after {job}"
        time.sleep(2)
    probe.stop = True
    stop.set()
    probe.join()
    loader.join()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait()
    result = {
        "rows": args.rows,
        "latency": {phase: summary(v) for phase, v in probe.samples.items()},
        "retention": {k: runs["retention"][k] for k in ("deleted", "longest_step_ms")}
        | {"seconds": round(runs["retention"]["finished"] - runs["retention"]["started"], 1)},
        "vacuum": {k: runs["vacuum"][k] for k in ("bytes_reclaimed", "longest_step_ms")}
        | {"seconds": round(runs["vacuum"]["finished"] - runs["vacuum"]["started"], 1)},
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
