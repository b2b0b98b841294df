"""A full disk under the database, for longer than publishers wait before they resend.

Before: `duplicate_records` counted every resend of a message still waiting in the batch
(100 received, 0 committed, 100 "duplicates"); "background checkpoint failed
(retrying)" was logged every 0.5 s; and stopping the daemon on the full disk printed
tracebacks (PRAGMA optimize, the checkpoint thread). Now duplicates count only records
skipped as already committed, checkpoint failures are logged when they start and then at
most once a minute, and the daemon stops cleanly. Once there is room, every record lands
once. As root the disk is a real 4 MB tmpfs; otherwise max_db_bytes fills the database.
"""

from __future__ import annotations

import os
import re
import subprocess
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
    disk = work / "disk"
    disk.mkdir()
    real_disk = os.geteuid() == 0
    args: tuple[str, ...] = ()
    if real_disk:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk], check=True)
    else:
        config = work / "small.toml"
        config.write_text("[daemon]\nmax_db_bytes = 2097152\n")
        args = ("--config", str(config))
    try:
        return _scenario(work, disk, args, real_disk, long)
    finally:
        if real_disk:
            subprocess.run(["umount", "-l", disk], check=False)


def _scenario(work: Path, disk: Path, args, real_disk: bool, long: bool) -> str:
    db = disk / "lab.db"
    # Its log is not on the full disk.
    env, daemon, end_stream = streaming(work, db, 1, committed=0, daemon_args=args, log_dir=work)
    problem = wait_until(lambda: daemon.stats()["store_error"], 120, "the store to fill")
    assert "full" in problem, problem
    full_at = time.monotonic()
    # Publishers resend after 5 s without acknowledgement; a retry may still commit now and
    # then (a checkpoint that restarts the WAL frees room in it), so only what the daemon
    # counts and logs meanwhile is checked here, and every record at the end.
    time.sleep(30 if long else 7)
    full_for = time.monotonic() - full_at
    stats = daemon.stats()
    assert stats["duplicate_records"] == 0, f"{stats['duplicate_records']} false duplicates"
    failures = daemon.log.count("background checkpoint failed")
    assert failures <= 2, f"{failures} checkpoint failure lines in {full_for:.0f}s"
    daemon.stop()  # on the full disk: exit 0, no traceback
    # Stopping drains what was queued, resends of the batch it holds among them.
    final = re.search(
        r"stopped: received (\d+) records, committed (\d+), .* duplicates (\d+)", daemon.log
    )
    assert final and final.group(3) == "0", final and final.group(0)

    # Room again: a bigger disk, or no cap.
    if real_disk:
        subprocess.run(["mount", "-o", "remount,size=256m", disk], check=True)
    daemon = Daemon(db, env, log_dir=work)
    (report,) = end_stream()
    assert report["confirmed"], "the stream was not confirmed once there was room"
    daemon.stop()
    called = {i for i, _ in report["calls"]}
    check_exactly(db, called, "records around the full disk")
    where = "a full 4 MB tmpfs" if real_disk else "max_db_bytes"
    return (
        f"full for {full_for:.0f}s ({where}): 0 false duplicates, "
        f"{failures} checkpoint failure line(s), clean stop; {len(called)} records landed once"
    )
