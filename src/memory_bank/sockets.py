"""The one place that creates ZeroMQ sockets and sets their options, with the reason for each.

Patterns: records travel PUSH (publisher) -> PULL (daemon), a pipeline; control requests
(sync, stats, maintenance) travel DEALER (client) -> ROUTER (daemon), a request-reply that
lets the daemon hold a sync request open until the batch it waits for is committed.
"""

from __future__ import annotations

import re

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


def _bind(sock: zmq.Socket, endpoint: str, curve: dict | None, local: str | None) -> None:
    """Bind the private local endpoint first (NULL mechanism: the 0700 folder guards it),
    then the CURVE endpoint: security options apply to the binds that follow them."""
    if local is not None:
        sock.bind(local)
    _server_curve(sock, curve)
    sock.bind(endpoint)


def daemon_pull(
    ctx: zmq.Context, endpoint: str, curve: dict | None = None, local: str | None = None
) -> zmq.Socket:
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, DAEMON_RCVHWM)
    sock.setsockopt(zmq.MAXMSGSIZE, DAEMON_MAXMSGSIZE)
    sock.setsockopt(zmq.LINGER, 0)
    _bind(sock, endpoint, curve, local)
    return sock


def daemon_router(
    ctx: zmq.Context, endpoint: str, curve: dict | None = None, local: str | None = None
) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.MAXMSGSIZE, 1024 * 1024)
    sock.setsockopt(zmq.LINGER, 0)
    _bind(sock, endpoint, curve, local)
    return sock


def daemon_tail(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.XPUB)
    # Every (un)subscription reaches the daemon, which publishes only while someone follows.
    sock.setsockopt(zmq.XPUB_VERBOSER, 1)
    # A slow follower misses lines rather than holding memory: the database has them all.
    sock.setsockopt(zmq.SNDHWM, 10000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock


def follower_sub(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock
