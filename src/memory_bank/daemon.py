"""The daemon: the only process that writes a database.

Its loop reads like its description: poll, receive, decode and validate, batch, commit,
answer whoever waits for a commit. Signals only set flags (through a wake-up socket the
poller watches); the loop acts on them. On SIGTERM or SIGINT it stops receiving, commits
everything it received, and exits 0.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zmq

from . import __version__, discovery, sockets, wire
from .store.sqlite import SqliteStore
from .writer import Writer

log = logging.getLogger(__name__)

# How many messages one pass of the loop takes off the socket before it looks at the clock.
RECV_BURST = 256
# How long a stopping daemon keeps draining messages already queued to it.
DRAIN_SECONDS = 5.0


@dataclass
class DaemonSettings:
    db_path: Path
    endpoint: str | None = None  # data endpoint; the control endpoint sits beside it
    batch_rows: int = 4000
    batch_seconds: float = 0.05
    synchronous: str = "FULL"
    max_db_bytes: int | None = None  # the store refuses to grow past this (then waits)
    limits: wire.Limits = wire.DEFAULT_LIMITS
    curve_secret_key_file: str | None = None  # the daemon's CURVE certificate (secret)
    curve_authorized_keys_dir: str | None = None  # publishers' public certificates


class SecurityError(ValueError):
    """An endpoint that would let anyone on the network write, without CURVE."""


def _is_loopback_endpoint(endpoint: str) -> bool:
    match = re.fullmatch(r"tcp://(.+):(\d+)", endpoint)
    if match is None:
        return endpoint.startswith("ipc://")
    host = match.group(1).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name


def _load_curve(settings: DaemonSettings) -> dict | None:
    if not settings.curve_secret_key_file:
        return None
    import zmq.auth

    public, secret = zmq.auth.load_certificate(settings.curve_secret_key_file)
    if secret is None:
        raise SecurityError(f"{settings.curve_secret_key_file} holds no secret key")
    if not settings.curve_authorized_keys_dir:
        raise SecurityError("curve_authorized_keys_dir must name the publishers' public keys")
    return {"public_key": public.decode(), "secret_key": secret.decode()}


class Daemon:
    def __init__(self, settings: DaemonSettings):
        self.settings = settings
        self.db_path = discovery.resolve_db_path(settings.db_path)
        if settings.endpoint:
            self.endpoints = discovery.Endpoints(
                settings.endpoint, sockets.control_endpoint_for(settings.endpoint)
            )
        else:
            self.endpoints = discovery.default_endpoints(self.db_path)
        self._stop_requested = False
        self._lock = discovery.WriterLock(self.db_path)
        self.curve = _load_curve(settings)
        if self.curve is None and not _is_loopback_endpoint(self.endpoints.data):
            raise SecurityError(
                f"refusing to bind {self.endpoints.data} without CURVE keys: anyone on the "
                "network could write. Bind 127.0.0.1 or ipc://, or configure "
                "curve_secret_key_file and curve_authorized_keys_dir (memorybank keygen)"
            )

    # -- signals: flags only ----------------------------------------------------------
    def _on_stop_signal(self, signum, _frame) -> None:
        self._stop_requested = True
        log.info("received %s: finishing", signal.Signals(signum).name)

    def run(self) -> int:
        """Serve until stopped; returns the exit status. Raises DaemonLockedError at once when
        another writer owns the database."""
        started = time.time()
        self._lock.acquire({"pid": os.getpid(), "started": started, "starting": True})
        try:
            return self._serve(started)
        finally:
            self._lock.release()

    def _serve(self, started: float) -> int:
        store = SqliteStore(
            self.db_path,
            synchronous=self.settings.synchronous,
            max_db_bytes=self.settings.max_db_bytes,
        )
        discovery.reserve_id_blocks(self.db_path, store.first_free_id_block())
        writer = Writer(
            store, self.settings.batch_rows, self.settings.batch_seconds, self.settings.limits
        )
        writer.extra_figures = lambda: {
            "data_endpoint": self.endpoints.data,
            "control_endpoint": self.endpoints.control,
            "version": __version__,
        }
        ctx = zmq.Context()
        authenticator = None
        if self.curve is not None:
            from zmq.auth.thread import ThreadAuthenticator

            authenticator = ThreadAuthenticator(ctx)
            authenticator.start()
            authenticator.configure_curve(
                domain="*", location=self.settings.curve_authorized_keys_dir
            )
        # With CURVE on the network endpoint, local processes (publishers on this host,
        # `memorybank status`) use the default ipc endpoints in the private runtime folder.
        local = discovery.default_endpoints(self.db_path) if self.curve is not None else None
        pull = sockets.daemon_pull(
            ctx, self.endpoints.data, self.curve, local.data if local else None
        )
        router = sockets.daemon_router(
            ctx, self.endpoints.control, self.curve, local.control if local else None
        )
        found_at = local or self.endpoints
        # Now that the sockets are bound, tell local publishers where they are.
        self._lock.update_info(
            {
                "pid": os.getpid(),
                "started": started,
                "data_endpoint": found_at.data,
                "control_endpoint": found_at.control,
                "network_endpoint": self.endpoints.data if local else None,
                "version": __version__,
            }
        )
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        old_handlers = {
            sig: signal.signal(sig, self._on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(router, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        reading = True
        writer.adopt_spools(force=True)
        log.info(
            "serving %s on %s (control %s), pid %d",
            self.db_path,
            self.endpoints.data,
            self.endpoints.control,
            os.getpid(),
        )
        try:
            while not self._stop_requested:
                timeout_ms = int(writer.seconds_to_next_tick() * 1000) + 1
                ready = dict(poller.poll(timeout_ms))
                if wake_r.fileno() in ready:
                    _drain_wakeups(wake_r)
                if pull in ready:
                    self._receive(pull, writer)
                if router in ready:
                    self._answer_control(router, writer)
                writer.tick()
                writer.adopt_spools()
                # Backpressure: while the store cannot keep up (or is full), leave records
                # in ZeroMQ's queues and the publishers' buffers rather than in our memory.
                if writer.accepting != reading:
                    reading = writer.accepting
                    poller.modify(pull, zmq.POLLIN if reading else 0)
            self._drain(pull, writer)
            writer.tick(force=True)
            figures = writer.figures()
            log.info(
                "stopped: received %d records, committed %d, rejected %d, duplicates %d",
                figures["received_records"],
                figures["committed_records"],
                figures["rejected_records"],
                figures["duplicate_records"],
            )
            return 0
        finally:
            writer.close()
            pull.close(0)
            router.close(0)
            if authenticator is not None:
                authenticator.stop()
            ctx.term()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    # -- the loop's steps -------------------------------------------------------------
    def _receive(self, pull: zmq.Socket, writer: Writer) -> None:
        for _ in range(RECV_BURST):
            if not writer.accepting:
                return
            try:
                raw = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            writer.accept_raw(raw)
            if writer.due():
                writer.tick()

    def _drain(self, pull: zmq.Socket, writer: Writer) -> None:
        """Take what is already queued to us before exiting (bounded in time)."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            try:
                raw = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                if not pull.poll(20):
                    return
                continue
            writer.accept_raw(raw)
            if writer.due():
                writer.tick()

    def _answer_control(self, router: zmq.Socket, writer: Writer) -> None:
        while True:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            identity, payload = frames

            def reply(body: dict, identity=identity) -> None:
                router.send_multipart([identity, msgpack.packb(body)])

            try:
                request = msgpack.unpackb(payload, raw=False)
                if not isinstance(request, dict):
                    raise ValueError("request is not a map")
                writer.handle_request(request, reply)
            except Exception as exc:  # a bad request never stops the daemon
                log.warning("bad control request: %s", exc)
                reply({"ok": False, "error": str(exc)})


def _drain_wakeups(sock: socket.socket) -> None:
    try:
        while sock.recv(512):
            pass
    except BlockingIOError:
        pass
