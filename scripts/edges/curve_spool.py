"""CURVE and the spool: spools in the default place next to the database; a daemon with
CURVE applies a spool only with the spool token it handed its publisher over the channel
that authenticated it (an authorized CURVE key, or the private local ipc socket), a MAC made
with that token on every message. The others are reported (log, `status`: refused_spools,
spool_forged_frames) and left in place, at start and at every adoption pass after it."""

from __future__ import annotations

import os
import shutil
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

# argv: db, endpoint ("-": the daemon's local ipc sockets), daemon public key, secret key
# ("-": none), count, go file ("-": publish at once), how it gets its ids ("file": from the
# database's id counter; "lease": from the daemon, as a publisher on another host does).
# With a go file, the publisher reaches the daemon first (a lease, or a first record whose
# acknowledgement brings its spool token), says "reached", and publishes once the go file
# exists (the daemon is down by then: its records are spooled).
PUBLISHER = r"""
import json, os, sys, time
from memory_bank import Publisher
from memory_bank.keys import client_curve
db, endpoint, server_key, secret, n, go, ids_from = sys.argv[1:8]
options = {"close_timeout": 1.0}
if endpoint != "-":
    options["endpoint"] = endpoint
    options["curve"] = None if secret == "-" else client_curve(server_key, secret)
if ids_from == "lease":
    pub = Publisher(spool_dir=db + "-spool", **options)
else:
    pub = Publisher(db, **options)
ids = []
if go != "-":
    if ids_from == "file":
        ids.append(pub.log_event("E", "C", "reached", {"i": -1}))
        assert pub.flush(30), "the daemon did not confirm the first record"
    print("reached", flush=True)
    while not os.path.exists(go):
        time.sleep(0.02)
ids += [pub.log_event("E", "C", f"{secret} {i}", {"i": i}) for i in range(int(n))]
pub.close()
print(json.dumps({"ids": ids, "publisher": pub.publisher_id}))
"""


def forge_local_spool(spools: Path, n: int) -> Path:
    """A spool folder written by hand: identity "local", well-formed messages, MACs made
    with a token no daemon handed out."""
    from memory_bank import spool, wire
    from memory_bank.spool_auth import LOCAL

    publisher_id = 1 << 20
    folder = spools / str(publisher_id)
    forged = spool.Spool(folder)
    forged.set_token(LOCAL, os.urandom(32))
    base = publisher_id << wire.ID_BLOCK_BITS
    for seq in range(1, n // 100 + 2):
        rows = [[base + seq * 100 + i, time.time(), "E", "C", "forged", None] for i in range(100)]
        forged.append(seq, wire.encode(publisher_id, seq, 0, rows, [], [], []))
    forged.close(keep=True)
    return folder


def public_key(key_file: Path) -> str:
    import zmq.auth

    return zmq.auth.load_certificate(str(key_file))[0].decode()


def run(work: Path, long: bool) -> str:
    from memory_bank.keys import create_key_pair

    env = isolate(work)
    db = work / "curve.db"
    keys, config = curve_site(work)
    # A key authorized while its publisher reached the daemon, withdrawn before adoption.
    create_key_pair(keys, "retired")
    authorized = keys.parent / "authorized"
    (authorized / "retired.key").write_bytes((keys / "retired.key").read_bytes())
    # CURVE on an ipc endpoint of its own (the private default ones stay NULL): no port race.
    endpoint = f"ipc://{work}/curve.data"
    n = 50_000 if long else 500
    daemon_args = ("--config", str(config), "--endpoint", endpoint)
    go = work / "go"

    def publisher(secret: str, via: str = endpoint, then: Path | str = "-", ids="file"):
        daemon_key = keys / "daemon.key"
        return start_publisher(PUBLISHER, env, db, via, daemon_key, secret, n, then, ids)

    daemon = Daemon(db, env, *daemon_args)
    # Publishers that reach the daemon, then spool while it is down: their spool tokens come
    # with the lease (lab), or with the first acknowledgement (local, retired).
    reaching = {
        "lab": publisher(str(keys / "lab.key_secret"), then=go, ids="lease"),
        "local": publisher("-", via="-", then=go),
        "retired": publisher(str(keys / "retired.key_secret"), then=go),
    }
    # Intruders while it runs: refused at the handshake, their records spooled.
    intruding = {
        "no key": publisher("-"),
        "unknown key": publisher(str(keys / "stranger.key_secret")),
        "borrowed public key": publisher(str(keys / "stranger.key_secret")),
    }
    for name, proc in reaching.items():
        line = proc.stdout.readline().strip()
        if line != "reached":
            raise AssertionError(f"{name}: {line!r}\n{proc.stderr.read()[-3000:]}")
    intruders = {name: finish(proc)[0] for name, proc in intruding.items()}
    daemon.stop()
    go.touch()
    reached = {name: finish(proc)[0] for name, proc in reaching.items()}

    spools = db.with_name(db.name + "-spool")
    # The intruder writes the authorized publisher's public key as its identity: it has no
    # token to MAC its messages with.
    borrowed = spools / str(intruders["borrowed public key"]["publisher"])
    (borrowed / "identity").write_text(public_key(keys / "lab.key") + "\n")
    forged = forge_local_spool(spools, n)
    (authorized / "retired.key").unlink()
    refused = {str(i["publisher"]) for i in (*intruders.values(), reached["retired"])}
    refused.add(forged.name)
    assert {p.name for p in spools.iterdir()} == refused | {
        str(reached[name]["publisher"]) for name in ("lab", "local")
    }, sorted(p.name for p in spools.iterdir())

    expected = {*reached["lab"]["ids"], *reached["local"]["ids"], reached["retired"]["ids"][0]}
    daemon = Daemon(db, env, *daemon_args)
    try:
        wait_until(lambda: len(stored_ids(db)) >= len(expected), 60, "the two good spools")
        first = daemon.stats()
        assert first["refused_spools"] == 5, first["refused_spools"]
        # An operator deletes one refused spool: the next pass stops counting it.
        removed = spools / str(intruders["no key"]["publisher"])
        shutil.rmtree(removed)
        refused.remove(removed.name)
        started = time.monotonic()
        time.sleep(11.0)  # past the daemon's adoption interval (10 s): a second pass
        stats = daemon.stats()
        check_exactly(db, expected, "spools under CURVE")
        assert stats["adopted_spools"] == 2, stats["adopted_spools"]
        assert stats["refused_spools"] == 4, stats["refused_spools"]
        # Counted once, not at every pass; nothing of them re-applied.
        assert 0 < stats["spool_forged_frames"] == first["spool_forged_frames"], (first, stats)
        assert stats["duplicate_records"] == first["duplicate_records"], (first, stats)
        assert {p.name for p in spools.iterdir()} == refused
        log = daemon.log
        for reason in (
            "carries no spool token",  # no key, unknown key
            f"its key {public_key(keys / 'retired.key')} is not in",  # withdrawn
            "carry no MAC",  # the borrowed identity
            "carry no valid MAC",  # the forged local spool
        ):
            assert reason in log, (reason, log[-3000:])
    finally:
        daemon.stop()
    return (
        f"{2 * n:,} records applied from the spools of an authorized CURVE publisher and a "
        f"local ipc publisher; 5 spools refused and kept (no key, unknown key, borrowed "
        f"identity, key withdrawn, forged local: {5 * n:,}+ records), counted once, one "
        f"deleted by hand and no longer counted after {time.monotonic() - started:.0f} s"
    )
