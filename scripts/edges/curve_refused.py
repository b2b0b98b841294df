"""Refused CURVE handshakes: a publisher whose key is not authorized, one without keys,
one that names another server key.

Before: ZeroMQ refused them in silence; the publisher got "no answer to 'lease' within
3 s" and the daemon logged nothing. Now the daemon logs each refusal (with the refused
public key, at most 5 lines a minute per kind, then "suppressed N"), counts them in
`status` (refused_handshakes), and the publisher's error names the likely cause.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from edges._daemon_common import (
    PY,
    Daemon,
    check_exactly,
    cleans_up,
    curve_site,
    finish,
    folders_of,
    scenario_env,
    spawn,
    start_publisher,
    wait_until,
)

# Tries to make a Publisher with the given keys; prints what it was told.
INTRUDER = r"""
import sys
from memory_bank import Publisher
from memory_bank.keys import client_curve
endpoint, server_key, secret = sys.argv[1:4]
curve = None if secret == "-" else client_curve(server_key, secret)
try:
    Publisher(endpoint=endpoint, curve=curve, close_timeout=2.0)
except Exception as exc:
    print(exc)
else:
    print("ACCEPTED")
"""


def _told(endpoint: str, keys: Path, server: str, secret: str, env: dict) -> str:
    args = [PY, "-c", INTRUDER, endpoint, keys / f"{server}.key", secret]
    proc = spawn(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out.strip()


@cleans_up
def run(work: Path, long: bool) -> str:
    import zmq.auth

    env = scenario_env(work)
    db = work / "lab.db"
    keys, config = curve_site(work)
    # CURVE on an ipc endpoint of its own (no port to race for); local ones stay NULL.
    endpoint = f"ipc://{work}/curve.data"
    daemon = Daemon(db, env, "--config", str(config), "--endpoint", endpoint)
    lab = start_publisher(
        env,
        db,
        20_000 if long else 500,
        "lab",
        endpoint,
        keys / "daemon.key",
        keys / "lab.key_secret",
    )

    told = _told(endpoint, keys, "daemon", str(keys / "stranger.key_secret"), env)
    assert "refused this publisher's public key" in told, told
    told = _told(endpoint, keys, "daemon", "-", env)
    assert "disagree on CURVE" in told, told
    told = _told(endpoint, keys, "lab", str(keys / "lab.key_secret"), env)
    assert "server_key" in told, told

    stranger_key = zmq.auth.load_certificate(keys / "stranger.key")[0].decode()
    wait_until(lambda: stranger_key in daemon.log, 10, "the refused key in the daemon's log")
    stats = wait_until(
        lambda: (s := daemon.stats())["refused_handshakes"] >= 3 and s, 10, "refusals counted"
    )
    assert stats["last_refused_handshake"], stats

    # Many refusals: all counted, few logged.
    from memory_bank.control import ControlClient, DaemonUnavailable
    from memory_bank.keys import client_curve

    attempts = 100 if long else 20
    curve = client_curve(keys / "daemon.key", keys / "stranger.key_secret")
    with folders_of(env):
        for _ in range(attempts):
            client = ControlClient(sockets_control(endpoint), curve=curve)
            try:
                client.request("ping", timeout=0.2)
                raise AssertionError("a stranger's ping was answered")
            except DaemonUnavailable:
                pass
            finally:
                client.close()
    counted = wait_until(
        lambda: (
            (n := daemon.stats()["refused_handshakes"]) >= stats["refused_handshakes"] + attempts
            and n
        ),
        30,
        "every refusal counted",
    )
    logged = daemon.log.count("refused a CURVE handshake")
    assert logged <= 2 * 5, f"{logged} lines for {counted} refusals: not rate-limited"

    report, _ = finish(lab)
    assert report["confirmed"], "the authorized publisher was not confirmed"
    daemon.stop()
    check_exactly(db, set(report["ids"]), "the authorized publisher's records")
    return (
        f"{counted} refused handshakes counted, {logged} logged with the key; the publisher "
        f"told why; {len(report['ids'])} authorized records landed"
    )


def sockets_control(endpoint: str) -> str:
    from memory_bank.sockets import control_endpoint_for

    return control_endpoint_for(endpoint)
