"""How a publisher's sender thread reaches its writer: the Transport protocol, and ZeroMQ's.

Two implement it: ZmqTransport (a daemon, over PUSH for messages and a DEALER for the
control channel) and embedded.EmbeddedWriter (a Writer in a thread of this process). Both
carry the maps wire.py builds, so the sender speaks one protocol whichever is underneath.
"""

from __future__ import annotations

import time
from typing import Protocol

import msgpack
import zmq

from .. import sockets, wire


class Transport(Protocol):
    """What the sender thread needs of the way to its writer (called from that thread
    only, except ``lease_block``, which the caller's thread may call when a block is used
    up)."""

    def try_send(self, raw: bytes) -> bool:
        """Hand one packed message over without blocking; False when it cannot take it now
        (it is sent again later)."""

    def request(self, body: dict) -> None:
        """Send a control request (wire.sync_request); its reply comes through replies()."""

    def replies(self) -> list[dict]:
        """The control replies that arrived since the last call."""

    def restart_data(self) -> None:
        """Forget what is queued for sending (a replay follows) and connect afresh."""

    def poll_items(self, want_write: bool) -> list:
        """(socket or fd, zmq poll flags) pairs that wake the sender: a reply, and room to
        send when ``want_write``."""

    def lease_block(self, timeout: float) -> tuple[int, tuple[str, bytes] | None]:
        """A new id block from the writer, and the spool token it hands with it (under
        CURVE; see spool_auth), within ``timeout`` seconds."""

    def close(self) -> None:
        """Release what the transport holds (Publisher.close calls it last)."""


class ZmqTransport:
    """Messages to a daemon over PUSH; acknowledgements over a DEALER. Sender thread only."""

    def __init__(self, data_endpoint: str, control_endpoint: str, curve: dict | None = None):
        self.data_endpoint = data_endpoint
        self.control_endpoint = control_endpoint
        self.curve = curve
        self.ctx = zmq.Context()
        self._push: zmq.Socket | None = None
        self._dealer: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None  # the dealer's handshakes: why no answer
        self._cause = ""  # what the last failed handshake said (likely_cause)

    def _sockets(self) -> tuple[zmq.Socket, zmq.Socket]:
        if self._push is None:
            self._push = sockets.publisher_push(self.ctx, self.data_endpoint, self.curve)
        if self._dealer is None:
            self._dealer = sockets.control_dealer(self.ctx, self.control_endpoint, self.curve)
            self._monitor = self._dealer.get_monitor_socket(sockets.HANDSHAKE_EVENTS)
        return self._push, self._dealer

    def likely_cause(self) -> str:
        """Why the daemon may not answer, when its CURVE handshakes said (else ""): the
        last failure read, until a handshake succeeds (libzmq retries, so a failure seen
        once goes on failing; the monitor's events are read once each)."""
        if self._monitor is None:
            return ""
        failures, succeeded = sockets.handshake_failures(self._monitor, server=False)
        if failures:
            self._cause = f" ({failures[-1][1]})"
        elif succeeded:
            self._cause = ""
        return self._cause

    def try_send(self, raw: bytes) -> bool:
        push, _ = self._sockets()
        try:
            push.send(raw, zmq.NOBLOCK, copy=len(raw) < 65536)
            return True
        except zmq.Again:
            return False

    def request(self, body: dict) -> None:
        _, dealer = self._sockets()
        try:
            dealer.send(msgpack.packb(body), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the request is retried after the sender's ACK_TIMEOUT

    def replies(self) -> list[dict]:
        _, dealer = self._sockets()
        out = []
        while True:
            try:
                out.append(msgpack.unpackb(dealer.recv(zmq.NOBLOCK), raw=False))
            except zmq.Again:
                return out
            except ValueError:
                continue

    def restart_data(self) -> None:
        """Drop what ZeroMQ still queues (it will be replayed) and connect afresh."""
        if self._push is not None:
            self._push.close(0)
            self._push = None

    def poll_items(self, want_write: bool) -> list:
        push, dealer = self._sockets()
        items = [(dealer, zmq.POLLIN)]
        if want_write:
            items.append((push, zmq.POLLOUT))
        return items

    def lease_block(self, timeout: float) -> tuple[int, tuple[str, bytes] | None]:
        """A new id block from the daemon, and the spool token it hands with it (under
        CURVE; see spool_auth)."""
        from ..control import ControlClient, DaemonUnavailable

        client = ControlClient(self.control_endpoint, self.ctx, self.curve)
        deadline = time.monotonic() + timeout
        try:
            while True:  # a daemon whose database is briefly down answers "not now"
                lease = wire.Lease.parse(
                    client.request(wire.OP_LEASE, timeout=max(deadline - time.monotonic(), 0.1))
                )
                if lease.block is not None:
                    return lease.block, lease.token
                if time.monotonic() >= deadline:
                    raise DaemonUnavailable(
                        f"the daemon at {self.control_endpoint} could not lease ids: {lease.error}"
                    )
                time.sleep(0.2)
        finally:
            client.close()

    def close(self) -> None:
        for sock in (self._push, self._dealer, self._monitor):
            if sock is not None:
                sock.close(0)
        self._push = self._dealer = self._monitor = None
        self.ctx.term()
