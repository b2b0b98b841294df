"""Who wrote a spool: under CURVE, a spool is applied only if its publisher had reached the
daemon through a channel that authenticated it, and no one else wrote its messages.

The daemon derives a spool secret from its CURVE secret key (stable across restarts) and
hands each publisher, over the channel that authenticated it, a spool token: an HMAC of the
publisher id and the identity that channel established (the CURVE public key ZAP accepted,
or ``LOCAL`` for the private ipc control socket, which filesystem permissions guard). The
publisher writes that identity into its spool folder (``IDENTITY_FILE``) and a MAC keyed by
the token on every frame. At adoption the daemon reads the identity, refuses a key that is
no longer authorized, recomputes the token and checks every MAC: a copied identity proves
nothing without the token, and only a daemon's secret makes tokens.

Standard library only on the publisher's side (hmac, hashlib): publishers import this module.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path

IDENTITY_FILE = "identity"  # whom the token was handed to: a z85 public key, or LOCAL
LOCAL = "local"  # a publisher on the daemon's private ipc sockets (no key)
MAC_BYTES = 16
_SECRET_LABEL = b"memorybank spool v1"


def frame_mac(token: bytes, seq: int, raw: bytes) -> bytes:
    """The MAC a spool frame carries: HMAC-SHA256 keyed by the token, over seq and message."""
    return hmac.new(token, struct.pack("<Q", seq) + raw, hashlib.sha256).digest()[:MAC_BYTES]


def read_identity(folder: Path) -> str | None:
    """The identity a spool's publisher was given its token for (None: it had none)."""
    try:
        return (folder / IDENTITY_FILE).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None


class SpoolRefused(Exception):
    """A spool this daemon must not apply; the message says why."""


class SpoolAuth:
    """The daemon's side: the tokens it hands out, and which spools it may apply."""

    def __init__(self, daemon_secret_key: bytes, authorized_keys_dir: str | Path):
        """``daemon_secret_key``: the daemon's CURVE secret key (32 bytes)."""
        self._secret = hmac.new(daemon_secret_key, _SECRET_LABEL, hashlib.sha256).digest()
        self.authorized_keys_dir = Path(authorized_keys_dir)

    def token(self, publisher_id: int, identity: str) -> bytes:
        """What ``publisher_id`` MACs its spool frames with, once ``identity`` reached us."""
        subject = b"%d %s" % (publisher_id, identity.encode())
        return hmac.new(self._secret, subject, hashlib.sha256).digest()

    def authorized(self) -> set[str]:
        """The authorized public keys, read afresh (the folder may change while running)."""
        import zmq.auth

        return {k.decode() for k in zmq.auth.load_certificates(str(self.authorized_keys_dir))}

    def token_for(self, folder: Path, publisher_id: int) -> bytes:
        """The token the spool in ``folder`` must be MAC'd with; SpoolRefused if its
        publisher never had one or its key is not (or no longer) authorized."""
        try:
            identity = read_identity(folder)
        except OSError as exc:
            raise SpoolRefused(f"its {IDENTITY_FILE} file cannot be read: {exc}") from None
        if identity is None:
            raise SpoolRefused(
                "it carries no spool token: its publisher wrote it before it ever reached "
                "this daemon (or was refused)"
            )
        if identity != LOCAL and identity not in self.authorized():
            raise SpoolRefused(f"its key {identity} is not in {self.authorized_keys_dir}")
        return self.token(publisher_id, identity)
