"""Who may write: loopback or ipc by default; anything wider only with CURVE keys."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time

from conftest import curve_site, free_port_pair, run_python
from memory_bank import Publisher, discovery
from memory_bank.keys import client_curve


def test_non_loopback_tcp_without_keys_is_refused(db_path):
    port = free_port_pair()
    for endpoint in (f"tcp://0.0.0.0:{port}", f"tcp://*:{port}"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "memory_bank",
                "daemon",
                "--db",
                str(db_path),
                "--endpoint",
                endpoint,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "without CURVE keys" in result.stderr
        # It does not send the user to loopback TCP as if that were private.
        assert "tcp://127.0.0.1 lets every user of this host write" in result.stderr
        assert "ipc://" in result.stderr and "group" in result.stderr
    assert not db_path.exists()


def test_loopback_tcp_without_keys_warns_that_every_local_user_can_write(db_path, start_daemon):
    endpoint = f"tcp://127.0.0.1:{free_port_pair()}"
    daemon = start_daemon(db_path, "--endpoint", endpoint)
    assert f"{endpoint} has no CURVE keys: every user of this host can write to it" in daemon.log


def test_default_runtime_folder_is_private(db_path, daemon):
    endpoint = discovery.find_endpoints(discovery.resolve_db_path(db_path)).data
    folder = os.path.dirname(endpoint.removeprefix("ipc://"))
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


def test_curve_lets_only_authorized_publishers_write(db_path, start_daemon, tmp_path):
    keys, cfg = curve_site(tmp_path)
    assert stat.S_IMODE(os.stat(keys / "lab.key_secret").st_mode) == 0o600
    endpoint = f"tcp://127.0.0.1:{free_port_pair()}"
    start_daemon(db_path, "--config", str(cfg), "--endpoint", endpoint)

    # An unauthenticated publisher, and one with a key the daemon does not know.
    snippet = (
        "import sys\nfrom memory_bank import Publisher\nfrom memory_bank.keys import "
        "client_curve\ncurve = None if sys.argv[2] == '-' else client_curve(sys.argv[3], "
        "sys.argv[2])\np = Publisher(sys.argv[4], endpoint=sys.argv[1], curve=curve, "
        "close_timeout=1.0, spool_dir=sys.argv[5])\n"
        "[p.log_event('E', 'C', 'intruder') for _ in range(10)]\n"
    )
    for secret in ("-", str(keys / "stranger.key_secret")):
        result = run_python(
            snippet,
            endpoint,
            secret,
            str(keys / "daemon.key"),
            str(db_path),
            str(tmp_path / "spool"),
            timeout=60,
        )
        assert result.returncode == 0, result.stderr

    pub = Publisher(
        db_path, endpoint=endpoint, curve=client_curve(keys / "daemon.key", keys / "lab.key_secret")
    )
    lab_id = pub.log_event("E", "C", "authorized")
    assert pub.flush(10)
    pub.close()
    time.sleep(0.5)
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT id, message FROM events").fetchall()
    assert rows == [(lab_id, "authorized")]


SPOOLING_PUBLISHER = """
import os, sys
os.umask(int(sys.argv[2], 8))
from memory_bank import Publisher
options = {} if sys.argv[3] == "-" else {"spool_mode": int(sys.argv[3], 8)}
pub = Publisher(sys.argv[1], memory_bytes=0, close_timeout=0.2, **options)
pub.log_event("E", "C", "kept in the spool: no daemon runs")
pub.close()
"""


def test_spools_are_group_readable_whatever_the_umask(tmp_path):
    """Spool folders 0750 and files 0640 (group = who may read) under any umask, unless
    the publisher is told another mode."""
    for umask, option, folder_mode in (
        ("000", "-", 0o750),
        ("077", "-", 0o750),
        ("022", "700", 0o700),
    ):
        db = tmp_path / f"u{umask}-{option}.db"
        result = run_python(SPOOLING_PUBLISHER, str(db), umask, option)
        assert result.returncode == 0, result.stderr
        root = db.with_name(db.name + "-spool")
        (folder,) = root.iterdir()
        files = list(folder.iterdir())
        assert {f.name for f in files} == {"lock", "00000001.seg"}
        modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in (root, folder, *files)}
        file_mode = folder_mode & 0o666
        assert modes == {
            root.name: folder_mode,
            folder.name: folder_mode,
            "lock": file_mode,
            "00000001.seg": file_mode,
        }, (umask, option, {k: oct(v) for k, v in modes.items()})


def test_spool_mac_key_is_curve25519_shared_by_both_sides():
    """The spool's MAC key: X25519 per RFC 7748 (its test vector), consistent with libzmq's
    own key pairs, the same from the publisher's and the daemon's side."""
    import zmq
    from zmq.utils import z85

    from memory_bank.spool_auth import mac_key, x25519

    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    point = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    expected = "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    assert x25519(scalar, point).hex() == expected
    daemon_public, daemon_secret = zmq.curve_keypair()
    lab_public, lab_secret = zmq.curve_keypair()
    assert z85.encode(x25519(z85.decode(lab_secret), (9).to_bytes(32, "little"))) == lab_public
    ours = mac_key(lab_secret.decode(), daemon_public.decode(), 7)
    assert ours == mac_key(daemon_secret.decode(), lab_public.decode(), 7)
    assert ours != mac_key(daemon_secret.decode(), lab_public.decode(), 8)
