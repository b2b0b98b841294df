"""The WAL deleted under a running daemon (`rm lab.db-wal lab.db-shm`), the database
file left in place, while a publisher streams.

Before: the daemon went on committing into the unlinked WAL, whose frames no other
process could see and which vanished with the daemon: acknowledged records lost. Now the
daemon notices at its next commit, copies what the unlinked WAL holds into the database
file (so everything it acknowledged is kept), acknowledges nothing more, and says so in
the log and `status`. After the operator restarts it, every record is in the database,
once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from edges._daemon_common import (
    Daemon,
    check_exactly,
    cleans_up,
    streaming,
    wait_until,
)


@cleans_up
def run(work: Path, long: bool) -> str:
    db = work / "lab.db"
    env, daemon, end_streams = streaming(work, db, 3 if long else 1)
    time.sleep(20 if long else 1)
    for suffix in ("-wal", "-shm"):
        os.unlink(f"{db}{suffix}")
    problem = wait_until(lambda: daemon.stats()["store_error"], 10, "status to say it")
    assert "-wal was deleted" in problem and "copied from the WAL" in problem, problem
    time.sleep(20 if long else 1)  # the streams go on meanwhile, unacknowledged
    daemon.stop()
    daemon = Daemon(db, env)
    reports = end_streams()
    assert all(r["confirmed"] for r in reports), "a stream was not confirmed after the restart"
    daemon.stop()
    called = {i for r in reports for i, _ in r["calls"]}
    check_exactly(db, called, "records around the WAL's deletion")
    return f"{len(called)} records, before and after the WAL was deleted, all landed once"
