"""The client half of the control channel: sync barriers, status figures, maintenance.

Standard library, pyzmq and msgpack only: publishers use it for their sync barrier.
"""

from __future__ import annotations

import itertools
import threading
import time

import msgpack
import zmq

from . import sockets


class DaemonUnavailable(RuntimeError):
    """No daemon answered on the control endpoint in time."""


class ControlClient:
    """Sends one request at a time (thread-safe) and waits for its reply."""

    def __init__(self, endpoint: str, ctx: zmq.Context | None = None, curve: dict | None = None):
        self.endpoint = endpoint
        self.curve = curve
        self._ctx = ctx or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def request(self, op: str, timeout: float = 5.0, **fields) -> dict:
        """Send ``op`` and return the reply map; raises DaemonUnavailable on timeout."""
        with self._lock:
            if self._sock is None:
                self._sock = sockets.control_dealer(self._ctx, self.endpoint, self.curve)
            rid = next(self._ids)
            self._sock.send(msgpack.packb({"op": op, "rid": rid, **fields}))
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self._sock.poll(int(left * 1000) + 1):
                    raise DaemonUnavailable(
                        f"no answer to {op!r} from {self.endpoint} within {timeout:g}s"
                    )
                reply = msgpack.unpackb(self._sock.recv(), raw=False)
                if reply.get("rid") == rid:  # replies to requests we gave up on are dropped
                    return reply

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close(0)
                self._sock = None


def wait_for_daemon(db_path, timeout: float = 10.0) -> dict:
    """Wait until the daemon of ``db_path`` answers a ping; returns its answer."""
    from . import discovery

    path = discovery.resolve_db_path(db_path)
    deadline = time.monotonic() + timeout
    while True:
        info = discovery.read_daemon_info(path) or {}
        if discovery.daemon_running(path) and info.get("control_endpoint"):
            client = ControlClient(info["control_endpoint"])
            try:
                return client.request("ping", timeout=0.5)
            except DaemonUnavailable:
                pass
            finally:
                client.close()
        if time.monotonic() >= deadline:
            raise DaemonUnavailable(f"no daemon serves {path} after {timeout:g}s")
        time.sleep(0.05)


def daemon_stats(db_path, timeout: float = 5.0) -> dict:
    """The figures of the daemon serving ``db_path``; DaemonUnavailable when none does."""
    from . import discovery

    path = discovery.resolve_db_path(db_path)
    if not discovery.daemon_running(path):
        raise DaemonUnavailable(f"no daemon serves {path}")
    client = ControlClient(discovery.find_endpoints(path).control)
    try:
        return client.request("stats", timeout=timeout)["stats"]
    finally:
        client.close()
