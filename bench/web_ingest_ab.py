#!/usr/bin/env python3
"""The ingest step of bench/web.py for two versions of the web server, alternated.

    python bench/web_ingest_ab.py OLD_SRC NEW_SRC --dir DIR [--rounds 2] [--per-publisher N]

OLD_SRC and NEW_SRC are source trees holding a ``memory_bank`` package (for example
``git archive main src | tar -x -C /tmp/old`` gives /tmp/old/src); each `memorybank web`
runs from its own, over the same daemon and database (DIR as bench/web.py --dir builds it:
copy a built one). Each round, for each server in turn (the order reversed every other
round): ingest with no stream, then with 20 plain SSE streams; the CPU of the web server,
the daemon, the publishers and the stream readers meanwhile, and the batches committed.
``--latency N``: then N probes published -> shown on one Chromium page, per server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import web as bench_web  # noqa: E402
from run import end_to_end  # noqa: E402

PARTIES = ("web", "daemon", "publishers", "readers")


def last_batch(server) -> int:
    return int(server.get("/api/status")[2]["last_event_id"].rsplit("-", 1)[1])


def ingest(work, db, daemon, server, streams: bool, per_publisher: int) -> dict:
    _, readers = bench_web.start_followers(server, "20_streams" if streams else "no_browser", None)
    expected = 20 if streams else 0
    while server.get("/api/status")[2]["streams"] != expected:
        time.sleep(0.05)  # the readers' streams are being accepted
    batch0, web0 = last_batch(server), bench_web.cpu_seconds(server.proc.pid)
    readers0 = bench_web.cpu_seconds(readers.pid) if readers else 0.0
    t0 = time.perf_counter()
    result = end_to_end(work, 4, per_publisher, "web", db, daemon=daemon)
    records = result["records"] / 100_000
    used = {
        "web": bench_web.cpu_seconds(server.proc.pid) - web0,
        "daemon": result["daemon_cpu_seconds_per_100k"] * records,
        "publishers": result["publishers_cpu_seconds_per_100k"] * records,
        "readers": bench_web.cpu_seconds(readers.pid) - readers0 if readers else 0.0,
    }
    out = {
        "rate": result["records_per_second"],
        "wall": time.perf_counter() - t0,
        "batches": last_batch(server) - batch0,
        "cpu": used,
    }
    assert server.get("/api/status")[2]["streams"] == expected
    if readers is not None:
        readers.stdin.close()
        readers.wait(timeout=60)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_src")
    parser.add_argument("new_src")
    parser.add_argument("--dir", required=True, help="a folder holding a built database")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-publisher", type=int, default=250_000)
    parser.add_argument("--latency", type=int, default=0, help="probes per server and round")
    args = parser.parse_args()
    sides = {"old": args.old_src, "new": args.new_src}
    db, daemon = bench_web.build(Path(args.dir), 10_000_000, 1_000_000)
    runs: dict = {f"{s}/{k}": [] for s in sides for k in ("none", "20_streams")}
    latency: dict = {s: [] for s in sides}
    browser = playwright = None
    if args.latency:
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        browser = bench_web.launch_chromium(playwright)
    try:
        for r in range(args.rounds):
            order = list(sides.items())
            for side, src in order if r % 2 == 0 else order[::-1]:
                server = bench_web.WebServer(db, env={"PYTHONPATH": src})
                try:
                    for label in ("none", "20_streams"):
                        run = ingest(
                            Path(args.dir), db, daemon, server, label != "none", args.per_publisher
                        )
                        runs[f"{side}/{label}"].append(run)
                        print(
                            f"    round {r} {side}/{label}: {run['rate']:,} rec/s", file=sys.stderr
                        )
                    if browser is not None:
                        (page,) = bench_web.open_following(browser, server.url, 1)
                        latency[side].append(bench_web.commit_to_page(page, db, args.latency, 0.05))
                        page.context.close()
                finally:
                    assert server.stop() == 0, "".join(server.output)
    finally:
        daemon.stop()
        if browser is not None:
            browser.close()
            playwright.stop()
    results = {
        "rates": {k: [run["rate"] for run in v] for k, v in runs.items()},
        "ratio_20_streams_vs_none": {
            s: round(
                statistics.mean(run["rate"] for run in runs[f"{s}/20_streams"])
                / statistics.mean(run["rate"] for run in runs[f"{s}/none"]),
                3,
            )
            for s in sides
        },
        "cpu_seconds": {
            k: {p: round(sum(run["cpu"][p] for run in v), 1) for p in PARTIES}
            for k, v in runs.items()
        },
        "batches": {k: sum(run["batches"] for run in v) for k, v in runs.items()},
        "wall_seconds": {k: round(sum(run["wall"] for run in v), 1) for k, v in runs.items()},
        "web_cpu_ms_per_batch": {
            k: round(
                1000
                * sum(run["cpu"]["web"] for run in v)
                / max(1, sum(run["batches"] for run in v)),
                2,
            )
            for k, v in runs.items()
        },
        "commit_to_page": latency,
        "load_average_at_end": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
