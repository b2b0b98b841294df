#!/usr/bin/env python3
"""What the WAL's fsync costs the ceiling, and what syncing it beside the next batch would
give: a measurement for the lever after the COMMIT thread (docs/benchmark.md).

    python bench/wal_sync.py                 # 400,000 records, 3 alternated rounds

Three ways to run bench/run.py's ceiling statements (four publishers' rows, 2,000 a
transaction, the store's schema, pragmas and checkpoint thread), alternated in each round:
"full" is the ceiling (synchronous=FULL: each COMMIT writes and fsyncs the WAL);
"normal" is synchronous=NORMAL (COMMIT writes the WAL, no fsync: not durable, the floor);
"synced apart" is NORMAL with the WAL fsync'd on a second thread after each COMMIT while
the next batch's statements run (a batch would be acknowledged once a sync that began
after its COMMIT returned: as durable as FULL, but visible to readers before it is).
Each line: records per second (wall), and for "full" / "normal" the COMMITs' wall time.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import BATCH_ROWS, _apply_raw  # noqa: E402
from workload import publishers_batches  # noqa: E402

from memory_bank.store.sqlite import SqliteStore  # noqa: E402


class WalSyncer:
    """fsyncs the WAL on its own thread whenever a COMMIT asks; one sync covers every
    COMMIT before it (the syncs of a slow disk coalesce)."""

    def __init__(self, wal_path: str):
        self.fd = os.open(wal_path, os.O_RDONLY)
        self.asked = self.synced = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def ask(self) -> None:
        with self._cond:
            self.asked += 1
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self.synced == self.asked and not self._stop:
                    self._cond.wait()
                if self.synced == self.asked:
                    return
                upto = self.asked
            os.fsync(self.fd)
            self.synced = upto

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()
        os.close(self.fd)


class TimedCommits:
    """The connection as _apply_raw uses it, with its COMMITs' wall time summed."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.commit_seconds = 0.0

    def executemany(self, sql, rows):
        return self.conn.executemany(sql, rows)

    def execute(self, sql, params=()):
        if sql != "COMMIT":
            return self.conn.execute(sql, params)
        began = time.perf_counter()
        try:
            return self.conn.execute(sql)
        finally:
            self.commit_seconds += time.perf_counter() - began


def one_run(folder: Path, batches: list, how: str) -> tuple[float, float]:
    """(seconds, of which in COMMIT) to commit every batch (and, "apart", sync it)."""
    db = folder / f"{how}.db"
    store = SqliteStore(db)  # the schema, pragmas and checkpoint thread
    raw = sqlite3.connect(db, isolation_level=None, timeout=30.0)
    raw.execute(f"PRAGMA synchronous={'FULL' if how == 'full' else 'NORMAL'}")
    raw.execute("PRAGMA wal_autocheckpoint=0")
    conn = TimedCommits(raw)
    syncer = WalSyncer(f"{db}-wal") if how == "apart" else None
    began = time.perf_counter()
    for batch in batches:
        _apply_raw(conn, *batch)
        if syncer is not None:
            syncer.ask()
        if store.checkpointer.due():
            store.checkpointer.truncate(raw)
    if syncer is not None:
        syncer.close()  # every batch synced
    seconds = time.perf_counter() - began
    raw.close()
    store.close()
    return seconds, conn.commit_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batches = list(publishers_batches(args.records, 4, BATCH_ROWS))
    for round_ in range(1, args.rounds + 1):
        folder = Path(tempfile.mkdtemp(prefix="mb-walsync-"))
        line = []
        for how, name in (("full", "full"), ("normal", "normal"), ("apart", "synced apart")):
            seconds, commits = one_run(folder, batches, how)
            rate = f"{name} {args.records / seconds:,.0f} rec/s"
            if how != "apart":
                rate += f" (COMMIT {commits / len(batches) * 1000:.1f} ms each)"
            line.append(rate)
        print(f"round {round_}: " + "; ".join(line), flush=True)


if __name__ == "__main__":
    main()
