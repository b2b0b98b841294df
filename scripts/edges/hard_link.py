"""One database under several names: a hard link in another folder, a symlink, and a
process holding the file open in WAL mode through the link.

Before: a second daemon on the hard link got its own lock, id counter and WAL; both
publishers leased the same id block, both daemons committed, and integrity_check failed.
Now the writer lock is the database file's own (its device and inode): a daemon on any
other name of a served file is refused at once; a database another process has open in
WAL mode under another name is refused while it does; and once served as one name, a
database is not served under a second one (whose id counter and spools would differ).
Each refusal is one line and a non-zero exit; the publishers' records all land once and
integrity_check stays "ok".
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from edges._daemon_common import (
    PY,
    Daemon,
    check_exactly,
    cleans_up,
    finish,
    refused_start,
    scenario_env,
    spawn,
    start_publisher,
)

# Holds the database open in WAL mode through the given name until its stdin closes
# (an older daemon, or a seed-era program, writing through that name).
HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM events").fetchall()
print("open", flush=True)
sys.stdin.read()
"""


@cleans_up
def run(work: Path, long: bool) -> str:
    env = scenario_env(work)
    n = 100_000 if long else 3_000
    (work / "a").mkdir()
    (work / "b").mkdir()
    db, link, symlink = work / "a" / "lab.db", work / "b" / "lab-link.db", work / "b" / "sym.db"

    daemon = Daemon(db, env)
    writers = [start_publisher(env, db, n, f"P{i}") for i in range(2)]
    os.link(db, link)
    symlink.symlink_to(db)
    # While it serves and publishers write: every other name is refused.
    status, line = refused_start(link, env)
    assert status == 1 and "under another name" in line and str(daemon.proc.pid) in line, line
    status, line = refused_start(symlink, env)
    assert status == 1 and str(daemon.proc.pid) in line, line
    reports = [finish(w)[0] for w in writers]
    assert all(r["confirmed"] for r in reports), "a publisher was not confirmed"
    blocks = {r["publisher"] for r in reports}
    assert len(blocks) == len(reports), f"two publishers leased one id block: {blocks}"
    daemon.stop()

    # Another process has the file open in WAL mode through the link: refused while it does.
    holder = spawn(
        [PY, "-c", HOLDER, link], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        status, line = refused_start(db, env)
        assert status == 1 and f"pid {holder.pid}" in line and "WAL" in line, line
    finally:
        holder.communicate("")

    # The database is served as a/lab.db: not as its second name, even with no daemon up.
    status, line = refused_start(link, env)
    assert status == 2 and "second name" in line and str(db) in line, line

    daemon = Daemon(db, env)
    late, _ = finish(start_publisher(env, db, n // 10, "late"))
    assert late["confirmed"] and late["publisher"] not in blocks
    daemon.stop()
    expected = {i for r in [*reports, late] for i in r["ids"]}
    check_exactly(db, expected, "hard link")
    return (
        f"{len(expected)} records from 3 publishers landed once; refused: hard link and "
        "symlink while served, a WAL held through the link, the link as a second name"
    )
