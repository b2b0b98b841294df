#!/usr/bin/env python3
"""Fault injection: publishers keep sending while the daemon is killed, stopped or frozen.

    python scripts/fault_test.py --publishers 4 --records 200000 --kills 10
    python scripts/fault_test.py --mode outage --outage 60
    python scripts/fault_test.py --mode freeze --outage 10

At the end it waits until every publisher has finished and every spool is applied, then
prints sent, committed and duplicate counts and exits 1 unless sent == committed with no
duplicates. Modes: kill (SIGKILL + restart at random moments), outage (daemon stopped
for --outage seconds, then started), freeze (SIGSTOP for --outage seconds, then SIGCONT).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PUBLISHER = r"""
import json, sys, time
from memory_bank import Publisher
db, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pub = Publisher(db, close_timeout=float(sys.argv[4]))
ids, started = [], time.monotonic()
longest_call = 0.0
for i in range(n):
    t = time.perf_counter()
    k = i % 50
    if k < 30:
        ids.append(pub.log_event("CAN_RX", "CP", f"reading {i}", {"i": i}))
    elif k < 45:
        ids.append(pub.record_metric("current", float(i % 100), "A"))
    else:
        ids.append(pub.record_anomaly("SPIKE", "LOW", "spike", None, 1.0, 0.0))
    longest_call = max(longest_call, time.perf_counter() - t)
    if i % 1000 == 999:
        time.sleep(0.002)  # a lab's pace, so faults land mid-stream
json.dump({"ids": ids, "seconds": time.monotonic() - started, "longest_call": longest_call},
          open(out, "w"))
"""


def start_daemon(db: Path, log) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory_bank", "daemon", "--db", str(db), "--log-level", "WARNING"],
        stdout=log,
        stderr=log,
    )
    from memory_bank.control import wait_for_daemon

    wait_for_daemon(db, timeout=30)
    return proc


def stored_ids(db: Path) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [
            r[0]
            for t in ("events", "metrics", "anomalies")
            for r in conn.execute(f"SELECT id FROM {t}")
        ]
    finally:
        conn.close()


def run(args) -> dict:
    work = Path(args.dir or tempfile.mkdtemp(prefix="mb-faults-"))
    db = work / "faults.db"
    log = open(work / "daemon.log", "ab")
    rng = random.Random(args.seed)
    daemon = start_daemon(db, log)
    outs = [work / f"publisher{i}.json" for i in range(args.publishers)]
    pubs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PUBLISHER,
                str(db),
                str(args.records),
                str(o),
                str(args.close_timeout),
            ]
        )
        for o in outs
    ]
    faults = 0
    if args.mode == "kill":
        while faults < args.kills and any(p.poll() is None for p in pubs):
            time.sleep(rng.uniform(0.2, args.max_gap))
            daemon.kill()
            daemon.wait()
            time.sleep(rng.uniform(0.0, 0.5))
            daemon = start_daemon(db, log)
            faults += 1
    elif args.mode == "outage":
        time.sleep(0.5)
        daemon.terminate()
        daemon.wait()
        time.sleep(args.outage)
        daemon = start_daemon(db, log)
        faults = 1
    elif args.mode == "freeze":
        time.sleep(0.5)
        daemon.send_signal(signal.SIGSTOP)
        time.sleep(args.outage)
        daemon.send_signal(signal.SIGCONT)
        faults = 1
    codes = [p.wait() for p in pubs]
    # Publishers that closed while no daemon confirmed left spools: wait for their adoption.
    spool_root = db.with_name(db.name + "-spool")
    deadline = time.monotonic() + 120
    while spool_root.exists() and any(spool_root.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    daemon.terminate()
    daemon.wait()
    reports = [json.loads(o.read_text()) for o in outs]
    sent = [i for r in reports for i in r["ids"]]
    stored = stored_ids(db)
    return {
        "mode": args.mode,
        "faults": faults,
        "publishers_exit_codes": codes,
        "sent": len(sent),
        "committed": len(stored),
        "duplicates": len(stored) - len(set(stored)),
        "missing": len(set(sent) - set(stored)),
        "unexpected": len(set(stored) - set(sent)),
        "longest_publish_call_ms": round(max(r["longest_call"] for r in reports) * 1000, 3),
        "work_dir": str(work),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["kill", "outage", "freeze"], default="kill")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument(
        "--max-gap", type=float, default=3.0, help="longest wait between kills (seconds)"
    )
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--close-timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--dir", help="work folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    ok = (
        result["sent"] == result["committed"]
        and not result["duplicates"]
        and not result["missing"]
        and set(result["publishers_exit_codes"]) == {0}
    )
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
