#!/usr/bin/env python3
"""The dashboard's speed on the benchmark's database, in one run, headless Chromium.

    python bench/web.py                 # 10M rows as bench/run.py builds them (many minutes)
    python bench/web.py --quick         # a small database: keeps the benchmark working in CI
    python bench/web.py --json out.json

Builds the database as bench/run.py's read path does (4 publishers through a daemon), adds
a 7-day series of 1M 'voltage' points, serves it with `memorybank web`, and measures:
(1) first meaningful paint: navigation to the summary cards filled (and to the first chart)
in a fresh browser context; (2) every API call the page makes, p50/p99 over repeated calls,
and the server's CPU per call (a figure the machine's other load does not inflate); (3) the
7-day chart of 1M points: buckets drawn and rows behind them; (4) a record published with
the page open until its line shows in the live feed (publish -> commit -> tail -> SSE ->
page), p50/p99; (5) ingest with nobody following, with 20 plain SSE streams (remote browsers: the
daemon's tail and this machine's fan-out only) and with 20 headless Chromium pages
following live (their rendering on the same cores), alternated round by round, with the CPU
the web server, the daemon, the publishers and Chromium each used meanwhile.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from run import Daemon, end_to_end, percentile  # noqa: E402
from web_server import WebServer, launch_chromium  # noqa: E402

from memory_bank import Publisher  # noqa: E402

WEEK = 7 * 86400


def build(work: Path, rows: int, week_points: int) -> tuple[Path, Daemon]:
    """The read path's database, then a week of voltage; returns it with its daemon up.
    A database this run built before in ``work`` (--dir) is used again."""
    db = work / "web.db"
    done = work / "web.db-built"
    if done.exists() and done.read_text().split() == [str(rows), str(week_points)]:
        print(f"... using {db}, built before", file=sys.stderr)
        return db, Daemon(db)
    print(f"... building {rows:,} rows and a week of {week_points:,} points", file=sys.stderr)
    end_to_end(work, 4, rows // 4, "web", db)
    daemon = Daemon(db)
    now = time.time()
    with Publisher(db, close_timeout=600) as pub:
        for i in range(week_points):
            t = now - WEEK + (i + 0.5) * WEEK / week_points
            pub.record_metric("voltage", 230.0 + (i % 11) - 5, "V", timestamp=t)
        assert pub.flush(600), "the week of voltage was not committed"
    done.write_text(f"{rows} {week_points}")
    return db, daemon


def api_timings(url: str, repeat: int, server_pid: int | None = None) -> dict:
    """p50/p99 ms of each call the page makes, over a kept-alive connection, and the CPU ms
    the server spent per call (what the call costs whatever else loads the machine)."""
    parts = urlparse(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def get(path: str):
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (path, response.status, body[:200])
        return json.loads(body)

    session = get("/api/sessions?limit=1")
    session_path = f"/api/sessions/{session[0]['session_id']}" if session else None
    calls = [
        "/api/summary",
        "/api/status",
        "/api/metrics",
        "/api/events?limit=50",
        "/api/anomalies?limit=50",
        "/api/events?type=CAN_RX&component=CP&limit=50",
        "/api/anomalies?severity=HIGH&limit=50",
        "/api/sessions?limit=50",
        "/api/patterns?limit=50",
        "/api/metrics/current?since=10m&points=1200",
        "/api/metrics/current?since=1h&points=1200",
        "/api/metrics/current?since=24h&points=1200",
        "/api/metrics/voltage?since=7d&points=2000",
        *([session_path] if session_path else []),
    ]
    out = {}
    for path in calls:
        get(path)  # warm, as an open page is
        samples = []
        cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        for _ in range(repeat):
            t0 = time.perf_counter()
            get(path)
            samples.append((time.perf_counter() - t0) * 1000)
        out[path] = {"p50_ms": round(statistics.median(samples), 1),
                     "p99_ms": round(percentile(samples, 0.99), 1)}  # fmt: skip
        if server_pid:
            out[path]["server_cpu_ms"] = round((cpu_seconds(server_pid) - cpu0) * 1000 / repeat, 1)
    week = get("/api/metrics/voltage?since=7d&points=2000")
    conn.close()
    return {
        "calls": out,
        "worst_p99_ms": max(v["p99_ms"] for v in out.values()),
        "week_chart": {
            "buckets": len(week["buckets"]),
            "rows": sum(b["n"] for b in week["buckets"]),
            "bucket_seconds": week["bucket_seconds"],
        },
    }


def first_paint(browser, url: str, runs: int) -> dict:
    """ms from navigation to the summary cards filled, and to the first chart drawn."""
    summary, chart, contentful = [], [], []
    for _ in range(runs):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(url)
        page.wait_for_function(
            "performance.getEntriesByName('mb-chart').length > 0", polling=50, timeout=60000
        )
        marks = page.evaluate(
            "['mb-summary', 'mb-chart', 'first-contentful-paint'].map("
            "n => performance.getEntriesByName(n)[0]?.startTime ?? null)"
        )
        summary.append(marks[0])
        chart.append(marks[1])
        contentful.append(marks[2])
        context.close()
    return {
        "summary_cards_ms": {
            "median": round(statistics.median(summary)),
            "max": round(max(summary)),
        },
        "first_chart_ms": {"median": round(statistics.median(chart)), "max": round(max(chart))},
        "first_contentful_paint_ms": round(statistics.median(c for c in contentful if c)),
    }


WATCH = """() => {
  window.__seen = {};
  new MutationObserver(() => {
    for (const li of document.querySelectorAll('#feed li')) {
      const m = li.textContent.match(/probe (\\d+)/);
      if (m && !(m[1] in window.__seen)) window.__seen[m[1]] = Date.now();
    }
  }).observe(document.getElementById('feed'), {childList: true, subtree: true});
}"""


def open_following(browser, url: str, n: int) -> list:
    pages = []
    for _ in range(n):
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.goto(url)
        page.wait_for_function(
            "document.getElementById('live-status').textContent.startsWith('live:')",
            polling=100,  # not on animation frames: a page behind others gets few of them
            timeout=60000,
        )
        pages.append(page)
    return pages


def commit_to_page(page, db: Path, probes: int, interval: float) -> dict:
    """Publish probes with the page open; ms from the publish call to the line shown."""
    page.evaluate(WATCH)
    sent = {}
    with Publisher(db) as pub:
        for i in range(probes):
            sent[str(i)] = time.time()
            pub.log_event("BENCH_PROBE", "BENCH", f"probe {i}")
            time.sleep(interval)  # pacing the probes, not waiting for a result
        pub.flush(60)
    page.wait_for_function(
        f"Object.keys(window.__seen).length >= {probes}", polling=100, timeout=60000
    )
    seen = page.evaluate("window.__seen")
    latency = [(seen[k] / 1000 - t) * 1000 for k, t in sent.items()]
    return {
        "probes": probes,
        "p50_ms": round(percentile(latency, 0.5)),
        "p99_ms": round(percentile(latency, 0.99)),
        "max_ms": round(max(latency)),
    }


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chromium_pids() -> list[int]:
    """This benchmark's Chromium processes (the browser and its renderers, GPU and utility
    processes): descendants of this process run from a chromium binary."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    program = fh.read().split(b"\0", 1)[0]
            except OSError:
                continue
            if b"chrom" in os.path.basename(program):
                found.append(pid)
    return found


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except OSError:
            pass  # exited: its time is no longer readable
    return out


