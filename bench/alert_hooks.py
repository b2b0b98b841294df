#!/usr/bin/env python3
"""The daemon's own CPU for alerts and the stream, hook by hook, under bench/alerts.py's
ingest with the default configuration (five rules, ``stream_batch``, ``stream_process``).

    python bench/alert_hooks.py                              # this source, 3 runs
    python bench/alert_hooks.py --against /work/main/src --runs 6

The daemon's whole CPU per record swings with the machine's load by more than the alerts
cost it; the time its main thread spends in the engine's hooks (``AlertEngine.stage``
inside each batch's transaction, ``committed`` after its COMMIT, ``tick`` between batches)
and in what they call is the steadier figure. The daemon is started through this file
(``--wrap``), which wraps those functions with ``time.thread_time()`` before running
``python -m memory_bank`` and writes the sums to a JSON file when the daemon exits: the
daemon's own code is the same as without it. ``--against SRC`` alternates runs of another
source (``PYTHONPATH=SRC``, e.g. main's ``git archive``) with this one. Reported: median
µs of thread CPU per record for each, and the daemon's CPU per record as bench/alerts.py
counts it (all its threads), and each of its threads' CPU over the daemon's life (the
main thread, the COMMIT's, the stream's feeding and supervising threads, the sinks'
workers: ``time.thread_time()`` as each ends). Needs Mosquitto.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMES_ENV = "MB_HOOK_TIMES"  # where the wrapped daemon writes its sums

# (module, class or None, function, label): what is timed in the daemon.
TIMED = [
    ("memory_bank.alerts.engine", "AlertEngine", "stage", "stage"),
    ("memory_bank.alerts.evaluation", "Evaluator", "batch", "stage: evaluation"),
    ("memory_bank.alerts.stream_log", None, "append", "stage: stream log row"),
    ("memory_bank.alerts.outbox", None, "save_states", "stage: states"),
    ("memory_bank.alerts.engine", "AlertEngine", "committed", "committed"),
    ("memory_bank.alerts.stream_process", "StreamProcess", "put", "committed: rows to the pipe"),
    ("memory_bank.alerts.engine", "AlertEngine", "tick", "tick"),
    ("memory_bank.alerts.stream_process", "StreamProcess", "_status", "status lines (own thread)"),
]
TOTAL = ("stage", "committed", "tick")  # the main thread's hooks (the others are inside)


def wrap() -> None:
    """Run ``python -m memory_bank ARGS`` with the hooks timed (the daemon's side)."""
    import atexit
    import importlib
    import runpy
    import threading

    sums: dict[str, list] = {}
    threads: dict[str, float] = {}  # name -> CPU seconds, as each thread ends
    run = threading.Thread.run

    def timed_run(self):
        try:
            run(self)
        finally:
            threads[self.name] = threads.get(self.name, 0.0) + time.thread_time()

    threading.Thread.run = timed_run  # type: ignore[method-assign]

    def timed(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timing(*args, **kwargs):
            start = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                entry = sums.setdefault(label, [0, 0.0])
                entry[0] += 1
                entry[1] += time.thread_time() - start

        setattr(owner, name, timing)

    # engine.py calls stream_log.append and outbox.save_states through its module globals
    # (the modules themselves), so wrapping them there is enough.
    for module, cls, name, label in TIMED:
        owner = importlib.import_module(module)
        timed(getattr(owner, cls) if cls else owner, name, label)

    def write() -> None:
        threads["MainThread"] = time.thread_time()
        for name, seconds in threads.items():
            sums[f"thread {name}"] = [1, seconds]
        Path(os.environ[TIMES_ENV]).write_text(json.dumps(sums))

    atexit.register(write)
    sys.argv = ["memory_bank", *sys.argv[4:]]  # (this file, --wrap, -m, memory_bank, ...)
    runpy.run_module("memory_bank", run_name="__main__", alter_sys=True)


def measure(per_publisher: int, runs: int, against: str | None) -> dict:
    sys.path.insert(0, str(HERE))
    import alerts

    work = Path(tempfile.mkdtemp(prefix="mb-bench-hooks-"))
    launcher = work / "python"
    python, this = sys.executable, Path(__file__).resolve()
    launcher.write_text(  # the daemon through wrap(); the publishers as they are
        f'#!/bin/sh\nif [ "$1" = "-m" ]; then exec {python} {this} --wrap "$@"; fi\n'
        f'exec {python} "$@"\n'
    )
    launcher.chmod(0o755)
    alerts.PY = str(launcher)
    receiver = alerts.Receiver()
    sources = {"this": str(HERE.parent / "src")} | ({"against": against} if against else {})
    results: dict[str, list[dict]] = {name: [] for name in sources}
    with alerts.local_broker("mb-bench-hooks-broker-") as broker:
        config = work / "on.toml"
        config.write_text(
            alerts.FIVE_RULES
            + f'\n[sinks.hook]\ntype = "webhook"\nurl = "{receiver.url}"\n'
            + f'\n[sinks.broker]\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
            'stream = ["events", "anomalies", "metrics"]\nstream_batch = true\n'
            "stream_process = true\n"
        )
        for run in range(runs):
            order = list(sources) if run % 2 == 0 else list(sources)[::-1]
            for name in order:
                os.environ["PYTHONPATH"] = sources[name]
                os.environ[TIMES_ENV] = str(work / f"hooks-{name}{run}.json")
                out = alerts.ingest(work, f"{name}{run}", config, per_publisher)
                sums = json.loads(Path(os.environ[TIMES_ENV]).read_text())
                records = 2 * per_publisher
                row = {label: seconds / records * 1e6 for label, (_n, seconds) in sums.items()}
                row["main thread's hooks"] = sum(row.get(label, 0.0) for label in TOTAL)
                row["daemon, all threads"] = out["daemon_cpu_us_per_record"]
                results[name].append(row)
    receiver.server.shutdown()
    labels = [label for *_x, label in TIMED] + ["main thread's hooks", "daemon, all threads"]
    labels += sorted({k for rows in results.values() for r in rows for k in r} - set(labels))
    return {
        name: {
            label: round(statistics.median(r.get(label, 0.0) for r in rows), 3) for label in labels
        }
        for name, rows in results.items()
    }


def main() -> int:
    if sys.argv[1:2] == ["--wrap"]:
        wrap()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-publisher", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against", help="another source's src/ directory, alternated")
    args = parser.parse_args()
    figures = measure(args.per_publisher, args.runs, args.against)
    names = list(figures)
    print(f"{'µs of thread CPU a record (medians)':38}" + "".join(f"{n:>10}" for n in names))
    for label in figures[names[0]]:
        print(f"{label:38}" + "".join(f"{figures[n][label]:10.3f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
