"""The client half of the control channel: sync barriers, status figures, maintenance.

Standard library, pyzmq and msgpack only: publishers use it for their sync barrier.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable

import msgpack
import zmq

from . import sockets, wire

# While a long request (a maintenance run) is outstanding, the daemon is pinged this often;
# an answer from another instance, a lock no longer held, or no answer at all for
# SILENCE_SECONDS means the daemon that took the request is gone and will never answer.
LIVENESS_SECONDS = 2.0
SILENCE_SECONDS = 30.0


class DaemonUnavailable(RuntimeError):
    """No daemon answered on the control endpoint in time."""


class DaemonLost(DaemonUnavailable):
    """The daemon stopped, or was replaced by another, before answering a request."""


class ControlClient:
    """Sends one request at a time (thread-safe) and waits for its reply."""

    def __init__(self, endpoint: str, ctx: zmq.Context | None = None, curve: dict | None = None):
        self.endpoint = endpoint
        self.curve = curve
        self._ctx = ctx or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None  # its handshakes: why it was not answered
        self._handshakes = 0  # that succeeded
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def request(self, op: str, timeout: float = 5.0, **fields) -> dict:
        """Send ``op`` with ``fields`` and return the reply map; raises DaemonUnavailable on
        timeout."""
        return self.send(wire.request(op, 0, **fields), timeout)

    def send(self, body: dict, timeout: float = 5.0) -> dict:
        """Send a request a wire constructor built (its rid is numbered here) and return the
        reply map; raises DaemonUnavailable on timeout."""
        op = body["op"]
        with self._lock:
            sock, rid = self._send(body)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000) + 1):
                    raise DaemonUnavailable(
                        f"no answer to {op!r} from {self.endpoint} within {timeout:g}s"
                        + self._likely_cause()
                    )
                reply = msgpack.unpackb(sock.recv(), raw=False)
                if reply.get("rid") == rid:  # replies to requests we gave up on are dropped
                    return reply

    def request_until_done(
        self,
        body: dict,
        alive: Callable[[], bool] | None = None,
        check_every: float = LIVENESS_SECONDS,
        silence: float = SILENCE_SECONDS,
    ) -> dict:
        """Send the request ``body`` (from a wire constructor) and wait for its reply however
        long the work takes, as long as the daemon that took it lives: raises DaemonLost when
        ``alive()`` (the local writer lock, say) turns false, when a ping is answered by
        another instance, or when nothing is heard for ``silence`` seconds."""
        op = body["op"]
        hello = self.request(wire.OP_PING, timeout=silence)
        pid, instance = hello.get("pid"), hello.get("instance")
        with self._lock:
            sock, rid = self._send(body)
            heard = time.monotonic()
            ping_rid = None
            while True:
                if sock.poll(int(check_every * 1000)):
                    reply = msgpack.unpackb(sock.recv(), raw=False)
                    if reply.get("rid") == rid:
                        return reply
                    if reply.get("rid") == ping_rid:
                        if reply.get("instance") != instance:
                            raise DaemonLost(
                                f"the daemon restarted (pid {pid}, now pid {reply.get('pid')}) "
                                f"before {op!r} finished, so no result will come; run it again"
                            )
                        heard, ping_rid = time.monotonic(), None
                    continue
                if alive is not None and not alive():
                    raise DaemonLost(
                        f"the daemon (pid {pid}) stopped before {op!r} finished, so no "
                        "result will come; run it again once a daemon serves the database"
                    )
                if time.monotonic() - heard > silence:
                    raise DaemonLost(
                        f"no answer from the daemon (pid {pid}) at {self.endpoint} for "
                        f"{silence:g}s while {op!r} ran; it is stopped or unreachable"
                    )
                if ping_rid is None:
                    _, ping_rid = self._send(wire.request(wire.OP_PING, 0))

    def _send(self, body: dict) -> tuple[zmq.Socket, int]:
        """Number ``body`` and send it (the lock held); returns the socket and its rid."""
        if self._sock is None:
            self._sock = sockets.control_dealer(self._ctx, self.endpoint, self.curve)
            self._monitor = self._sock.get_monitor_socket(sockets.HANDSHAKE_EVENTS)
        rid = next(self._ids)
        self._sock.send(msgpack.packb({**body, "rid": rid}))
        return self._sock, rid

    def _likely_cause(self) -> str:
        """Why the daemon may not have answered, as its handshakes told this client."""
        if self._monitor is None:
            return ""
        failures, succeeded = sockets.handshake_failures(self._monitor, server=False)
        self._handshakes += succeeded
        if failures:
            return ": " + failures[-1][1]
        if self._handshakes:
            return ""
        return " (no handshake with a daemon there: is one listening?)"

    def close(self) -> None:
        with self._lock:
            if self._monitor is not None and self._sock is not None:
                self._sock.disable_monitor()
                self._monitor.close(0)
                self._monitor = None
            if self._sock is not None:
                self._sock.close(0)
                self._sock = None


def locate_control(db, endpoint: str | None = None) -> str:
    """The control endpoint of the daemon serving ``db`` (a path or URL) at ``endpoint``.

    A daemon on this host is found through its lock file (which also gives its local ipc
    endpoint when the network one needs CURVE); a named endpoint elsewhere is used as is.
    """
    from . import discovery

    key = discovery.location_key(db, endpoint)
    if discovery.daemon_running(key):
        return discovery.find_endpoints(key).control
    if endpoint is not None:
        return sockets.control_endpoint_for(endpoint)
    raise DaemonUnavailable(f"no daemon serves {discovery.redact_url(os.fspath(db))}")


def wait_for_daemon(db_path, timeout: float = 10.0, endpoint: str | None = None) -> dict:
    """Wait until the daemon of ``db_path`` answers a ping; returns its answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            control = locate_control(db_path, endpoint)
        except DaemonUnavailable:
            control = None
        if control is not None:
            client = ControlClient(control)
            try:
                return client.request(wire.OP_PING, timeout=0.5)
            except DaemonUnavailable:
                pass
            finally:
                client.close()
        if time.monotonic() >= deadline:
            raise DaemonUnavailable(f"no daemon answered for {db_path} within {timeout:g}s")
        time.sleep(0.05)


