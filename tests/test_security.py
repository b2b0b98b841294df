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


def test_a_publisher_the_daemon_refuses_says_why(db_path, start_daemon, tmp_path):
    """A publisher without keys, against a CURVE daemon, says what its handshakes said
    (read from the socket monitor's own frames) when it closes with its records
    unconfirmed, even before its first unanswered request was due (a short script's
    case), and its records wait in its spool."""
    _, cfg = curve_site(tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_port_pair()}"
    start_daemon(db_path, "--config", str(cfg), "--endpoint", endpoint)
    spool = tmp_path / "spool"
    result = run_python(
        "import logging, sys\nfrom memory_bank import Publisher\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "p = Publisher(sys.argv[2], endpoint=sys.argv[1], close_timeout=1.0,"
        " spool_dir=sys.argv[3])\n"
        "p.log_event('E', 'C', 'no keys')\n"
        "print(p.close())\n",
        endpoint,
        str(db_path),
        str(spool),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert (
        "did not confirm 1 record(s) within 1s (the daemon and this publisher disagree on "
        "CURVE" in result.stderr
    ), result.stderr
    assert any(path.is_file() for path in spool.rglob("*")), "nothing was kept in the spool"


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


def test_spool_token_binds_daemon_key_publisher_and_identity(tmp_path):
    """A spool MAC'd with the token a daemon handed out verifies under that daemon's key
    later (after a restart: the spool secret derives from the key) and under nothing else:
    another daemon key, another publisher id, another identity, a message changed. Frames
    written before the token carry no MAC; a daemon without CURVE applies every frame."""
    import struct
    import zlib

    import zmq
    from zmq.utils import z85

    from memory_bank import spool, wire
    from memory_bank.spool_auth import LOCAL, SpoolAuth, frame_mac

    def message(seq: int, text: str) -> bytes:
        return wire.encode(7, seq, 0, [[(7 << 32) + seq, 1.7e9, "E", "C", text, None]], [], [], [])

    daemon_public, daemon_secret = (k.decode() for k in zmq.curve_keypair())
    handed = SpoolAuth(z85.decode(daemon_secret), tmp_path).token(7, LOCAL)
    folder = tmp_path / "7"
    written = spool.Spool(folder)
    written.append(1, message(1, "before the token"))
    written.set_token(LOCAL, handed)
    written.append(2, message(2, "signed"))
    written.append(3, message(3, "signed"))
    written.close(keep=True)
    (segment,) = spool.segment_paths(folder)
    # A forger who knows a signed frame changes its message and mends the checksum.
    mac = frame_mac(handed, 4, message(4, "signed"))
    payload = mac + message(4, "forged")
    with open(segment, "ab") as fh:
        fh.write(struct.pack("<IIQ", len(payload) | spool.MAC_FLAG, zlib.crc32(payload), 4))
        fh.write(payload)

    restarted = SpoolAuth(z85.decode(daemon_secret), tmp_path)
    checked = spool.read_segment(segment, restarted.token_for(folder, 7))
    assert [seq for seq, _ in checked.frames] == [2, 3]
    assert (checked.unsigned_frames, checked.forged_frames, checked.corrupt_bytes) == (1, 1, 0)
    assert [raw for _, raw in checked.frames] == [message(2, "signed"), message(3, "signed")]
    for other in (
        SpoolAuth(z85.decode(zmq.curve_keypair()[1]), tmp_path).token(7, LOCAL),
        restarted.token(8, LOCAL),
        restarted.token(7, daemon_public),
    ):
        assert spool.read_segment(segment, other).forged_frames == 3
    unchecked = spool.read_segment(segment)  # no CURVE: every intact frame, MACs stripped
    assert [seq for seq, _ in unchecked.frames] == [1, 2, 3, 4]
    assert unchecked.frames[0][1] == message(1, "before the token")
