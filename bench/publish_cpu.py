#!/usr/bin/env python3
"""The caller's CPU per publish call (the benchmark mix), A/B between two source trees.

    python bench/publish_cpu.py                          # this tree only
    python bench/publish_cpu.py --other /tmp/main/src    # alternated with another tree

Each round starts a daemon of the tree measured on a fresh database and makes paced calls
(10,000/s, as run.py's call_latency) for ``--seconds``; around each call, the calling
thread's CPU time (``time.thread_time_ns``, its own cost subtracted) and the wall time. The
call is timed alone (``workload.call``: its arguments built before, as the caller's own
work) and, as before, with its arguments built (``*_with_args``: what ``workload.publish``
does). CPU time is what a shared machine leaves comparable: the wall tail is other load's.
Rounds alternate the trees so both see the same minutes.

Where the wall tail comes from: each call of 20 us or more is counted as one the calling
thread *ran* for (its CPU time at least half the wall: its own work, a garbage collection, or
time the hypervisor took from this VM, which the guest charges to the running thread) or one
it *waited* through (for the GIL, held by the sender thread, or for a CPU); ``gc`` counts the
slow calls during which a collection ran, and ``steal_pct`` is the share of the machine's CPU
time the hypervisor took during the round (``/proc/stat``). The sender's part: ``*_with_sender``
counts the calls that overlapped one of its stretches awake (from a poll's return to its next
poll), beside ``all_with_sender_pct``, the share of all calls that did (a tail the sender
causes overlaps it more often than that); ``*_waking`` the calls that woke it (an eventfd
write); ``--switch-interval`` sets the GIL's forced hand-off in the caller's process;
``over_20us_<call>`` counts the slow calls per call of the mix (``record_pattern`` is 1 call
in 100: were they all slow, the p99 would be theirs).

The machine's floor: each round also runs the same paced loop on a stand-in, a plain Python
loop of about the call's median CPU time, in a process with no publisher, no sender thread
and no daemon. Its tail is what the machine does to any few microseconds of Python at that
moment; the publisher's tail beyond it is what the publisher causes.

The machine's speed: ``reference_us`` is the CPU of a fixed bit of plain Python (small lists
and dicts in a loop, no publisher) in the calling process just before and after the round.
On the lab's VM the same code takes twice as long in some minutes as in others, call and
reference alike, so a round's ``cpu_p50_us`` is only comparable beside its reference.
``--caller-cpu N`` pins the calling process (the caller and the sender thread) to one CPU:
whether the call's CPU moves with the two threads sharing a core or not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
THIS_SRC = HERE.parent / "src"

WAIT = (
    "import sys\nfrom memory_bank.control import wait_for_daemon\nwait_for_daemon(sys.argv[1], 60)"
)
CALLER = r"""
import gc, json, os, statistics, sys, time
sys.path.insert(0, sys.argv[4])
from workload import call, paced
from memory_bank import Publisher
import zmq
db, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
cpu_clock, wall_clock = time.thread_time_ns, time.perf_counter_ns
# The sender thread's stretches awake: from a poll's return (the GIL taken back) to its
# next poll (its only poller here: ids are leased from the file). It holds the GIL through
# them, but in its socket calls, after each of which it waits to take it back.
stretches, returned = [], [None]
plain_poll = zmq.Poller.poll
def timed_poll(self, timeout=None):
    now = wall_clock()
    if returned[0] is not None:
        stretches.append((returned[0], now))
    try:
        return plain_poll(self, timeout)
    finally:
        returned[0] = wall_clock()
zmq.Poller.poll = timed_poll
# The calls that wake the sender (an eventfd write: a system call, and a wake-up of the
# other thread).
wakes = [0]
plain_write = os.eventfd_write
def counted_write(fd, value):
    wakes[0] += 1
    plain_write(fd, value)
os.eventfd_write = counted_write
sys.setswitchinterval(float(sys.argv[5]))  # the GIL's forced hand-off (5 ms by default)
if sys.argv[6] != "any":  # the calling process (caller and sender threads) on one CPU
    os.sched_setaffinity(0, {int(sys.argv[6])})
pub = Publisher(db, close_timeout=1)
own = []
for _ in range(20000):
    a = cpu_clock(); b = cpu_clock(); own.append(b - a)
own = statistics.median(own)
# The machine's speed now: a fixed bit of plain Python (a loop making small lists and dicts,
# no publisher), its median CPU over 2,000 runs, in ns.
def reference():
    took = []
    for _ in range(2000):
        c0 = cpu_clock()
        for i in range(20):
            x = [i, {"i": i}]
        took.append(cpu_clock() - c0 - own)
    return statistics.median(took)
reference_before = reference()
cpu, wall, cpu_args, wall_args, collected, spans, waking, kinds = [], [], [], [], [], [], [], []
collections = [0]
def count_collection(phase, info):
    if phase == "start":
        collections[0] += 1
