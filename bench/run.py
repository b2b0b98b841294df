#!/usr/bin/env python3
"""MemoryBank's benchmark: every figure in one run on this machine, reported as ratios.

    python bench/run.py                 # the full run (several minutes; 10M-row read path)
    python bench/run.py --quick         # a few seconds: keeps the benchmark working in CI
    python bench/run.py --json out.json

Measures: (1) the ceiling: the workload's records and operations applied with the store's
own statements in one process, as the daemon's store is set up (same schema, pragmas,
checkpoint thread, 2,000 records per transaction), and the daemon's own SqliteStore.apply
with and without its counters and rollups (what its extra work costs); (2) MemoryBank end
to end with 1, 4 and 8 publisher processes, 4 with a reader polling the summary, and 1 at
durability="disk" (rates on committed records; every flush() checked), and 4 again, three
times, each run beside its own ceiling (the two ingest ratios' median, with less of the
machine's drift in it); (3) the seed's
design (its own class: connect/insert/commit/close per call, the same workload) with 4
processes, with and without the same reader, counting every "database is locked";
(4) publish-call latency at a
paced 10,000 records/s, daemon up and absent, and daemon up at durability="disk", and the
caller's CPU per call beside a fixed reference of the machine's speed (publish_cpu.py); (4b)
what a spool token (CURVE) adds to each spooled message: its MAC; (5)
publish->queryable latency at half the maximum rate; (6) the daemon's peak RSS and CPU
seconds per 100,000 records; (7) the read path on a large database the daemon
built; (8) PostgreSQL: raw COPY of the same records in one process (its ceiling) against
end to end with 4 publishers through a daemon; (9) `memory-viewer --summary` and
`memorybank status` as new processes beside `python -c pass`. Absolute times drift on
shared machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workload import publishers_batches, raw_batches, seed_memory_bank  # noqa: E402

from memory_bank import wire  # noqa: E402
from memory_bank.control import daemon_stats, wait_for_daemon  # noqa: E402
from memory_bank.store import sqlite as store_sql  # noqa: E402
from memory_bank.store.sqlite import SqliteStore  # noqa: E402

PY = sys.executable


# -- helpers ------------------------------------------------------------------------------
class Daemon:
    def __init__(self, db: Path | str):
        self.db = db
        self.proc = subprocess.Popen(
            [PY, "-m", "memory_bank", "daemon", "--db", str(db), "--log-level", "WARNING"]
        )
        wait_for_daemon(db, timeout=60)

    def cpu_and_rss(self) -> tuple[float, float]:
        """(CPU seconds so far, peak RSS in MB) from /proc."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        with open(f"/proc/{self.proc.pid}/status") as fh:
            peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
        return cpu, peak / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


PUBLISHER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from workload import publish
from memory_bank import Publisher
db, n, start_at, durability = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[5]
pub = Publisher(db, close_timeout=300, durability=durability)
while time.time() < start_at:
    time.sleep(0.001)
first, startup_cpu = time.time(), time.process_time()
for i in range(n):
    publish(pub, i)
flushed = pub.flush(300)
print(json.dumps({"first_call": first, "acked": time.time(), "cpu": time.process_time(),
                  "startup_cpu": startup_cpu, "flushed": flushed}))
"""


# -- (1) the ceiling --
BATCH_ROWS = 2000  # the daemon's batch_rows: records per transaction on both sides


def _apply_raw(conn: sqlite3.Connection, events, anomalies, metrics, operations) -> None:
    """One batch as plain SQL in one transaction: the store's own statements, none of its
    bookkeeping (no counters, rollups, watermarks, id checks)."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(store_sql.INSERT_EVENTS, events)
    conn.executemany(store_sql.INSERT_ANOMALIES, anomalies)
    conn.executemany(store_sql.INSERT_METRICS, metrics)
    for op in operations:
        if op[0] == wire.OP_PATTERN:
            conn.execute(store_sql.PATTERN_UPSERT, op[1:6])
        elif op[0] == wire.OP_SESSION_START:
            conn.execute(store_sql.SESSION_START, op[1:4]).fetchall()
        else:
            conn.execute(store_sql.SESSION_ANOMALY, op[1:4])
    conn.execute("COMMIT")


