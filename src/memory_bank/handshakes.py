"""Refused CURVE handshakes, which ZeroMQ keeps silent: a refused publisher just never
gets an answer, and the daemon logs nothing.

Two sources see them. The ZAP handler (pyzmq's ThreadAuthenticator, which logs its
decisions at DEBUG only) sees each public key it refuses, with the peer's address; socket
monitors see the peers that fail before ZAP is asked (no CURVE keys at all, or a server
key that is not this daemon's). Each refusal is counted for ``status`` and logged, at most
a few lines a minute per source, then "suppressed N".
"""

from __future__ import annotations

import logging
import threading
import time

import zmq
from zmq.auth.base import Authenticator
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from . import sockets
from .ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

LOG_BURST = 5
LOG_INTERVAL = 60.0


class _CountingAuthenticator(ThreadAuthenticator):
    """pyzmq's authenticator, reporting the handshakes it refuses (on its own thread)."""

    def __init__(self, ctx: zmq.Context, watch: HandshakeWatch):
        super().__init__(ctx)
        self._watch = watch
        self._request: tuple[str, str] = ("?", "?")  # the address and key being decided
        self._log = RateLimitedLog(log, LOG_BURST, LOG_INTERVAL)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._request = ("?", "?")
        if len(msg) >= 7 and msg[5] == b"CURVE" and len(msg[6]) == 32:
            self._request = (msg[3].decode(errors="replace"), z85.encode(msg[6]).decode())
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous"):
        super()._send_zap_reply(request_id, status_code, status_text, user_id)
        if status_code != b"200":
            address, key = self._request
            self._watch.count(
                f"refused a CURVE handshake from {address}: public key {key} is not in "
                f"curve_authorized_keys_dir ({status_text.decode(errors='replace')})",
                self._log,
            )

    def stop(self) -> None:
        if self.is_alive():
            super().stop()
        else:  # its thread died: nothing would take the stop request off the pipe
            log.error("the CURVE authenticator's thread had stopped")
            Authenticator.stop(self)


class HandshakeWatch:
    """Counts and logs refused handshakes on the daemon's CURVE sockets."""

    def __init__(self, ctx: zmq.Context, authorized_keys_dir: str):
        self.refused = 0
        self.last_refused: str | None = None
        self.last_refused_at: float | None = None
        self._count_lock = threading.Lock()  # the authenticator counts on its own thread
        self._watched: list[tuple[zmq.Socket, zmq.Socket]] = []  # (socket, its monitor)
        self._log = RateLimitedLog(log, LOG_BURST, LOG_INTERVAL)
        self.authenticator = _CountingAuthenticator(ctx, self)
        self.authenticator.start()
        self.authenticator.configure_curve(domain="*", location=authorized_keys_dir)

    def count(self, what: str, logger: RateLimitedLog) -> None:
        with self._count_lock:
            self.refused += 1
            self.last_refused, self.last_refused_at = what, time.time()
        logger.warning("%s", what)

    def watch(self, sock: zmq.Socket) -> zmq.Socket:
        """Monitor ``sock``'s handshakes; returns the monitor socket for the daemon's poller."""
        monitor = sock.get_monitor_socket(sockets.HANDSHAKE_EVENTS)
        self._watched.append((sock, monitor))
        return monitor

    def read(self, monitor: zmq.Socket) -> None:
        """Count what a monitor reports (refused keys are the authenticator's to report)."""
        failures, _ = sockets.handshake_failures(monitor, server=True)
        for kind, meaning in failures:
            if kind != zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.count(f"refused a handshake: {meaning}", self._log)

    def figures(self) -> dict:
        return {
            "refused_handshakes": self.refused,
            "last_refused_handshake": self.last_refused,
            "last_refused_handshake_at": self.last_refused_at,
        }

    def stop(self) -> None:
        for sock, monitor in self._watched:
            sock.disable_monitor()
            monitor.close(0)
        self.authenticator.stop()