gc.callbacks.append(count_collection)
for i in paced(rate, seconds):
    g0 = collections[0]; k0 = wakes[0]; w0 = wall_clock(); c0 = cpu_clock()
    method, args = call(pub, i)
    w1 = wall_clock(); c1 = cpu_clock()
    method(*args)
    c2 = cpu_clock(); w2 = wall_clock()
    cpu.append(c2 - c1 - own); wall.append(w2 - w1); collected.append(collections[0] != g0)
    cpu_args.append(c2 - c0 - 2 * own); wall_args.append(w2 - w0); spans.append((w1, w2))
    waking.append(wakes[0] != k0); kinds.append(method.__name__)
reference_after = reference()
flushed = pub.flush(30)
pub.close()
# Which calls overlapped a stretch of the sender (both in time order: one sweep).
overlapped, k = [], 0
for w1, w2 in spans:
    while k < len(stretches) and stretches[k][1] <= w1:
        k += 1
    overlapped.append(k < len(stretches) and stretches[k][0] < w2)
print(json.dumps({"cpu": cpu, "wall": wall, "cpu_args": cpu_args, "wall_args": wall_args,
                  "gc": collected, "sender": overlapped, "woke": waking, "flushed": flushed,
                  "kinds": kinds, "reference": [reference_before, reference_after],
                  "sender_stretch_us": sorted((b - a) / 1000 for a, b in stretches)}))
"""
# The machine's floor: the same paced loop around a plain Python loop of about ``target`` us
# of CPU (calibrated first), in a process with no publisher, no thread and no daemon.
FLOOR = r"""
import gc, json, statistics, sys, time
sys.path.insert(0, sys.argv[3])
from workload import paced
seconds, target = float(sys.argv[1]), float(sys.argv[2]) * 1000
cpu_clock, wall_clock = time.thread_time_ns, time.perf_counter_ns
own = []
for _ in range(20000):
    a = cpu_clock(); b = cpu_clock(); own.append(b - a)
own = statistics.median(own)
def stand_in(n):
    for _ in range(n):
        pass
n = 16
for _ in range(20):  # scale n until the stand-in's median is within 5% of the target
    took = []
    for _ in range(2000):
        c0 = cpu_clock(); stand_in(n); took.append(cpu_clock() - c0 - own)
    median = max(statistics.median(took), 1)
    if abs(median - target) <= 0.05 * target:
        break
    n = max(1, round(n * target / median))
cpu, wall, collected = [], [], []
collections = [0]
def count_collection(phase, info):
    if phase == "start":
        collections[0] += 1
gc.callbacks.append(count_collection)
for i in paced(10000, seconds):
    g0 = collections[0]; w0 = wall_clock(); c0 = cpu_clock()
    stand_in(n)
    c1 = cpu_clock(); w1 = wall_clock()
    cpu.append(c1 - c0 - own); wall.append(w1 - w0); collected.append(collections[0] != g0)
print(json.dumps({"cpu": cpu, "wall": wall, "gc": collected}))
"""


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def steal_ticks() -> tuple[int, int]:
    """(stolen, total) CPU ticks of the whole machine so far (/proc/stat's first line)."""
    with open("/proc/stat") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:]]
    return ticks[7], sum(ticks[:8])


@contextlib.contextmanager
def daemon_of(src: Path) -> Iterator[tuple[str, dict]]:
    """A daemon of ``src``'s tree on a fresh database, up for the block: (the database, the
    environment that runs ``src``'s code)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    with tempfile.TemporaryDirectory() as work:
        db = str(Path(work) / "bench.db")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "memory_bank", "daemon", "--db", db, "--log-level", "WARNING"],
            env=env,
        )
        try:
            subprocess.run([sys.executable, "-c", WAIT, db], env=env, check=True)
            yield db, env
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)


def one_round(src: Path, seconds: float, switch: str = "0.005", caller_cpu: str = "any") -> dict:
    with daemon_of(src) as (db, env):
        stolen_before, total_before = steal_ticks()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CALLER,
                db,
                str(seconds),
                "10000",
                str(HERE),
                switch,
                caller_cpu,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        stolen_after, total_after = steal_ticks()
    got = json.loads(out.stdout)
    figures = {"flushed": got["flushed"]}
    # The fixed reference's CPU before and after the round, averaged: the same code takes
    # twice as long in some minutes of this VM as in others, so a round's call is read
    # beside the machine's speed in that round.
    figures["reference_us"] = round(sum(got["reference"]) / 2000, 2)
    figures.update(tail_figures(got["cpu"], got["wall"], got["gc"], got["sender"], got["woke"]))
    # Which calls of the mix the slow ones were (each kind's share of the mix is fixed).
    for kind in sorted(set(got["kinds"])):
        figures[f"over_20us_{kind}"] = sum(
            1 for w, k in zip(got["wall"], got["kinds"], strict=True) if k == kind and w >= 20_000
        )
    stretch = got["sender_stretch_us"] or [0.0]
    figures["sender_stretches"] = len(got["sender_stretch_us"])
    figures["sender_stretch_p50_us"] = round(percentile(stretch, 0.5), 1)
    figures["sender_stretch_p99_us"] = round(percentile(stretch, 0.99), 1)
    with_args = tail_figures(got["cpu_args"], got["wall_args"], got["gc"])
    for key in ("cpu_p50_us", "wall_p50_us", "wall_p99_us", "wall_p999_us", "over_20us"):
        figures[f"{key}_with_args"] = with_args[key]
    stolen, ticks = stolen_after - stolen_before, max(total_after - total_before, 1)
    figures["steal_pct"] = round(100 * stolen / ticks, 1)
    return figures


def floor_round(seconds: float, target_us: float) -> dict:
    """The machine's floor at this moment: a stand-in of ``target_us`` of CPU, paced alike."""
    stolen_before, total_before = steal_ticks()
    out = subprocess.run(
        [sys.executable, "-c", FLOOR, str(seconds), str(target_us), str(HERE)],
        capture_output=True,
        text=True,
        check=True,
    )
    stolen_after, total_after = steal_ticks()
    got = json.loads(out.stdout)
    figures = tail_figures(got["cpu"], got["wall"], got["gc"])
    stolen, ticks = stolen_after - stolen_before, max(total_after - total_before, 1)
    figures["steal_pct"] = round(100 * stolen / ticks, 1)
    return figures