# 20 followers without a browser: what remote browsers cost this machine (the daemon's tail,
# the web process's fan-out and the streams), without 20 renderers sharing its cores.
STREAM_READERS = r"""
import http.client, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def follow():
    conn = http.client.HTTPConnection(host, port)
    conn.request("GET", "/api/stream", headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    while response.read1(65536):
        pass
threads = [threading.Thread(target=follow, daemon=True) for _ in range(n)]
for t in threads:
    t.start()
print("following", flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""


def start_followers(web: WebServer, label: str, browser) -> tuple[list, object]:
    if label == "20_browsers":
        return open_following(browser, web.url, 20), None
    if label == "20_streams":
        parts = urlparse(web.url)
        proc = subprocess.Popen(
            [sys.executable, "-c", STREAM_READERS, parts.hostname, str(parts.port), "20"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "following"
        return [], proc
    return [], None


def ingest_cost(work, db, daemon, web, browser, per_publisher: int, rounds: int) -> dict:
    """Ingest (4 publishers) with no follower, 20 plain SSE streams, and 20 browsers
    following live, alternated round by round; with the CPU each party used meanwhile
    (the web server, the daemon, the publishers, this run's Chromium processes), since
    here the browsers share the machine's cores with the server they follow."""
    labels = ("no_browser", "20_streams", "20_browsers")
    runs = {label: [] for label in labels}
    parties = ("web", "daemon", "publishers", "chromium")
    cpu = {label: dict.fromkeys(parties, 0.0) for label in labels}
    wall = dict.fromkeys(labels, 0.0)
    for _ in range(rounds):
        for label in labels:
            pages, readers = start_followers(web, label, browser)
            expected = 0 if label == "no_browser" else 20
            while web.get("/api/status")[2]["streams"] != expected:
                time.sleep(0.05)  # the readers' streams are being accepted
            web0, chromium0 = cpu_seconds(web.proc.pid), cpu_of(chromium_pids())
            t0 = time.perf_counter()
            result = end_to_end(work, 4, per_publisher, "web", db, daemon=daemon)
            wall[label] += time.perf_counter() - t0
            chromium1 = cpu_of(chromium_pids())
            used = cpu[label]
            used["web"] += cpu_seconds(web.proc.pid) - web0
            used["chromium"] += sum(t - chromium0.get(pid, 0.0) for pid, t in chromium1.items())
            records = result["records"] / 100_000
            used["daemon"] += result["daemon_cpu_seconds_per_100k"] * records
            used["publishers"] += result["publishers_cpu_seconds_per_100k"] * records
            streams = web.get("/api/status")[2]["streams"]
            assert streams == expected, f"{streams} streams open, {expected} expected"
            print(f"    {label}: {result['records_per_second']:,} rec/s", file=sys.stderr)
            for page in pages:
                page.context.close()
            if readers is not None:
                readers.stdin.close()
                readers.wait(timeout=60)
            runs[label].append(result["records_per_second"])
    base = statistics.mean(runs["no_browser"])
    return {
        "records_per_second": runs,
        **{
            f"ratio_{label}_vs_none": round(statistics.mean(runs[label]) / base, 3)
            for label in labels[1:]
        },
        "cores": os.cpu_count(),
        "cpu_seconds": {k: {p: round(v, 1) for p, v in used.items()} for k, used in cpu.items()},
        "wall_seconds": {k: round(v, 1) for k, v in wall.items()},
        # CPU used as a share of the machine's cores over the same time: where it went.
        "share_of_cores": {
            k: {p: round(v / (wall[k] * os.cpu_count()), 3) for p, v in used.items()}
            for k, used in cpu.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small database, for CI")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dir", help="work folder, kept (default: a temporary one, removed)")
    args = parser.parse_args()
    q = args.quick
    work = Path(args.dir or tempfile.mkdtemp(prefix="mb-bench-web-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, week_points = (20_000, 20_000) if q else (args.rows, 1_000_000)
    from playwright.sync_api import sync_playwright

    db, daemon = build(work, rows, week_points)
    web = WebServer(db)
    results: dict = {"quick": q, "rows": rows, "week_points": week_points}
    results["load_average_at_start"] = round(os.getloadavg()[0], 1)
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)

            def step(name, fn, *a):
                print(f"... {name}", file=sys.stderr, flush=True)
                results[name] = fn(*a)
                print(f"    {json.dumps(results[name])}", file=sys.stderr, flush=True)

            step("first_paint", first_paint, browser, web.url, 2 if q else 5)
            step("api", api_timings, web.url, 5 if q else 50, web.proc.pid)
            (page,) = open_following(browser, web.url, 1)
            step("commit_to_page", commit_to_page, page, db, 20 if q else 200, 0.05)
            page.context.close()
            per_publisher, rounds = (2_000, 1) if q else (250_000, 2)
            step("ingest", ingest_cost, work, db, daemon, web, browser, per_publisher, rounds)
            browser.close()
    finally:
        assert web.stop() == 0, "".join(web.output)
        daemon.stop()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    results["load_average_at_end"] = round(os.getloadavg()[0], 1)
    print_table(results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def print_table(r: dict) -> None:
    fp, api, ing = r["first_paint"], r["api"], r["ingest"]
    rows = [
        ("database", f"{r['rows']:,} rows + a week of {r['week_points']:,} voltage points"),
        ("load average (1 min), start / end",
         f"{r['load_average_at_start']} / {r['load_average_at_end']} on {os.cpu_count()} cores"),
        ("first meaningful paint (summary cards)",
         f"median {fp['summary_cards_ms']['median']} ms, max {fp['summary_cards_ms']['max']} ms"),
        ("first chart drawn",
         f"median {fp['first_chart_ms']['median']} ms, max {fp['first_chart_ms']['max']} ms"),
        ("API calls, worst p99", f"{api['worst_p99_ms']} ms"),
    ]  # fmt: skip
    for path, t in api["calls"].items():
        cpu = f", server CPU {t['server_cpu_ms']} ms a call" if "server_cpu_ms" in t else ""
        rows.append((f"  {path}", f"p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms{cpu}"))
    wk = api["week_chart"]
    rows.append(("7-day chart", f"{wk['rows']:,} points in {wk['buckets']:,} buckets "
                                f"of {wk['bucket_seconds']:g} s"))  # fmt: skip
    c = r["commit_to_page"]
    rows.append(("publish -> shown on an open page",
                 f"p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms ({c['probes']} probes)"))  # fmt: skip
    for label in ("no_browser", "20_streams", "20_browsers"):
        rate = ", ".join(f"{v:,}" for v in ing["records_per_second"][label])
        ratio = ing.get(f"ratio_{label}_vs_none")
        rows.append((f"ingest, {label.replace('_', ' ')}",
                     f"{rate} rec/s" + (f": {ratio}x of none" if ratio else "")))  # fmt: skip
    for label, share in ing["share_of_cores"].items():
        used = ing["cpu_seconds"][label]
        rows.append((f"  CPU during ingest, {label.replace('_', ' ')}",
                     ", ".join(f"{p} {used[p]} s ({share[p]:.0%})" for p in used)))  # fmt: skip
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    print(
        f"\nCPU shares are of this machine's {ing['cores']} cores over each ingest's time. The 20"
        " Chromium pages run on these same cores beside the daemon, the publishers and the web"
        " server: their ratio measures renderers competing for CPU, not what following costs"
        " the server. Browsers on other machines cost it what the 20 plain streams cost (the"
        " web server's and the daemon's CPU in that row)."
    )


if __name__ == "__main__":
    sys.exit(main())
