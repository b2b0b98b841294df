"""The database deleted under a running daemon (`rm lab.db lab.db-wal lab.db-shm
lab.db-ids`) while publishers stream into it.

Before: records went on being acknowledged into the unlinked file, lost for good, and
`status` said nothing. Now each commit checks that the files at the path are still the
ones it writes before anything is acknowledged; once they are not, the daemon says so
(CRITICAL in the log, `store_error` in `status`), acknowledges nothing more, and keeps
the id counter past every known publisher's block. Publishers hold their records; when
the operator restarts the daemon it starts a new database at the path, and every record
called after the rm lands there, once.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from edges._daemon_common import (
    Daemon,
    check_exactly,
    cleans_up,
    finish,
    folders_of,
    integrity,
    start_publisher,
    stored_ids,
    streaming,
    wait_until,
)


@cleans_up
def run(work: Path, long: bool) -> str:
    db = work / "lab.db"
    env, daemon, end_streams = streaming(work, db, 3 if long else 1)
    time.sleep(20 if long else 1)

    removed_at = time.time()
    for suffix in ("", "-wal", "-shm", "-ids"):
        os.unlink(f"{db}{suffix}")
    problem = wait_until(lambda: daemon.stats()["store_error"], 10, "status to say it")
    assert "was deleted" in problem and "restart" in problem, problem
    assert "CRITICAL" in daemon.log and "was deleted" in daemon.log, daemon.log[-2000:]
    # What was deleted can still be copied out while the daemon runs, whole.
    rescue = re.search(r"/proc/\d+/fd/\d+", problem).group(0)
    shutil.copyfile(rescue, work / "rescued.db")
    rescued = stored_ids(work / "rescued.db")
    assert len(rescued) >= 2_000 and integrity(work / "rescued.db") == "ok"
    from memory_bank import Publisher

    with folders_of(env):
        probe = Publisher(db, close_timeout=2.0)
    probe_id = probe.log_event("EDGE", "probe", "after the rm")
    assert not probe.flush(2), "a record was acknowledged after its database was deleted"
    time.sleep(20 if long else 1)  # the streams go on meanwhile, unacknowledged

    daemon.stop()  # the operator restarts it
    daemon = Daemon(db, env)
    assert probe.flush(60), "the probe's record did not land after the restart"
    probe.close()
    newcomer, _ = finish(start_publisher(env, db, 100, "newcomer"))
    reports = end_streams()
    assert all(r["confirmed"] for r in reports) and newcomer["confirmed"]
    blocks = [r["publisher"] for r in reports]
    assert newcomer["publisher"] not in blocks, "a new publisher was handed a live block"
    daemon.stop()

    after = {i for r in reports for i, called in r["calls"] if called >= removed_at}
    landed = set(stored_ids(db))
    missing = after - landed
    assert not missing, f"{len(missing)} records called after the rm were lost"
    called = {i for r in reports for i, _ in r["calls"]}
    assert set(rescued) <= called, "the rescued copy holds records nobody sent"
    kept = (landed & called) | {probe_id} | set(newcomer["ids"])
    check_exactly(db, kept, "the new database")
    return (
        f"{len(after)} records called after the rm all landed in the new database "
        f"(of {len(called)} streamed); nothing acknowledged into the deleted file, "
        f"whose {len(rescued)} records were copied out through /proc"
    )