def tail_figures(
    cpu_ns: list[int],
    wall_ns: list[int],
    collected: list[bool],
    sender: list[bool] | None = None,
    woke: list[bool] | None = None,
) -> dict:
    """Medians and tail of one series of paced calls, and where its calls of 20 us or more
    spent their time (module docstring)."""
    cpu, wall = [ns / 1000 for ns in cpu_ns], [ns / 1000 for ns in wall_ns]
    slow = [k for k, w in enumerate(wall) if w >= 20]
    overlap = {}
    if sender is not None:
        overlap = {
            "all_with_sender_pct": round(100 * sum(sender) / max(len(sender), 1), 2),
            "over_20us_with_sender": sum(1 for k in slow if sender[k]),
            "waking_calls": sum(woke),
            "over_20us_waking": sum(1 for k in slow if woke[k]),
            "over_20us_ran_waking": sum(1 for k in slow if woke[k] and cpu[k] >= wall[k] / 2),
            "waking_wall_p50_us": round(
                statistics.median([w for w, k in zip(wall, woke, strict=True) if k] or [0]), 1
            ),
            "over_20us_ran_with_sender": sum(
                1 for k in slow if sender[k] and cpu[k] >= wall[k] / 2
            ),
        }
    return {
        "calls": len(cpu),
        "cpu_p50_us": round(statistics.median(cpu), 2),
        "cpu_mean_us": round(statistics.mean(cpu), 2),
        "wall_p50_us": round(percentile(wall, 0.5), 1),
        "wall_p99_us": round(percentile(wall, 0.99), 1),
        "wall_p999_us": round(percentile(wall, 0.999), 1),
        "over_20us": len(slow),
        "over_20us_ran": sum(1 for k in slow if cpu[k] >= wall[k] / 2),
        "over_20us_waited": sum(1 for k in slow if cpu[k] < wall[k] / 2),
        "over_20us_gc": sum(1 for k in slow if collected[k]),
        **overlap,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, help="another tree's src/ to alternate with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--switch-interval",
        default="0.005",
        help="the callers' sys.setswitchinterval (whether the tail moves with the GIL's hand-offs)",
    )
    parser.add_argument(
        "--caller-cpu",
        default="any",
        help="pin the calling process (caller and sender threads) to this CPU (default: any): "
        "whether the call's CPU moves with the two threads sharing a core",
    )
    args = parser.parse_args()
    # A tree without the package would silently run the installed one in its place.
    if args.other and not (args.other / "memory_bank" / "__init__.py").is_file():
        parser.error(f"--other {args.other}: no memory_bank package there (give a tree's src/)")
    if args.caller_cpu != "any" and (
        not args.caller_cpu.isdigit() or int(args.caller_cpu) not in os.sched_getaffinity(0)
    ):
        cpus = ", ".join(map(str, sorted(os.sched_getaffinity(0))))
        parser.error(f"--caller-cpu {args.caller_cpu}: not a CPU this process may use ({cpus})")
    trees = {"this": THIS_SRC, **({"other": args.other} if args.other else {})}
    results: dict[str, list[dict]] = {name: [] for name in (*trees, "floor")}
    for round_no in range(1, args.rounds + 1):
        for name, src in trees.items():
            figures = one_round(src, args.seconds, args.switch_interval, args.caller_cpu)
            results[name].append(figures)
            print(round_no, name, json.dumps(figures), flush=True)
        # The stand-in takes about this round's median call of this tree.
        figures = floor_round(args.seconds, results["this"][-1]["cpu_p50_us"])
        results["floor"].append(figures)
        print(round_no, "floor", json.dumps(figures), flush=True)
    for name, rounds in results.items():
        medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k != "flushed"}
        print(f"{name}: median of {len(rounds)} rounds: {json.dumps(medians)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
