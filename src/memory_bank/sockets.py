"""The one place that creates ZeroMQ sockets and sets their options, with the reason for each.

Patterns: records travel PUSH (publisher) -> PULL (daemon), a pipeline; control requests
(sync, stats, maintenance) travel DEALER (client) -> ROUTER (daemon), a request-reply that
lets the daemon hold a sync request open until the batch it waits for is committed.
"""

from __future__ import annotations

import os
import re
import sys

import zmq

# Messages queued in ZeroMQ per publisher before send() would block; the publisher keeps
# further records in its own bounded queue. 1000 messages of up to 512 records is plenty.
PUBLISHER_SNDHWM = 1000
# The daemon's inbound queue, in messages (up to 512 rows each): enough to keep the writer
# busy through a commit, small enough that a burst waits in the publishers (which keep
# everything until acknowledged anyway), not in the daemon's memory.
DAEMON_RCVHWM = 64
# The largest message the daemon accepts; larger ones are dropped by ZeroMQ before decoding.
DAEMON_MAXMSGSIZE = 16 * 1024 * 1024
# An ipc socket file: connecting needs write permission on it, so the group may connect
# and the folder holding it decides who reaches it (see discovery.runtime_dir).
IPC_SOCKET_MODE = 0o660
# Handshake outcomes a CURVE socket reports to its monitor (ZeroMQ says nothing otherwise:
# a refused peer just never gets an answer).
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
)


def control_endpoint_for(data_endpoint: str) -> str:
    """A user names one endpoint; the control socket sits beside it.

    ``ipc://X.data`` pairs with ``ipc://X.ctl``; ``ipc://X`` with ``ipc://X.ctl``;
    ``tcp://HOST:PORT`` with ``tcp://HOST:PORT+1``.
    """
    if data_endpoint.startswith("ipc://"):
        base = data_endpoint[: -len(".data")] if data_endpoint.endswith(".data") else data_endpoint
        return base + ".ctl"
    match = re.fullmatch(r"tcp://(.+):(\d+)", data_endpoint)
    if match:
        return f"tcp://{match.group(1)}:{int(match.group(2)) + 1}"
    raise ValueError(f"endpoint {data_endpoint!r} must be ipc://PATH or tcp://HOST:PORT")


def tail_endpoint_for(data_endpoint: str) -> str:
    """Where `memorybank view --follow` listens: ``ipc://X.tail`` or ``tcp://H:P+2``."""
    control = control_endpoint_for(data_endpoint)
    if control.startswith("ipc://"):
        return control[: -len(".ctl")] + ".tail"
    host, port = control.rsplit(":", 1)
    return f"{host}:{int(port) + 1}"


def _client_curve(sock: zmq.Socket, curve: dict | None) -> None:
    """CURVE client keys: the daemon's public key, and this publisher's key pair (z85)."""
    if curve:
        sock.curve_serverkey = curve["server_key"].encode()
        sock.curve_publickey = curve["public_key"].encode()
        sock.curve_secretkey = curve["secret_key"].encode()


def _server_curve(sock: zmq.Socket, curve: dict | None) -> None:
    """CURVE server: the daemon's key pair; the ZAP authenticator checks client keys."""
    if curve:
        sock.curve_publickey = curve["public_key"].encode()
        sock.curve_secretkey = curve["secret_key"].encode()
        sock.curve_server = True


def publisher_push(ctx: zmq.Context, endpoint: str, curve: dict | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    # The publisher keeps every message until the daemon acknowledges its commit and
    # replays on a fresh socket when needed, so ZeroMQ's own queue is never the only copy.
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, PUBLISHER_SNDHWM)
    _client_curve(sock, curve)
    sock.connect(endpoint)
    return sock


