"""The runtime folder deleted under a running daemon (`rm -r $MEMORYBANK_RUNTIME_DIR`, as
a cleaner of /run or /tmp would), and its `<db>-daemon` file with it.

Before: the daemon looked alive while no new publisher could reach it: its ipc socket
files were gone. Now it checks them every two seconds, binds them again in a folder
made again (0750), writes `<db>-daemon` again, and logs each repair; `status` counts
them. Publishers already connected keep going; new ones connect; every record lands.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from edges._daemon_common import (
    check_exactly,
    cleans_up,
    finish,
    start_publisher,
    streaming,
    wait_until,
)


@cleans_up
def run(work: Path, long: bool) -> str:
    db = work / "lab.db"
    env, daemon, end_stream = streaming(work, db, 1)
    rounds = 5 if long else 1
    newcomers = []
    for _ in range(rounds):
        shutil.rmtree(work / "run")
        (work / "lab.db-daemon").unlink()
        # A publisher started now finds nothing: it waits, then connects once it can.
        newcomers.append(start_publisher(env, db, 1_000, "newcomer"))
        wait_until(lambda: (work / "lab.db-daemon").exists(), 10, "lab.db-daemon again")
        daemon.wait_ready(timeout=10)  # found through the files again
        time.sleep(3 if long else 0)
    reports = [finish(p)[0] for p in newcomers]
    assert all(r["confirmed"] for r in reports), "a publisher started after the rm failed"
    (streamed,) = end_stream()
    assert streamed["confirmed"], "the publisher connected before the rm was cut off"
    stats = daemon.stats()
    assert stats["endpoint_repairs"] >= rounds and stats["endpoint_problem"] is None, stats
    assert "bound" in daemon.log and "again" in daemon.log
    assert (work / "run").stat().st_mode & 0o777 == 0o750
    daemon.stop()
    expected = {i for i, _ in streamed["calls"]} | {i for r in reports for i in r["ids"]}
    check_exactly(db, expected, "records around the runtime folder's deletion")
    return f"{rounds} deletion(s) repaired; {len(expected)} records landed once"
