"""A daemon started on a corrupt database, or on a file that is no database at all.

Before: the daemon died with a traceback at start, and systemd's Restart=on-failure
started it again every two seconds, forever. Now it exits with status 2 and one line
that says what is wrong and how to recover; the unit lists 2 in
RestartPreventExitStatus, so systemd stops there. Publishers keep their records
meanwhile (they wait in memory, then in their spools): once the operator moves the
damaged file away and starts the daemon again, every record lands.
"""

from __future__ import annotations

from pathlib import Path

from edges._daemon_common import (
    Daemon,
    check_exactly,
    cleans_up,
    finish,
    refused_start,
    scenario_env,
    start_publisher,
    wait_until,
)

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "memorybank.service"


@cleans_up
def run(work: Path, long: bool) -> str:
    env = scenario_env(work)
    db = work / "lab.db"
    n = 50_000 if long else 2_000
    daemon = Daemon(db, env)
    first, _ = finish(start_publisher(env, db, n, "before"))
    assert first["confirmed"]
    daemon.stop()

    # Damage the schema page (what every open reads), as a torn write or a bad disk would.
    with open(db, "r+b") as fh:
        fh.seek(100)  # past the file header, over the rest of page 1
        fh.write(b"\xde\xad\xbe\xef" * 999)
    waiting = start_publisher(env, db, n, "waiting")  # the daemon is down: records wait
    status, line = refused_start(db, env)
    assert status == 2, (status, line)
    assert "damaged" in line and ".recover" in line, line
    prevent = [ln for ln in UNIT.read_text().splitlines() if ln.startswith("RestartPrevent")]
    assert prevent and "2" in prevent[0].split("=", 1)[1].split(), prevent

    garbage = work / "garbage.db"
    garbage.write_bytes(b"not a database, " * 1000)
    status, line = refused_start(garbage, env)
    assert status == 2 and "not a SQLite database" in line, line

    # The operator keeps the damaged file aside and starts afresh at the same path.
    db.rename(work / "lab.db.damaged")
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    daemon = Daemon(db, env)
    late, _ = finish(waiting)
    wait_until(lambda: daemon.stats()["adopted_spools"] >= 1 or late["confirmed"], 60, "spool")
    daemon.stop()
    check_exactly(db, set(late["ids"]), "records that waited for the operator")
    return f"refused with 2 and one line (corrupt, not a database); {n} waiting records landed"
