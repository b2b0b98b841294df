#!/usr/bin/env python3
"""Where the daemon's wall time goes during bench/run.py's end-to-end step.

    python bench/daemon_profile.py                      # 4 publishers x 200,000 records
    python bench/daemon_profile.py --per-publisher 100000 --raw out.txt

Starts a daemon as bench/run.py does, samples it with py-spy (``pip install py-spy``;
``--idle``: a thread waiting in a system call is sampled too, so the shares are of wall
time) while ``end_to_end(work, N, per_publisher, ...)`` runs, and sorts each thread's
samples into what it was doing: the batch's statements, COMMIT, waiting for a COMMIT on
the store's thread, decoding and validating, waiting for messages. CPU figures hide the
last three; they decide whether overlapping work can help. To compare two checkouts, run
each in turn (PYTHONPATH=<checkout>/src) in the same minutes.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402

# (what, a test on the sampled stack) in the order they are tried; the first that holds
# names the sample. Frames are py-spy's "function (file:line)", the innermost last.
CATEGORIES = [
    ("waiting for messages", lambda s, leaf: "Daemon._loop" in s and "poll.py" in leaf),
    ("waiting for a COMMIT on the store's thread", lambda s, leaf: "Committing.result" in s),
    ("handing a COMMIT to the store's thread", lambda s, leaf: "_Committer.submit" in s),
    ("WAL truncation", lambda s, leaf: "Checkpointer.truncate" in s),
    ("COMMIT", lambda s, leaf: "_commit_error" in s or '"COMMIT"' in source_line(leaf)),
    ("waiting for a batch to commit", lambda s, leaf: "_Committer._run" in leaf),
    ("rollups", lambda s, leaf: "_roll_up" in s),
    ("session and pattern operations", lambda s, leaf: "_apply_operation" in s),
    ("the batch's inserts", lambda s, leaf: "SqliteStore._write" in leaf),
    ("decoding and validating", lambda s, leaf: "accept_raw" in s),
]


def source_line(frame: str) -> str:
    """The text of a sampled frame's line, read from the memory_bank this process imports
    (the daemon's own, under the same PYTHONPATH): main commits inside SqliteStore._write,
    and only its line tells the COMMIT from the inserts."""
    import linecache

    import memory_bank

    where = frame.rpartition("(")[2].rstrip(")")
    path, _, line = where.rpartition(":")
    if not path.startswith("memory_bank/") or not line.isdigit():
        return ""
    root = Path(memory_bank.__file__).parent.parent
    return linecache.getline(str(root / path), int(line))


def classify(stack: str) -> str:
    frames = stack.split(";")
    leaf = frames[-1]
    for name, test in CATEGORIES:
        if test(stack, leaf):
            return name
    return "other"


def breakdown(raw_file: Path) -> dict[str, Counter]:
    """Per thread, samples per category (py-spy's raw format: a stack and a count a line)."""
    threads: dict[str, Counter] = {}
    for line in raw_file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread = stack.split(";", 1)[0].split(": ", 1)[-1]
        threads.setdefault(thread, Counter())[classify(stack)] += int(count)
    return threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--per-publisher", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples a second")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw samples here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mb-profile-"))
    raw_file = args.raw or work / "samples.txt"
    db = work / "profile.db"
    daemon = run.Daemon(db)
    spy = subprocess.Popen(
        ["py-spy", "record", "--pid", str(daemon.proc.pid), "--idle", "--threads"]
        + ["--format", "raw"]
        + ["--rate", str(args.rate), "--nonblocking", "--output", str(raw_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = run.end_to_end(
            work, args.publishers, args.per_publisher, "profile", db=db, daemon=daemon
        )
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        daemon.stop()
    print(
        f"{result['records_per_second']:,} rec/s end to end, {result['committed']:,} committed, "
        f"daemon {result['daemon_cpu_seconds_per_100k']} CPU s / 100k"
    )
    for thread, counts in breakdown(raw_file).items():
        total = sum(counts.values())
        if thread not in ("MainThread", "memorybank-commit") or not total:
            continue
        print(f"\n{thread} ({total:,} samples, share of wall time):")
        for name, n in counts.most_common():
            print(f"  {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
