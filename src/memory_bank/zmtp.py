"""One control request to a daemon on this host, over its local ipc socket, in ZMTP 3.0
(ZeroMQ's wire protocol, https://rfc.zeromq.org/spec/23/) with the NULL mechanism, through
the standard library's ``_socket``: the C module whose socket objects ``socket.socket``
subclasses. The socket module itself adds what one Unix-socket request never uses (its
enum conversions, selectors), a fifth of ``memorybank status``'s start-up.

Importing pyzmq is about half of ``memorybank status``'s start-up; a single request and a
single reply on a local socket (which the daemon binds with the NULL mechanism: its folder
guards it) need only the greeting, the READY handshake and two one-frame messages, as a
DEALER talking to the daemon's ROUTER. Anything this client does not expect before the
request is sent gives None, and the caller asks through pyzmq (control.py) instead.
"""

from __future__ import annotations

import time
from _socket import AF_UNIX, SOCK_STREAM, socket

MORE, LONG, COMMAND = 0x01, 0x02, 0x04
# Signature, version 3.0, the NULL mechanism, as-server 0, filler: 64 bytes.
GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32)


class NoAnswer(Exception):
    """The peer said nothing for the whole timeout."""


def _frame(body: bytes, flags: int = 0) -> bytes:
    if len(body) > 255:
        return bytes([flags | LONG]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + len(value).to_bytes(4, "big") + value


READY = _frame(
    b"\x05READY" + _property(b"Socket-Type", b"DEALER") + _property(b"Identity", b""), COMMAND
)


class _Reader:
    def __init__(self, sock: socket, deadline: float):
        self.sock, self.deadline = sock, deadline

    def exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            self.sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            data += chunk
        return data

    def frame(self) -> tuple[int, bytes]:
        flags = self.exactly(1)[0]
        size_bytes = self.exactly(8 if flags & LONG else 1)
        size = int.from_bytes(size_bytes, "big")
        return flags, self.exactly(size)


def request(path: str, body: bytes, timeout: float) -> bytes | None:
    """Send ``body`` to the ROUTER bound at the ipc socket ``path`` and return its one-frame
    reply. None when no ZMTP 3 peer with the NULL mechanism is there, or its answer is not
    one frame (only idempotent requests come here: the caller may ask again through pyzmq);
    NoAnswer when the peer said nothing for ``timeout`` seconds (a stopped daemon)."""
    deadline = time.monotonic() + timeout
    sock = socket(AF_UNIX, SOCK_STREAM)
    try:
        reader = _Reader(sock, deadline)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(GREETING + READY)
            greeting = reader.exactly(64)
            if greeting[0] != 0xFF or greeting[9] != 0x7F or greeting[10] < 3:
                return None
            if greeting[12:32].rstrip(b"\0") != b"NULL":
                return None
            flags, ready = reader.frame()
            if not flags & COMMAND or not ready.startswith(b"\x05READY"):
                return None
            sock.sendall(_frame(body))
            while True:
                flags, payload = reader.frame()
                if flags & COMMAND:  # a ZMTP 3.1 heartbeat, say
                    continue
                return None if flags & MORE else payload
        except TimeoutError:
            raise NoAnswer from None
        except OSError:  # refused, reset, closed: no daemon listens there
            return None
    finally:
        sock.close()
