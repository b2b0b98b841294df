"""Who wrote a spool: under CURVE, a spool is applied only if an authorized key wrote it.

A publisher with a CURVE key pair writes its public key into its spool folder (``KEY_FILE``)
and prefixes every frame with a MAC (HMAC-SHA256, truncated to ``MAC_BYTES``) keyed by the
X25519 secret it shares with the daemon (its secret key with the daemon's public key; the
daemon computes the same from its secret key and the publisher's public key). A public key
alone proves nothing (it is public); a valid MAC proves the writer held the matching secret.

X25519 (RFC 7748) is done here in Python, once per spool, because pyzmq exposes no scalar
multiplication; it is not constant-time, which matters little for a computation run once per
spool on keys that never leave the host. Standard library and pyzmq's z85 only: publishers
import this module.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path

from zmq.utils import z85

KEY_FILE = "curve.key"  # the writer's public key, z85 text
MAC_BYTES = 16

_P = 2**255 - 19
_A24 = 121665


def x25519(scalar: bytes, u_point: bytes) -> bytes:
    """RFC 7748 section 5: the Montgomery ladder on Curve25519."""
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    n = int.from_bytes(k, "little")
    x1 = int.from_bytes(u_point, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (n >> t) & 1
        if swap ^ bit:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b, c, d = x2 + z2, x2 - z2, x3 + z3, x3 - z3
        aa, bb = a * a % _P, b * b % _P
        e = aa - bb
        da, cb = d * a % _P, c * b % _P
        x3, z3 = (da + cb) ** 2 % _P, x1 * (da - cb) ** 2 % _P
        x2, z2 = aa * bb % _P, e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def mac_key(own_secret_z85: str, peer_public_z85: str, publisher_id: int) -> bytes:
    """The key a publisher's spool frames are MAC'd with; both sides derive the same one."""
    shared = x25519(z85.decode(own_secret_z85.encode()), z85.decode(peer_public_z85.encode()))
    if shared == bytes(32):
        raise ValueError("degenerate CURVE public key")
    return hmac.new(shared, b"memorybank spool %d" % publisher_id, hashlib.sha256).digest()


def frame_mac(key: bytes, seq: int, raw: bytes) -> bytes:
    return hmac.new(key, struct.pack("<Q", seq) + raw, hashlib.sha256).digest()[:MAC_BYTES]


class SpoolRefused(Exception):
    """A spool this daemon must not apply; the message says why."""


class SpoolAuth:
    """The daemon's side: which spools it may apply, and the MAC key of each."""

    def __init__(self, daemon_secret_z85: str, authorized_keys_dir: str | Path):
        self.secret = daemon_secret_z85
        self.authorized_keys_dir = Path(authorized_keys_dir)

    def authorized(self) -> set[str]:
        """The authorized public keys, read afresh (the folder may change while running)."""
        import zmq.auth

        return {k.decode() for k in zmq.auth.load_certificates(str(self.authorized_keys_dir))}

    def key_for(self, folder: Path, publisher_id: int) -> bytes:
        """The MAC key for the spool in ``folder``; SpoolRefused if no authorized key wrote it."""
        try:
            public = (folder / KEY_FILE).read_text().strip()
        except FileNotFoundError:
            raise SpoolRefused("it carries no CURVE key (written without one)") from None
        if public not in self.authorized():
            raise SpoolRefused(f"its key {public} is not in {self.authorized_keys_dir}")
        try:
            return mac_key(self.secret, public, publisher_id)
        except ValueError as exc:
            raise SpoolRefused(f"its key {public!r} is not a CURVE key: {exc}") from None