def ceiling(work: Path, n: int, how: str = "raw", publishers: int = 4) -> dict:
    """What SQLite itself does with the workload in one process, as the daemon's store is
    set up: same schema and pragmas (WAL, synchronous=FULL, no autocheckpoint: a
    Checkpointer thread copies the WAL and it is truncated past max_wal_bytes between
    batches, as in the daemon), the same records and operations as ``publishers``
    publishers send them (each its own id block, messages interleaved as the daemon takes
    them: the end-to-end run with that many publishers stores exactly these rows), 2,000
    per transaction. ``how``: "raw" runs the store's statements only (the ceiling);
    "store" and "store-no-rollups" run the daemon's own SqliteStore.apply, with and
    without its counters and per-minute rollups, to show what the daemon's extra work
    costs. CPU includes the checkpoint thread on every side."""
    db = work / f"ceiling-{how}-{publishers}.db"
    batches = list(publishers_batches(n, publishers, BATCH_ROWS))
    store = SqliteStore(db)  # the same schema, indexes, pragmas and checkpoint thread
    if how == "raw":
        conn = sqlite3.connect(db, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
    elif how == "store-no-rollups":
        store._roll_up = lambda *rows: None
    watermarks: dict[int, int] = {}
    began, cpu_began = time.perf_counter(), time.process_time()
    for seq, batch in enumerate(batches, 1):
        if how == "raw":
            _apply_raw(conn, *batch)
            if store.checkpointer.due():  # the WAL's limit, as the daemon keeps it
                store.checkpointer.truncate(conn)
        else:
            store.apply([wire.Message(1, seq, 0, *batch)], watermarks)
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    if how == "raw":
        conn.close()
    store.close()
    return {
        "records": n,
        "ops": sum(len(b[3]) for b in batches),
        "batch_records": BATCH_ROWS,
        "seconds": round(seconds, 3),
        "records_per_second": round(n / seconds),
        "cpu_seconds_per_100k": round(cpu / n * 100_000, 3),
    }


# -- (2) end to end --
def end_to_end(
    work: Path,
    publishers: int,
    per_publisher: int,
    label: str,
    db: Path | str | None = None,
    durability: str = "memory",
    daemon: Daemon | None = None,
    with_reader: bool = False,
) -> dict:
    """Publishers -> daemon -> committed; a daemon given is left running. The rate counts
    the records the daemon committed while they ran, which must be every record sent
    (each publisher's flush() said so): the table flags a run where it is not."""
    db = db or work / f"e2e-{label}.db"
    own_daemon = daemon is None
    daemon = daemon or Daemon(db)
    cpu0, _ = daemon.cpu_and_rss()
    before = daemon_stats(db)
    committed0 = before["committed_records"]
    reader = SummaryReader(db, seed=False) if with_reader else None
    start_at = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [
                PY,
                "-c",
                PUBLISHER,
                str(db),
                str(per_publisher),
                repr(start_at),
                str(HERE),
                durability,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(publishers)
    ]
    try:
        reports = [json.loads(p.communicate(timeout=1800)[0]) for p in procs]
    finally:
        read = reader.stop() if reader else None
    cpu1, peak_mb = daemon.cpu_and_rss()
    after = daemon_stats(db)
    committed = after["committed_records"] - committed0
    if own_daemon:
        daemon.stop()
    sent = publishers * per_publisher
    first = min(r["first_call"] for r in reports)
    last = max(r["acked"] for r in reports)
    if committed != sent or not all(r["flushed"] for r in reports):
        print(
            f"WARNING end to end {label}: {sent:,} sent, {committed:,} committed, "
            f"{sum(not r['flushed'] for r in reports)} flush() timed out",
            file=sys.stderr,
        )
    return {
        "publishers": publishers,
        "records": sent,
        "committed": committed,
        "all_flushed": all(r["flushed"] for r in reports),
        # The daemon's transactions (it takes a backlog in batches up to its store's
        # batch_growth x batch_rows): records per commit, beside the ceiling's fixed one.
        "batches": after["batches"] - before["batches"],
        "seconds": round(last - first, 3),
        "records_per_second": round(committed / (last - first)),
        "daemon_cpu_seconds_per_100k": round((cpu1 - cpu0) / max(committed, 1) * 100_000, 3),
        "publishers_cpu_seconds_per_100k": round(
            sum(r["cpu"] for r in reports) / max(committed, 1) * 100_000, 3
        ),
        # Of which each process's start (interpreter, imports, the Publisher) before its
        # first call: a constant a process pays once, not a cost per record.
        "publishers_startup_cpu_seconds": round(sum(r["startup_cpu"] for r in reports), 3),
        "daemon_peak_rss_mb": round(peak_mb, 1),
        **({"reader_polls": read["polls"], "reader_locked": read["locked"]} if read else {}),
    }


def paired(work: Path, per_publisher: int, pairs: int) -> dict:
    """The two ingest ratios again, each 4-publisher end to end measured right beside its
    own ceiling, on fresh databases, ``pairs`` times (alternately ceiling first and end to
    end first). This VM's speed drifts by a fifth within minutes (the same statements'
    ceiling ran at 87,517 and 104,163 rec/s in two quiet runs of one code), so a ratio of
    two measurements minutes apart carries that drift, and a pair's two sides, seconds
    apart, carry less of it: the median of the pairs is the figure to read beside the
    single measurement."""
    out = []
    for k in range(pairs):
        folder = work / f"pair{k}"  # fresh databases for this pair, removed after it
        folder.mkdir()
        measure = {
            "ceiling": functools.partial(ceiling, folder, 4 * per_publisher),
            "end_to_end": functools.partial(end_to_end, folder, 4, per_publisher, "4"),
        }
        order = ("ceiling", "end_to_end") if k % 2 == 0 else ("end_to_end", "ceiling")
        sides = {side: measure[side]() for side in order}
        c, e = sides["ceiling"], sides["end_to_end"]
        out.append(
            {
                "ceiling_records_per_second": c["records_per_second"],
                "end_to_end_records_per_second": e["records_per_second"],
                "all_committed": e["committed"] == e["records"] and e["all_flushed"],
                "end_to_end_4_vs_ceiling": round(
                    e["records_per_second"] / c["records_per_second"], 3
                ),
                "daemon_cpu_per_record_vs_ceiling": round(
                    e["daemon_cpu_seconds_per_100k"] / c["cpu_seconds_per_100k"], 2
                ),
            }
        )
        shutil.rmtree(folder)
    return {
        "pairs": out,
        "end_to_end_4_vs_ceiling": statistics.median(p["end_to_end_4_vs_ceiling"] for p in out),
        "daemon_cpu_per_record_vs_ceiling": statistics.median(
            p["daemon_cpu_per_record_vs_ceiling"] for p in out
        ),
    }


# -- (3) the seed's design --
SEED_WRITER = r"""
import json, sqlite3, sys, time
sys.path.insert(0, sys.argv[4])
from workload import publish, seed_memory_bank
db, n, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stored = locked = refused = 0
while True:  # the seed's class: a connection per call, insert, commit, close
    try:
        memory = seed_memory_bank()(db)  # its constructor writes its schema: it can be locked out
        break
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        locked += 1
while time.time() < start_at:
    time.sleep(0.001)
began = time.time()
for i in range(n):
    try:
        publish(memory, i)
        stored += 1
    except sqlite3.IntegrityError:
        refused += 1  # the seed's start_session of a session another process started
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        locked += 1
print(json.dumps({"seconds": time.time() - began, "stored": stored, "locked": locked,
                  "refused": refused}))
"""

# The seed's reader: the dashboard summary every 100 ms through the design's own class (the
# seed's MemoryBank, or MemoryBank's), counting its own "database is locked" errors.
READER = r"""
import json, os, sqlite3, sys, time
db, stop_file, design = sys.argv[1], sys.argv[2], sys.argv[4]
sys.path.insert(0, sys.argv[3])
if design == "seed":
    from workload import seed_memory_bank
    open_memory = seed_memory_bank()  # its constructor writes its schema: it can be locked out
else:
    from memory_bank import MemoryBank as open_memory
memory = None
polls = locked = 0
while not os.path.exists(stop_file):
    try:
        memory = memory or open_memory(db)
        memory.get_dashboard_summary()
        polls += 1
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        locked += 1
    time.sleep(0.1)
print(json.dumps({"polls": polls, "locked": locked}))
"""


class SummaryReader:
    """A READER process polling ``db`` until stop() (which returns its counts)."""

    def __init__(self, db: Path | str, seed: bool):
        self.stop_file = Path(f"{db}.stop-reader")
        self.stop_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [PY, "-c", READER, str(db), str(self.stop_file), str(HERE), "seed" if seed else "ours"],
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> dict:
        self.stop_file.touch()
        out = self.proc.communicate(timeout=120)[0]
        self.stop_file.unlink(missing_ok=True)
        if self.proc.returncode:
            raise RuntimeError(f"the reader failed (exit {self.proc.returncode})")
        return json.loads(out)


def seed_design(work: Path, per_process: int, with_reader: bool) -> dict:
    """The seed's own class in 4 processes, each making the benchmark's workload of calls
    (the same mix as end to end), with or without the seed's reader."""
    db = work / f"seed-{with_reader}.db"
    seed_memory_bank()(str(db))  # its schema: a rollback journal (its default), AUTOINCREMENT
    start_at = time.time() + 1.0
    writers = [
        subprocess.Popen(
            [
                PY,
                "-c",
                SEED_WRITER,
                str(db),
                str(per_process),
                repr(start_at),
                str(HERE),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(4)
    ]
    reader = SummaryReader(db, seed=True) if with_reader else None
    try:
        results = [json.loads(w.communicate(timeout=3600)[0]) for w in writers]
    finally:
        read = reader.stop() if reader else {"polls": 0, "locked": 0}
    seconds = max(r["seconds"] for r in results)
    stored = sum(r["stored"] for r in results)
    return {
        "processes": 4,
        "with_reader": with_reader,
        "records": 4 * per_process,
        "stored": stored,
        "refused_session_starts": sum(r["refused"] for r in results),
        "database_is_locked": sum(r["locked"] for r in results),
        "reader_polls": read["polls"],
        "reader_locked": read["locked"],
        "seconds": round(seconds, 3),
        "records_per_second": round(stored / seconds),
    }


# -- (4) publish-call latency --
LATENCY = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from workload import call, paced
from memory_bank import Publisher
db, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
pub = Publisher(db, close_timeout=1, durability=sys.argv[5])
samples = []
clock = time.perf_counter_ns
for i in paced(rate, seconds):  # as a CSMS or charge point paced by its I/O calls
    method, args = call(pub, i)  # its arguments are the caller's own work: not timed
    t0 = clock()
    method(*args)
    samples.append(clock() - t0)
print(json.dumps(samples))
"""


def call_latency(work: Path, seconds: float, daemon_up: bool, durability: str = "memory") -> dict:
    db = work / f"latency-{daemon_up}-{durability}.db"
    daemon = Daemon(db) if daemon_up else None
    out = subprocess.run(
        [PY, "-c", LATENCY, str(db), str(seconds), "10000", str(HERE), durability],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if daemon:
        daemon.stop()
    samples = [ns / 1000 for ns in json.loads(out.stdout)]
    return {
        "daemon": "up" if daemon_up else "absent",
        "durability": durability,
        "calls": len(samples),
        "p50_us": round(percentile(samples, 0.50), 2),
        "p99_us": round(percentile(samples, 0.99), 2),
        "p999_us": round(percentile(samples, 0.999), 2),
        "max_us": round(max(samples), 1),
    }


def call_cpu(seconds: float) -> dict:
    """The caller's CPU per publish call (the call alone, the benchmark mix, paced 10,000/s,
    daemon up): one round of ``publish_cpu.py``, beside the machine's speed in that round
    (its fixed reference, whose CPU doubles in some minutes of this VM, the call's with it)."""
    from publish_cpu import one_round

    got = one_round(HERE.parent / "src", seconds)
    return {k: got[k] for k in ("calls", "cpu_p50_us", "cpu_mean_us", "reference_us")}


# -- (4b) the spool's MACs under CURVE --
def spool_mac_cost(work: Path, messages: int, rounds: int = 5) -> dict:
    """What a spool token (CURVE) adds to each spooled message: the same packed messages
    appended to a spool without and with a token, in alternating rounds (the best round of
    each, the least disturbed by other load); only the HMAC differs. No fsync: the CPU cost
    alone (durability="disk" adds its fsyncs to both). Sizes: ~10 records (a message at a
    paced 10,000/s) and ~512 (a full message)."""
    from memory_bank import spool, wire

    out = {}
    for records in (10, 512):
        events, _, metrics, _ = next(raw_batches(records, 1 << 32, records))
        rows = len(events) + len(metrics)
        raw = wire.encode(1, 1, 0, [list(r) for r in events], [], [list(r) for r in metrics], [])
        timings: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for signed in (False, True):
                target = spool.Spool(work / f"spool-mac-{records}-{signed}")
                if signed:
                    target.set_token("local", os.urandom(32))
                began = time.perf_counter()
                for seq in range(1, messages + 1):
                    target.append(seq, raw)
                timings[signed].append((time.perf_counter() - began) / messages)
                target.close(keep=False)
        plain, signed = (min(timings[k]) * 1e6 for k in (False, True))
        out[str(records)] = {
            "records_per_message": rows,
            "message_bytes": len(raw),
            "append_us": round(plain, 2),
            "append_with_mac_us": round(signed, 2),
            "mac_us_per_message": round(signed - plain, 2),
            "mac_ns_per_record": round((signed - plain) * 1000 / rows, 1),
            "with_mac_vs_plain": round(signed / plain, 2),
        }
    return out


# -- (5) publish -> queryable --
QUERYABLE = r"""
import json, sqlite3, sys, time
from memory_bank import Publisher
db, seconds, probes = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
pub = Publisher(db)
conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
lat = []
for k in range(probes):
    t0 = time.perf_counter()
    event_id = pub.log_event("PROBE", "BENCH", f"probe-{k}")
    while not conn.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone():
        time.sleep(0.0005)
    lat.append(time.perf_counter() - t0)
    time.sleep(seconds / probes)
print(json.dumps(lat))
"""

# Paced load: ``rate`` records/s for ``seconds``; prints what it sent and whether all of it
# was committed.
LOAD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from workload import publish
from memory_bank import Publisher
db, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
pub = Publisher(db, close_timeout=300)
i, end = 0, time.time() + seconds
next_at = time.perf_counter()
while time.time() < end:
    for _ in range(100):
        publish(pub, i)
        i += 1
    next_at += 100 / rate
    delay = next_at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
print(json.dumps({"sent": i, "flushed": pub.flush(300)}))
"""


def start_load(db: Path | str, seconds: float, rate: float) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-c", LOAD, str(db), str(seconds), str(rate), str(HERE)],
        stdout=subprocess.PIPE,
        text=True,
    )


def load_sent(loads: list[subprocess.Popen]) -> int:
    """Records the load processes sent; raises unless each saw all of its committed."""
    reports = [json.loads(load.communicate(timeout=600)[0]) for load in loads]
    if not all(r["flushed"] for r in reports):
        raise RuntimeError("a load process's flush() timed out: records not committed")
    return sum(r["sent"] for r in reports)


def queryable_latency(work: Path, rate: float, seconds: float, probes: int) -> dict:
    """A probe process writes an event and polls a read-only connection until it is
    there, while two load processes keep the daemon at ``rate`` records/s."""
    db = work / "queryable.db"
    daemon = Daemon(db)
    committed0 = daemon_stats(db)["committed_records"]
    loads = [start_load(db, seconds + 3, rate / 2) for _ in range(2)]
    time.sleep(1.0)
    out = subprocess.run(
        [PY, "-c", QUERYABLE, str(db), str(seconds), str(probes)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    sent = load_sent(loads)
    committed = daemon_stats(db)["committed_records"] - committed0 - len(json.loads(out.stdout))
    daemon.stop()
    lat = [v * 1000 for v in json.loads(out.stdout)]
    return {
        "rate_per_second": round(rate),
        "load_sent": sent,
        "load_committed": committed,
        "probes": len(lat),
        "p50_ms": round(percentile(lat, 0.5), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "max_ms": round(max(lat), 2),
    }


# -- (7) the read path --
def read_timings(memory) -> dict[str, float]:
    """Median ms of the seed's reads on ``memory`` (a MemoryBank or a store Reader)."""
    timings: dict[str, float] = {}
    hour_ago = time.time() - 3600
    cases = {
        "get_dashboard_summary": lambda: memory.get_dashboard_summary(),
        "get_metric_statistics(last hour)": lambda: memory.get_metric_statistics(
            "current", since=hour_ago
        ),
        "get_events(limit=50)": lambda: memory.get_events(limit=50),
        "get_events(type, component, limit=50)": lambda: memory.get_events(
            event_type="CAN_RX", component="CP", limit=50
        ),
        "get_anomalies(type)": lambda: memory.get_anomalies(
            anomaly_type="CURRENT_LIMIT_FLUCTUATION"
        ),
    }
    for name, call in cases.items():
        call()  # warm the cache, as a running viewer would have it
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
        timings[name] = round(statistics.median(samples) * 1000, 2)
    return timings


def read_path(work: Path, rows: int, publishers: int) -> dict:
    db = work / "reads.db"
    built = end_to_end(work, publishers, rows // publishers, "reads", db)["committed"]
    from memory_bank import MemoryBank

    with MemoryBank(db) as memory:
        timings = read_timings(memory)
    viewer = shutil.which("memory-viewer") or str(Path(PY).with_name("memory-viewer"))
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([viewer, "--db", str(db), "--summary"], capture_output=True, check=True)
        samples.append(time.perf_counter() - t0)
    timings["memory-viewer --summary (process)"] = round(statistics.median(samples) * 1000, 1)
    return {"rows": built, "median_ms": timings}


# -- (9) start-up of the commands people type --
def installed_bin(work: Path) -> Path:
    """The bin folder of a fresh venv in ``work`` holding MemoryBank as a user installs it:
    a plain ``pip install`` of this tree (pip's console-script wrappers, no editable
    install's .pth in site-packages, dependencies from the index)."""
    venv = work / "installed"
    subprocess.run([PY, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(HERE.parent)]
    subprocess.run(pip, check=True, stdout=subprocess.DEVNULL)
    return venv / "bin"


def startup_times(work: Path, runs: int, installed: bool = True) -> dict[str, float]:
    """Median wall time and CPU time (user + system) of each command as a new process
    (interpreter start included), against a running daemon's small database, beside
    ``python -c pass``. CPU time is the steadier figure on a loaded machine.

    The commands and the interpreter are those of a venv made by ``installed_bin``, as
    users run them (``installed``; the quick run uses the bench's own environment, an
    editable install in CI, which adds its src folder to sys.path: ~1M instructions of
    ~38M at ``python -c pass``). Bytecode caching is on, whatever the calling shell says
    (PYTHONDONTWRITEBYTECODE): with it off, every run compiles MemoryBank's modules
    again, which is not what a user's installed console script does; the warm-up run
    writes the caches."""
    db = work / "startup.db"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    bindir = installed_bin(work) if installed else Path(PY).parent
    daemon = Daemon(db)
    commands = {
        "python -c pass": [str(bindir / "python"), "-c", "pass"],
        "memory-viewer --summary": [str(bindir / "memory-viewer"), "--db", str(db), "--summary"],
        "memorybank status": [str(bindir / "memorybank"), "status", "--db", str(db)],
    }
    timings = {}
    try:
        for name, argv in commands.items():
            subprocess.run(argv, capture_output=True, check=True, env=env)  # warm the caches
            wall, cpu = [], []
            for _ in range(runs):
                t0 = time.perf_counter()
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
                _, status, usage = os.wait4(proc.pid, 0)
                wall.append(time.perf_counter() - t0)
                cpu.append(usage.ru_utime + usage.ru_stime)
                proc.returncode = os.waitstatus_to_exitcode(status)
                if proc.returncode:
                    raise RuntimeError(f"{name} failed (exit {proc.returncode})")
            timings[name] = round(statistics.median(wall) * 1000, 1)
            timings[f"{name} (CPU)"] = round(statistics.median(cpu) * 1000, 1)
    finally:
        daemon.stop()
    return timings


# -- the run ------------------------------------------------------------------------------------
# -- (8) the PostgreSQL store --
def pg_ceiling(url: str, n: int, batch_rows: int = BATCH_ROWS, publishers: int = 4) -> dict:
    """The store's own binary COPY (``copy_rows``, as the daemon's batches) in one process, on
    the rows ``publishers`` publishers send (each its own id block, interleaved as the daemon
    takes them: the end-to-end run stores exactly these rows), ``batch_rows``-record
    transactions (the daemon's batch_rows; or the records per commit the daemon reached),
    with the same session/pattern upserts in the workload's order: the ceiling on that
    store."""
    import datetime as dt

    import psycopg

    from memory_bank.store import postgresql as store_pg

    store_pg.PostgresStore(url).close()  # the same schema, partitions and indexes
    batches = list(publishers_batches(n, publishers, batch_rows))
    ops = sum(len(b[3]) for b in batches)
    utc = dt.UTC

    conn = psycopg.connect(url, autocommit=True)
    store_pg.register_json_text(conn)
    began = time.perf_counter()
    cpu_began = time.process_time()
    for events, anomalies, metrics, operations in batches:
        with conn.transaction(), conn.cursor() as cur:
            store_pg.copy_rows(cur, events, anomalies, metrics)
            with conn.pipeline():
                for op in operations:
                    ts = dt.datetime.fromtimestamp(op[1], utc)
                    if op[0] == wire.OP_PATTERN:
                        cur.execute(
                            store_pg.PATTERN_UPSERT,
                            {"ts": ts, "type": op[2], "data": op[3], "key": op[4],
                             "confidence": op[5]},
                        )  # fmt: skip
                    else:
                        start = op[0] == wire.OP_SESSION_START
                        sql = store_pg.SESSION_START if start else store_pg.SESSION_ANOMALY
                        cur.execute(sql, {"sid": op[2], "ts": ts, "id": op[3]})
    seconds = time.perf_counter() - began
    conn.close()
    return {"records": n, "ops": ops, "seconds": round(seconds, 3),
            "records_per_second": round(n / seconds),
            "cpu_seconds": time.process_time() - cpu_began}  # fmt: skip


def pg_read_path(url: str, rows: int) -> dict:
    """The seed's reads on a PostgreSQL database of ``rows`` rows over ten days (60% events,
    30% metrics, 8% anomalies), loaded in SQL: this measures reading, not writing."""
    import psycopg

    from memory_bank.store import open_reader
    from memory_bank.store import postgresql as store_pg

    store = store_pg.PostgresStore(url)
    today = int(time.time() // 86400)
    for table in ("events", "metrics", "anomalies"):
        store.partitions.ensure(store.conn, table, range(today - 11, today + 2))
    store.close()
    now, span = time.time(), 10 * 86400
    with psycopg.connect(url, autocommit=True) as conn:
        for sql, share in (
            ("INSERT INTO events (id, timestamp, event_type, component, message, data) "
             "SELECT g, to_timestamp(%(now)s - g %% %(span)s), 'CAN_RX', 'CP', "
             "'Current reading: 32A', jsonb_build_object('i', g) "
             "FROM generate_series(1, %(n)s) g", 0.6),
            ("INSERT INTO metrics (id, timestamp, metric_name, metric_value, unit) "
             "SELECT g, to_timestamp(%(now)s - g %% %(span)s), 'current', 32 + g %% 7, 'A' "
             "FROM generate_series(1, %(n)s) g", 0.3),
            ("INSERT INTO anomalies (id, timestamp, anomaly_type, severity, description, "
             "current_value, expected_value, deviation) "
             "SELECT g, to_timestamp(%(now)s - g %% %(span)s), 'CURRENT_LIMIT_FLUCTUATION', "
             "'HIGH', '0A -> 100A', 100, 32, 68 FROM generate_series(1, %(n)s) g", 0.08),
        ):  # fmt: skip
            conn.execute(sql, {"now": now, "span": span, "n": int(rows * share)})
        # The per-day counts a writer keeps with its batches (the summary reads them).
        day = "floor(extract(epoch FROM timestamp) / 86400)::int"
        for name, table in (("'events'", "events"), ("'anomalies'", "anomalies"),
                            ("'anomalies:' || severity", "anomalies")):  # fmt: skip
            conn.execute(
                f"INSERT INTO mb_day_counts (name, day, writer, n) SELECT {name}, {day}, "
                f"'bench', count(*) FROM {table} GROUP BY 1, 2"
            )
        conn.execute("VACUUM ANALYZE")
    reader = open_reader(url)
    try:
        assert reader.get_dashboard_summary()["total_events"] == int(rows * 0.6)
        timings = read_timings(reader)
    finally:
        reader.close()
    return {"rows": int(rows * 0.98), "median_ms": timings}


def postgresql(work: Path, per_publisher: int, read_rows: int) -> dict:
    """The ceiling and end to end with 4 publishers, on one PostgreSQL server started here
    (fsync on, as a real server runs)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from pg_server import PgServer, bindir

    if bindir() is None:
        return {"skipped": "PostgreSQL is not installed"}
    server = PgServer(fsync=True)
    try:
        ceiling_url = server.create_database("ceiling")
        e2e_url = server.create_database("e2e")
        cpu0 = server.cpu_seconds()
        top = pg_ceiling(ceiling_url, 4 * per_publisher)
        cpu1 = server.cpu_seconds()
        e2e = end_to_end(work, 4, per_publisher, "pg-4", e2e_url)
        cpu2 = server.cpu_seconds()
        # The daemon takes a backlog in larger batches than batch_rows: the ceiling again
        # at the records per commit it reached, so the two can be compared like for like.
        per_commit = e2e["committed"] // max(e2e["batches"], 1)
        same = pg_ceiling(server.create_database("ceiling_same"), 4 * per_publisher, per_commit)
        reads = pg_read_path(server.create_database("reads"), read_rows)
    finally:
        server.close()
    per_100k = 100_000 / (4 * per_publisher)
    top["server_cpu_seconds_per_100k"] = round((cpu1 - cpu0) * per_100k, 3)
    top["process_cpu_seconds_per_100k"] = round(top.pop("cpu_seconds") * per_100k, 3)
    e2e["server_cpu_seconds_per_100k"] = round((cpu2 - cpu1) * per_100k, 3)
    return {
        "ceiling": top,
        "end_to_end_4": e2e,
        "ratio": round(e2e["records_per_second"] / top["records_per_second"], 3),
        "ceiling_at_daemon_batches": {
            "batch_rows": per_commit,
            "records_per_second": same["records_per_second"],
        },
        "ratio_at_daemon_batches": round(e2e["records_per_second"] / same["records_per_second"], 3),
        "read_path": reads,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    parser.add_argument("--read-rows", type=int, default=10_000_000)
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed)")
    args = parser.parse_args()
    q = args.quick
    work = Path(args.dir or tempfile.mkdtemp(prefix="mb-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    per_pub = 2_000 if q else 200_000
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "quick": q,
        }
    }

    def step(name, fn, *a):
        print(f"... {name}", file=sys.stderr, flush=True)
        results[name] = fn(*a)

    step("startup", startup_times, work, 5 if q else 21, not q)
    step("ceiling", ceiling, work, 4 * per_pub)  # the rows 4 publishers send: the target's
    step("ceiling_1", ceiling, work, 4 * per_pub, "raw", 1)
    step("ceiling_8", ceiling, work, 4 * per_pub, "raw", 8)
    step("store_apply", ceiling, work, 4 * per_pub, "store")
    step("store_apply_no_rollups", ceiling, work, 4 * per_pub, "store-no-rollups")
    for n in (1, 4, 8):
        step(f"end_to_end_{n}", end_to_end, work, n, 4 * per_pub // n, str(n))
    step("paired", paired, work, per_pub, 1 if q else 3)
    step("end_to_end_4_with_reader", end_to_end, work, 4, per_pub, "4-reader", None, "memory",
         None, True)  # fmt: skip
    seed_n = 200 if q else 1_000  # the seed's class fsyncs every call: ~50-700 rec/s
    step("seed_design", seed_design, work, seed_n, False)
    step("seed_design_with_reader", seed_design, work, seed_n, True)
    step("publish_call_daemon_up", call_latency, work, 1 if q else 20, True)
    step("publish_call_daemon_absent", call_latency, work, 1 if q else 20, False)
    # durability="disk": every message written to the spool before it is sent, fsync'd
    # every 5 ms. Same workload and pacing as the lines above; only the setting differs.
    step("publish_call_durability_disk", call_latency, work, 1 if q else 20, True, "disk")
    step("publish_call_cpu", call_cpu, 1 if q else 8)
    step("end_to_end_1_durability_disk", end_to_end, work, 1, 4 * per_pub, "1-disk", None, "disk")
    step("spool_mac", spool_mac_cost, work, 200 if q else 5_000)
    max_rate = results["end_to_end_4"]["records_per_second"]
    step(
        "publish_to_queryable",
        queryable_latency,
        work,
        max_rate / 2,
        2 if q else 30,
        20 if q else 500,
    )
    step("read_path", read_path, work, 20_000 if q else args.read_rows, 4)
    step("postgresql", postgresql, work, per_pub, 20_000 if q else args.read_rows)

    e2e4 = results["end_to_end_4"]["records_per_second"]
    ceiling_rate = results["ceiling"]["records_per_second"]
    results["ratios"] = {
        "end_to_end_4_vs_ceiling": round(e2e4 / results["ceiling"]["records_per_second"], 3),
        "end_to_end_1_vs_ceiling": round(
            results["end_to_end_1"]["records_per_second"]
            / results["ceiling_1"]["records_per_second"],
            3,
        ),
        "end_to_end_8_vs_ceiling": round(
            results["end_to_end_8"]["records_per_second"]
            / results["ceiling_8"]["records_per_second"],
            3,
        ),
        "end_to_end_1_durability_disk_vs_memory": round(
            results["end_to_end_1_durability_disk"]["records_per_second"]
            / results["end_to_end_1"]["records_per_second"],
            3,
        ),
        "end_to_end_4_vs_seed_design": round(
            e2e4 / max(results["seed_design"]["records_per_second"], 1), 1
        ),
        "end_to_end_4_with_reader_vs_seed_design_with_reader": round(
            results["end_to_end_4_with_reader"]["records_per_second"]
            / max(results["seed_design_with_reader"]["records_per_second"], 1),
            1,
        ),
        "store_apply_vs_ceiling": round(
            results["store_apply"]["records_per_second"] / ceiling_rate, 3
        ),
        "store_apply_no_rollups_vs_ceiling": round(
            results["store_apply_no_rollups"]["records_per_second"] / ceiling_rate, 3
        ),
        "daemon_cpu_per_record_vs_ceiling": round(
            results["end_to_end_4"]["daemon_cpu_seconds_per_100k"]
            / results["ceiling"]["cpu_seconds_per_100k"],
            2,
        ),
        # The same two ratios, the median of end-to-end runs each beside its own ceiling.
        "end_to_end_4_vs_ceiling_paired": results["paired"]["end_to_end_4_vs_ceiling"],
        "daemon_cpu_per_record_vs_ceiling_paired": results["paired"][
            "daemon_cpu_per_record_vs_ceiling"
        ],
    }
    print_table(results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(r: dict) -> None:
    top = r["ceiling"]
    rows = [
        (
            f"ceiling: the store's SQL, 2,000/transaction, 1 process, {label}",
            f"{c['records_per_second']:,} rec/s, {c['cpu_seconds_per_100k']} CPU s / 100k",
        )
        for c, label in (
            (top, "the rows of 4 publishers"),
            (r["ceiling_1"], "of 1 publisher (one id block: appends only)"),
            (r["ceiling_8"], "of 8 publishers"),
        )
    ]
    for key, label in (
        ("store_apply", "daemon's store apply (+counters, rollups, watermarks)"),
        ("store_apply_no_rollups", "daemon's store apply without counters/rollups"),
    ):
        a = r[key]
        rows.append(
            (
                label,
                f"{a['records_per_second']:,} rec/s "
                f"({a['records_per_second'] / top['records_per_second']:.2f}x ceiling), "
                f"{a['cpu_seconds_per_100k']} CPU s / 100k",
            )
        )
    for key, label in (
        *((f"end_to_end_{n}", f"end to end, {n} publisher(s)") for n in (1, 4, 8)),
        ("end_to_end_4_with_reader", "end to end, 4 publishers + reader"),
    ):
        e = r[key]
        lost = (
            ""
            if e["committed"] == e["records"] and e["all_flushed"]
            else (f"  INCOMPLETE: {e['committed']:,} of {e['records']:,} committed")
        )
        reader = (
            f", reader {e['reader_locked']} 'database is locked' in {e['reader_polls']} polls"
            if "reader_polls" in e
            else ""
        )
        # each against the ceiling on the rows its own publishers send
        own = r[{"end_to_end_1": "ceiling_1", "end_to_end_8": "ceiling_8"}.get(key, "ceiling")]
        rows.append(
            (
                label,
                f"{e['records_per_second']:,} rec/s  "
                f"({e['records_per_second'] / own['records_per_second']:.2f}x ceiling){reader}"
                f"{lost}",
            )
        )
    for key, label in (
        ("seed_design", "seed design, 4 processes"),
        ("seed_design_with_reader", "seed design, 4 processes + reader"),
    ):
        s = r[key]
        reader = (
            f"; reader {s['reader_locked']} in {s['reader_polls']} polls"
            if s["with_reader"]
            else ""
        )
        rows.append(
            (
                label,
                f"{s['records_per_second']:,} rec/s, writers "
                f"{s['database_is_locked']} 'database is locked'{reader}",
            )
        )
    for name, ms in r["startup"].items():
        rows.append((f"startup as a new process: {name}", f"{ms} ms (median)"))
    e = r["end_to_end_1_durability_disk"]
    rows.append(
        (
            "end to end, 1 publisher, durability=disk",
            f"{e['records_per_second']:,} rec/s  "
            f"({e['records_per_second'] / r['end_to_end_1']['records_per_second']:.2f}x "
            "durability=memory)",
        )
    )
    for key in (
        "publish_call_daemon_up",
        "publish_call_daemon_absent",
        "publish_call_durability_disk",
    ):
        c = r[key]
        rows.append(
            (
                f"publish call @10k/s, daemon {c['daemon']}, durability={c['durability']}",
                f"p50 {c['p50_us']} us, p99 {c['p99_us']} us, p99.9 {c['p999_us']} us",
            )
        )
    for k, pair in enumerate(r["paired"]["pairs"]):
        rows.append(
            (
                f"paired {k + 1}: 4 publishers end to end / its own ceiling, beside it",
                f"{pair['end_to_end_records_per_second']:,} / "
                f"{pair['ceiling_records_per_second']:,} rec/s "
                f"({pair['end_to_end_4_vs_ceiling']}x; daemon CPU "
                f"{pair['daemon_cpu_per_record_vs_ceiling']}x)"
                + ("" if pair["all_committed"] else "  NOT ALL COMMITTED"),
            )
        )
    c = r["publish_call_cpu"]
    rows.append(
        (
            "publish call @10k/s, the caller's CPU (daemon up)",
            f"p50 {c['cpu_p50_us']} us, mean {c['cpu_mean_us']} us "
            f"(the machine's reference: {c['reference_us']} us)",
        )
    )
    for size, m in r["spool_mac"].items():
        rows.append(
            (
                f"spool append, ~{size} records/message, +MAC (CURVE)",
                f"{m['append_us']} -> {m['append_with_mac_us']} us/message "
                f"({m['with_mac_vs_plain']}x; +{m['mac_ns_per_record']} ns/record)",
            )
        )
    pq = r["publish_to_queryable"]
    rows.append(
        (
            f"publish -> queryable @{pq['rate_per_second']:,}/s",
            f"p50 {pq['p50_ms']} ms, p99 {pq['p99_ms']} ms",
        )
    )
    e4 = r["end_to_end_4"]
    rows.append(
        (
            "daemon (4 publishers)",
            f"peak RSS {e4['daemon_peak_rss_mb']} MB, "
            f"{e4['daemon_cpu_seconds_per_100k']} CPU s / 100k records "
            f"({r['ratios']['daemon_cpu_per_record_vs_ceiling']}x the ceiling's)",
        )
    )
    for name, ms in r["read_path"]["median_ms"].items():
        rows.append((f"read {name} ({r['read_path']['rows']:,} rows)", f"{ms} ms"))
    for name, value in r["ratios"].items():
        rows.append((name.replace("_", " "), f"{value}x"))
    pg = r.get("postgresql", {})
    if "skipped" in pg:
        rows.append(("postgresql", pg["skipped"]))
    elif pg:
        rows.append((f"postgresql ceiling: the store's COPY of 4 publishers' rows, 1 process, "
                     f"{BATCH_ROWS:,} per commit",
                     f"{pg['ceiling']['records_per_second']:,} rec/s"))  # fmt: skip
        same = pg["ceiling_at_daemon_batches"]
        rows.append(
            (
                "postgresql end to end, 4 publishers",
                f"{pg['end_to_end_4']['records_per_second']:,} rec/s  "
                f"({pg['ratio']:.2f}x its ceiling), {same['batch_rows']:,} records per commit",
            )
        )
        rows.append(
            (
                f"postgresql ceiling at {same['batch_rows']:,} records per commit",
                f"{same['records_per_second']:,} rec/s  (end to end "
                f"{pg['ratio_at_daemon_batches']:.2f}x of it)",
            )
        )
        c, e = pg["ceiling"], pg["end_to_end_4"]
        rows.append(
            (
                "postgresql CPU s / 100k records",
                f"ceiling: process {c['process_cpu_seconds_per_100k']} + server "
                f"{c['server_cpu_seconds_per_100k']}; end to end: publishers "
                f"{e['publishers_cpu_seconds_per_100k']} + daemon "
                f"{e['daemon_cpu_seconds_per_100k']} + server {e['server_cpu_seconds_per_100k']}",
            )
        )
        for name, ms in pg["read_path"]["median_ms"].items():
            rows.append((f"postgresql read {name} ({pg['read_path']['rows']:,} rows)", f"{ms} ms"))
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


if __name__ == "__main__":
    sys.exit(main())