def control_dealer(ctx: zmq.Context, endpoint: str, curve: dict | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    # Requests are worthless once their caller gave up; never hold an exit for them.
    sock.setsockopt(zmq.LINGER, 0)
    _client_curve(sock, curve)
    sock.connect(endpoint)
    return sock


def ipc_path(endpoint: str) -> str | None:
    """The socket file of an ipc:// endpoint (None for any other transport)."""
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else None


def bind(sock: zmq.Socket, endpoint: str) -> None:
    """Bind, giving an ipc socket file IPC_SOCKET_MODE whatever the umask made it."""
    sock.bind(endpoint)
    path = ipc_path(endpoint)
    if path is not None:
        os.chmod(path, IPC_SOCKET_MODE)


def _bind(sock: zmq.Socket, endpoint: str, curve: dict | None, local: str | None, binder) -> None:
    """Bind the local endpoint first (NULL mechanism: its folder guards it), then the CURVE
    endpoint: security options apply to the binds that follow them."""
    if local is not None:
        binder(sock, local)
    _server_curve(sock, curve)
    binder(sock, endpoint)


def handshake_failures(monitor: zmq.Socket, server: bool) -> tuple[list[tuple[int, str]], int]:
    """Drain a socket monitor (``sock.get_monitor_socket(HANDSHAKE_EVENTS)``): each failed
    handshake's event and what it most likely means, from the ``server`` or the client
    side; and how many handshakes succeeded."""
    found = []
    succeeded = 0
    while monitor.poll(0):
        kind, value = _monitor_event(monitor.recv_multipart())
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            succeeded += 1
            continue
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            meaning = (
                f"a public key not in curve_authorized_keys_dir (status {value})"
                if server
                else f"the daemon refused this publisher's public key (status {value}): put "
                "its .key file into the daemon's curve_authorized_keys_dir"
            )
        elif value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            meaning = (
                "a peer without CURVE keys"
                if server
                else "the daemon and this publisher disagree on CURVE (one has keys, the other not)"
            )
        else:
            meaning = (
                "a failed CURVE handshake (the peer's server key is not this daemon's public key?)"
                if server
                else "the CURVE handshake failed, most likely because server_key is not the "
                "daemon's public key"
            )
        found.append((kind, meaning))
    return found, succeeded


def _monitor_event(frames: list[bytes]) -> tuple[int, int]:
    """A monitor message's (event, value): its first frame is libzmq's uint16 event and
    uint32 value, native byte order. Read here, not with zmq.utils.monitor, which imports
    asyncio (20-40 ms of CPU: a publisher asks at a flush that overtakes a request)."""
    head = frames[0]
    if len(frames) != 2 or len(head) != 6:
        raise ValueError(f"not a socket monitor message: {frames!r}")
    return int.from_bytes(head[:2], sys.byteorder), int.from_bytes(head[2:], sys.byteorder)


def clear_wakeup(fd: int) -> None:
    """Reset an eventfd a poller watches beside the sockets (a thread's wake-up, set with
    ``os.eventfd_write``): left set it stays readable, and every poll returns at once."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:  # not set: nothing to clear
        pass


# The daemon's sockets take a ``binder(sock, endpoint)``: ``bind``, or one that also
# keeps the binds there while the daemon runs (bindings.Bindings.bind).


def daemon_pull(
    ctx: zmq.Context,
    endpoint: str,
    curve: dict | None = None,
    local: str | None = None,
    binder=bind,
) -> zmq.Socket:
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, DAEMON_RCVHWM)
    sock.setsockopt(zmq.MAXMSGSIZE, DAEMON_MAXMSGSIZE)
    sock.setsockopt(zmq.LINGER, 0)
    _bind(sock, endpoint, curve, local, binder)
    return sock


def daemon_router(
    ctx: zmq.Context,
    endpoint: str,
    curve: dict | None = None,
    local: str | None = None,
    binder=bind,
) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.MAXMSGSIZE, 1024 * 1024)
    sock.setsockopt(zmq.LINGER, 0)
    _bind(sock, endpoint, curve, local, binder)
    return sock


def daemon_tail(ctx: zmq.Context, endpoint: str, binder=bind) -> zmq.Socket:
    sock = ctx.socket(zmq.XPUB)
    # Every (un)subscription reaches the daemon, which publishes only while someone follows.
    sock.setsockopt(zmq.XPUB_VERBOSER, 1)
    # A slow follower misses lines rather than holding memory: the database has them all.
    sock.setsockopt(zmq.SNDHWM, 10000)
    sock.setsockopt(zmq.LINGER, 0)
    binder(sock, endpoint)
    return sock


def follower_sub(ctx: zmq.Context, endpoint: str, connect: bool = True) -> zmq.Socket:
    """``connect=False`` leaves the connect to the caller (to attach a monitor first)."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if connect:
        sock.connect(endpoint)
    return sock
