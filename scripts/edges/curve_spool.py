"""CURVE and the spool: publishers without an authorized key leave spools in the default
place next to the database; a daemon with CURVE applies only spools written with an
authorized key (the key in the folder, and a MAC on every message that only its secret can
make). The others are reported (log, `status`: refused_spools, spool_forged_frames) and left
in place, at start and at every adoption pass after it."""

from __future__ import annotations

import time
from pathlib import Path

from edges._common import (
    Daemon,
    check_exactly,
    finish,
    isolate,
    start_publisher,
    stored_ids,
    wait_until,
)
from edges._daemon_common import curve_site

PUBLISHER = r"""
import json, sys
from memory_bank import Publisher
from memory_bank.keys import client_curve
db, endpoint, server_key, secret, n = sys.argv[1:6]
curve = None if secret == "-" else client_curve(server_key, secret)
pub = Publisher(db, endpoint=endpoint, curve=curve, close_timeout=1.0)
ids = [pub.log_event("E", "C", f"{secret} {i}", {"i": i}) for i in range(int(n))]
pub.close()
print(json.dumps({"ids": ids, "publisher": pub.publisher_id}))
"""


def run(work: Path, long: bool) -> str:
    env = isolate(work)
    db = work / "curve.db"
    keys, config = curve_site(work)
    # CURVE on an ipc endpoint of its own (the private default ones stay NULL): no port race.
    endpoint = f"ipc://{work}/curve.data"
    n = 50_000 if long else 500
    daemon_args = ("--config", str(config), "--endpoint", endpoint)

    def publish(secret: str) -> dict:
        proc = start_publisher(PUBLISHER, env, db, endpoint, keys / "daemon.key", secret, n)
        return finish(proc)[0]

    # Intruders while the daemon runs: refused at the handshake, their records spooled.
    daemon = Daemon(db, env, *daemon_args)
    intruders = {
        "no key": publish("-"),
        "unknown key": publish(str(keys / "stranger.key_secret")),
        "borrowed public key": publish(str(keys / "stranger.key_secret")),
    }
    daemon.stop()
    spools = db.with_name(db.name + "-spool")
    # The forger writes the authorized publisher's public key into its spool: its MACs,
    # made with its own secret, do not match that key.
    forged = spools / str(intruders["borrowed public key"]["publisher"])
    (forged / "curve.key").write_text((keys / "lab.key").read_text().split('"')[1] + "\n")
    # The authorized publisher while the daemon is down: its records wait in its spool.
    lab = publish(str(keys / "lab.key_secret"))
    assert len(list(spools.iterdir())) == 4, sorted(p.name for p in spools.iterdir())

    daemon = Daemon(db, env, *daemon_args)
    try:
        wait_until(lambda: len(stored_ids(db)) >= n, 60, "the authorized spool")
        started = time.monotonic()
        time.sleep(11.0)  # past the daemon's adoption interval (10 s): a second pass
        stats = daemon.stats()
        check_exactly(db, set(lab["ids"]), "spools under CURVE")
        assert stats["adopted_spools"] == 1, stats["adopted_spools"]
        assert stats["refused_spools"] == 3, stats["refused_spools"]
        assert stats["spool_forged_frames"] >= 1, stats["spool_forged_frames"]
        left = {p.name for p in spools.iterdir()}
        assert left == {str(i["publisher"]) for i in intruders.values()}, left
        log = daemon.log
        assert "carries no CURVE key" in log and "is not in" in log, log[-3000:]
        assert "carry no valid MAC" in log, log[-3000:]
    finally:
        daemon.stop()
    return (
        f"{n:,} authorized records applied from its spool; 3 intruders' spools "
        f"({3 * n:,} records: no key, unknown key, borrowed public key) refused and kept, "
        f"still after {time.monotonic() - started:.0f} s"
    )
