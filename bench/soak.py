#!/usr/bin/env python3
"""Soak: the daemon at half its maximum rate for 10 minutes, with a reader polling.

    python bench/soak.py                          # 10 minutes at half the rate measured first
    python bench/soak.py --minutes 2 --rate 40000 --json soak.json

Two paced publisher processes share the load; a reader polls the dashboard summary every
100 ms through MemoryBank (as a viewer or the dashboard would). Every 10 s it samples the
daemon's and the publishers' resident memory (RSS) and the database and WAL file sizes,
then reports each process's RSS slope over the run after the first minute (target: flat,
within 5 MB over the run) and the WAL's size over time (bounded by daemon.max_wal_bytes
plus what arrives between two checkpoints). Every record sent must be committed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import Daemon, SummaryReader, end_to_end, load_sent, start_load  # noqa: E402

from memory_bank.control import daemon_stats  # noqa: E402

SAMPLE_SECONDS = 10.0
WARMUP_SECONDS = 60.0  # caches, batches and buffers reach their working size first
FLAT_MB = 5.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def file_mb(path: str) -> float:
    try:
        return os.path.getsize(path) / 1e6
    except OSError:
        return 0.0


def fitted_growth(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope (MB per minute) and what it amounts to over the span (MB)."""
    n = len(points)
    if n < 2:
        return 0.0, 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    slope = sum((t - mt) * (v - mv) for t, v in points) / var if var else 0.0
    return slope * 60, slope * (points[-1][0] - points[0][0])


def soak(work: Path, minutes: float, rate: float) -> dict:
    db = work / "soak.db"
    daemon = Daemon(db)
    committed0 = daemon_stats(db)["committed_records"]
    reader = SummaryReader(db, seed=False)
    seconds = minutes * 60
    loads = [start_load(db, seconds, rate / 2) for _ in range(2)]
    samples = []
    began = time.time()
    while any(load.poll() is None for load in loads):
        row = {
            "t": round(time.time() - began, 1),
            "daemon_rss_mb": round(rss_mb(daemon.proc.pid), 1),
            "publisher_rss_mb": [
                round(rss_mb(load.pid), 1) if load.poll() is None else None for load in loads
            ],
            "db_mb": round(file_mb(str(db)), 1),
            "wal_mb": round(file_mb(f"{db}-wal"), 1),
        }
        samples.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        time.sleep(SAMPLE_SECONDS)
    sent = load_sent(loads)
    read = reader.stop()
    committed = daemon_stats(db)["committed_records"] - committed0
    daemon.stop()
    steady = [s for s in samples if s["t"] >= WARMUP_SECONDS] or samples
    series = {"daemon": [(s["t"], s["daemon_rss_mb"]) for s in steady]}
    for k in range(len(loads)):
        series[f"publisher {k + 1}"] = [
            (s["t"], s["publisher_rss_mb"][k])
            for s in steady
            if s["publisher_rss_mb"][k] is not None
        ]
    rss = {}
    for name, points in series.items():
        per_minute, growth = fitted_growth(points)
        rss[name] = {
            "from_t": points[0][0] if points else None,
            "first_mb": points[0][1] if points else None,
            "last_mb": points[-1][1] if points else None,
            "slope_mb_per_minute": round(per_minute, 3),
            "fitted_growth_mb": round(growth, 2),
            "flat": abs(growth) <= FLAT_MB,
        }
    return {
        "minutes": minutes,
        "rate_per_second": round(rate),
        "sent": sent,
        "committed": committed,
        "reader_polls": read["polls"],
        "reader_locked": read["locked"],
        "rss": rss,
        "wal_max_mb": max(s["wal_mb"] for s in samples),
        "wal_last_mb": samples[-1]["wal_mb"],
        "db_last_mb": samples[-1]["db_mb"],
        "samples": samples,
    }


def print_report(r: dict) -> None:
    print(
        f"soak: {r['minutes']} min at {r['rate_per_second']:,} rec/s with a reader; "
        f"{r['sent']:,} sent, {r['committed']:,} committed; reader "
        f"{r['reader_locked']} 'database is locked' in {r['reader_polls']} polls"
    )
    for name, g in r["rss"].items():
        print(
            f"  RSS {name:<12} {g['first_mb']} -> {g['last_mb']} MB from t={g['from_t']}s, "
            f"slope {g['slope_mb_per_minute']} MB/min = {g['fitted_growth_mb']} MB over the run "
            f"({'flat' if g['flat'] else 'NOT flat'} within {FLAT_MB} MB)"
        )
    print(
        f"  WAL max {r['wal_max_mb']} MB, last {r['wal_last_mb']} MB; database {r['db_last_mb']} MB"
    )
    print("  t(s)  daemon MB  publishers MB  WAL MB  db MB")
    for s in r["samples"]:
        pubs = " ".join("-" if v is None else str(v) for v in s["publisher_rss_mb"])
        print(f"  {s['t']:>5}  {s['daemon_rss_mb']:>9}  {pubs:>13}  {s['wal_mb']:>6}  {s['db_mb']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--rate", type=float, help="records/s in total (default: half of 4 publishers' maximum)"
    )
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mb-soak-"))
    rate = args.rate
    if rate is None:
        print("... measuring the maximum rate (4 publishers)", file=sys.stderr, flush=True)
        rate = end_to_end(work, 4, 50_000, "soak-max")["records_per_second"] / 2
    result = soak(work, args.minutes, rate)
    print_report(result)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    ok = result["committed"] == result["sent"] and all(g["flat"] for g in result["rss"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
