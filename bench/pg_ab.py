#!/usr/bin/env python3
"""bench/run.py's PostgreSQL steps for two or more checkouts, alternated in the same minutes.

    python bench/pg_ab.py main=/tmp/main new=/tmp/new [--rounds 4] [--per-publisher 100000]

Each NAME=TREE is a checkout (``git archive main | tar -x -C /tmp/main``) run with its own
``bench/run.py``, ``tests/pg_server.py`` and ``src``: per round and tree (the order reversed
every other round), one new server with fsync on, then ``pg_ceiling`` (2,000 records per
commit), ``end_to_end`` with 4 publishers, and ``pg_ceiling`` again at the records per
commit the daemon reached (like for like), as ``run.postgresql`` does. Prints a JSON line
per run, then each tree's means: the rates, the ratios, and the CPU seconds per 100,000
records of the ceiling (process, server) and of end to end (publishers, daemon, server).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ONE_RUN = r"""
import json, shutil, sys, tempfile
from pathlib import Path
tree, per = sys.argv[1], int(sys.argv[2])
sys.path[:0] = [tree + "/bench", tree + "/tests"]
import run
from pg_server import PgServer
work = Path(tempfile.mkdtemp(prefix="mb-pg-ab-"))
server = PgServer(fsync=True)
try:
    c0 = server.cpu_seconds()
    top = run.pg_ceiling(server.create_database("ceiling"), 4 * per)
    c1 = server.cpu_seconds()
    e = run.end_to_end(work, 4, per, "pg-4", server.create_database("e2e"))
    c2 = server.cpu_seconds()
    per_commit = e["committed"] // max(e["batches"], 1)
    same = run.pg_ceiling(server.create_database("same"), 4 * per, per_commit)
finally:
    server.close()
    shutil.rmtree(work)
k = 100_000 / (4 * per)
print(json.dumps({
    "ceiling": top["records_per_second"], "end_to_end": e["records_per_second"],
    "ratio": e["records_per_second"] / top["records_per_second"],
    "per_commit": per_commit, "ceiling_same": same["records_per_second"],
    "ratio_same": e["records_per_second"] / same["records_per_second"],
    "sent": e["records"], "committed": e["committed"],
    "ceiling_process_cpu": top["cpu_seconds"] * k, "ceiling_server_cpu": (c1 - c0) * k,
    "publishers_cpu": e["publishers_cpu_seconds_per_100k"],
    "daemon_cpu": e["daemon_cpu_seconds_per_100k"], "server_cpu": (c2 - c1) * k,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", metavar="NAME=TREE")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-publisher", type=int, default=100_000)
    args = parser.parse_args()
    trees = dict(spec.split("=", 1) for spec in args.trees)
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
            tree = trees[name]
            out = subprocess.run(
                [sys.executable, "-c", ONE_RUN, tree, str(args.per_publisher)],
                env=dict(os.environ, PYTHONPATH=f"{tree}/src"),
                capture_output=True,
                text=True,
            )
            if out.returncode:
                sys.exit(f"{name}, round {r}: {out.stderr[-2000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(result)
            load = open("/proc/loadavg").read().split()[0]
            print(json.dumps({"round": r, "tree": name, "load": load, **result}), flush=True)
    for name, results in runs.items():
        means = {key: round(statistics.mean(x[key] for x in results), 3) for key in results[0]}
        print(name, "means:", json.dumps(means))


if __name__ == "__main__":
    main()
