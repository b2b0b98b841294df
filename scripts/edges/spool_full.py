"""A full disk under the spool while the daemon is down: a write that fails with ENOSPC makes
the spool count as full, so the overflow policy applies (every dropped record counted and
logged), the sender lives on, close() does not raise, and spooling resumes once there is
room again. Then a daemon applies the spool: what was not counted as dropped lands, once.

The spool folder is a real tmpfs mounted at ``<db>-spool`` (root, as in CI). Where mounting
is not allowed, the publisher runs under a file size limit (RLIMIT_FSIZE: writes fail with
EFBIG), which tests everything but the room coming back."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
from pathlib import Path

from edges._common import Daemon, finish, isolate, start_publisher, stored_ids, wait_until

PUBLISHER = r"""
import json, os, sys, time
from memory_bank import Publisher
db, first, second, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pub = Publisher(db, memory_bytes=256 * 1024, max_queue=5000, close_timeout=0.5)
sent = []
for i in range(first):  # paced as the second part is, so the sender spools as it goes and
    # meets the full disk (a caller faster than it would fill the queue first and be dropped
    # at the call, before any write to the spool failed)
    sent.append(pub.log_event("FILL", "CP", f"first {i}", {"i": i, "pad": "p" * 40}))
    if i % 500 == 499:
        time.sleep(0.01)
deadline = time.monotonic() + 60  # until a write to the spool failed and something was dropped
while (pub.dropped == 0 or pub._outbox._spool_error is None) and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"dropped": pub.dropped, "alive": pub._sender.is_alive()}), flush=True)
while not os.path.exists(go):
    time.sleep(0.05)
time.sleep(1.5)  # past the spool's retry pause
dropped_before = pub.dropped
for i in range(second):
    sent.append(pub.log_event("AFTER", "CP", f"second {i}", {"i": i}))
    if i % 500 == 499:
        time.sleep(0.05)
pub.close()
print(json.dumps({"sent": sent, "second": sent[first:], "dropped": pub.dropped,
                  "dropped_before": dropped_before, "by_reason": pub.dropped_by_reason,
                  "sender_errors": pub.sender_errors}))
"""


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(folder)],
        capture_output=True,
    )
    return result.returncode == 0


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run(work: Path, long: bool) -> str:
    env = isolate(work)
    db = work / "full.db"
    spool_root = work / "full.db-spool"
    size_mb = 64 if long else 8
    first, second = (400_000, 100_000) if long else (40_000, 10_000)
    mounted = _mount_tmpfs(spool_root, f"{size_mb}m")
    try:
        popen = {}
        if mounted:
            filler = spool_root / "filler"
            with open(filler, "wb") as fh:  # leave 1 MiB: the disk fills during the first part
                fh.write(b"\0" * ((size_mb - 1) * 1024 * 1024))
        else:
            popen["preexec_fn"] = _file_size_limit(1024 * 1024)
        go = work / "go"
        proc = start_publisher(PUBLISHER, env, db, first, second, go, **popen)
        full = json.loads(proc.stdout.readline())
        assert full["alive"], "the sender thread died of the full disk"
        assert full["dropped"] > 0, "nothing counted as dropped with memory and spool full"
        if mounted:
            filler.unlink()  # room again
        go.touch()
        report, err = finish(proc)
        assert report["sender_errors"] == 0, report
        reason = "No space left on device" if mounted else "File too large"
        assert f"cannot write its spool {spool_root}" in err and reason in err, err[-2000:]
        assert report["dropped"] > 0 and set(report["by_reason"]) <= {"overflow", "unspooled"}
        if mounted:
            assert report["dropped"] == report["dropped_before"], "dropped after room returned"
            assert "is usable again" in err, err[-2000:]
        daemon = Daemon(db, env)
        try:
            expected = len(report["sent"]) - report["dropped"]
            wait_until(lambda: len(stored_ids(db)) >= expected, 120, "the spool to be applied")
            ids = stored_ids(db)
            assert len(ids) == len(set(ids)) == expected, (len(ids), expected)
            assert set(ids) <= set(report["sent"])
            if mounted:
                assert set(report["second"]) <= set(ids), "records spooled after room returned"
        finally:
            daemon.stop()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(spool_root)], check=False)
    how = f"a {size_mb} MiB tmpfs" if mounted else "RLIMIT_FSIZE (mount not allowed)"
    return (
        f"{how}: {len(report['sent']):,} sent, {report['dropped']:,} dropped and counted, "
        f"{expected:,} landed from the spool; no error at close"
    )