def run_maintenance(db, job: str, days: float | None = None, endpoint: str | None = None) -> dict:
    """Ask the daemon serving ``db`` to run ``job`` (retention or vacuum) now; returns its
    reply (``run``: what the run did). DaemonUnavailable when no daemon serves ``db``,
    DaemonLost when it stops or restarts before the run ends."""
    from . import discovery

    key = discovery.location_key(db, endpoint)
    local = discovery.daemon_running(key)
    client = ControlClient(locate_control(db, endpoint))
    try:
        return client.request_until_done(
            wire.maintenance_request(job, 0, days=days),
            alive=(lambda: discovery.daemon_running(key)) if local else None,
        )
    finally:
        client.close()


def clear_old_data(db, days: float, endpoint: str | None = None) -> dict[str, int]:
    """The seed's clear_old_data(days) through the daemon serving ``db``: events, anomalies
    and metrics older than ``days`` are deleted; returns rows deleted per table.
    DaemonUnavailable (saying how to start one) when no daemon serves ``db``."""
    try:
        reply = run_maintenance(db, "retention", days, endpoint)
    except DaemonLost:
        raise
    except DaemonUnavailable as exc:
        from .discovery import redact_url

        shown = redact_url(os.fspath(db))
        raise DaemonUnavailable(
            f"{exc} — start one with 'memorybank daemon --db {shown}'"
        ) from None
    return deleted_by_retention(reply)


def deleted_by_retention(reply: dict) -> dict[str, int]:
    """Rows a retention run deleted per table, from its reply; RuntimeError if it failed."""
    run = reply.get("run")
    if run is None:
        raise RuntimeError(f"daemon refused retention: {reply.get('error')}")
    if run["status"] != "ok":
        raise RuntimeError(f"retention failed: {run['error']}")
    return {"events": 0, "anomalies": 0, "metrics": 0, **(run["deleted"] or {})}


def daemon_stats(db_path, timeout: float = 5.0, endpoint: str | None = None) -> dict:
    """The figures of the daemon serving ``db_path``; DaemonUnavailable when none does."""
    client = ControlClient(locate_control(db_path, endpoint))
    try:
        return client.request(wire.OP_STATS, timeout=timeout)["stats"]
    finally:
        client.close()
