"""The daemon: the only process that writes a database.

Its loop reads like its description: poll, receive, decode and validate, batch, commit,
answer whoever waits for a commit (SQLite's COMMIT runs on the store's thread meanwhile:
the loop answers once it returned). Signals only set flags (through a wake-up socket the
poller watches); the loop acts on them. On SIGTERM or SIGINT it stops receiving, commits
everything it received, and exits 0.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import ipaddress
import logging
import os
import re
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zmq
from zmq.utils import z85

from . import __version__, alerts, discovery, ports, sockets, wire
from .bindings import Bindings
from .sdnotify import Notifier
from .spool_auth import LOCAL, SpoolAuth
from .store import open_store
from .store.base import Store
from .wire import Message
from .writer import Writer, WriterSettings
from .writer.schedule import MaintenanceSchedule

log = logging.getLogger(__name__)

# How many messages one pass of the loop takes off the socket before it looks at the clock.
RECV_BURST = 256
# How long a stopping daemon keeps draining messages already queued to it.
DRAIN_SECONDS = 5.0
# How often systemd's STATUS line is refreshed.
STATUS_SECONDS = 5.0
# How late the alerts' tick may run (waiting for the batch in flight to return) before it
# waits for that batch's COMMIT instead.
ALERT_TICK_PATIENCE = 0.4
# The cyclic garbage collector's first threshold while serving: container allocations
# (net) between young collections. A batch's decoded rows (a few per record) live until
# its COMMIT and are freed by reference counting; at Python's default 700 every row was
# traversed by every generation, 9% of the daemon's CPU on PostgreSQL (docs/benchmark.md).
GC_YOUNG_THRESHOLD = 50_000
# Settings a reload (SIGHUP) cannot change: they need a restart.
RESTART_ONLY = (
    "db_path",
    "endpoint",
    "curve_secret_key_file",
    "curve_authorized_keys_dir",
    "synchronous",
    "metrics_listen",
    "max_wal_bytes",
)


@dataclass
class DaemonSettings:
    db_path: Path | str  # a SQLite file, or a postgresql:// URL
    endpoint: str | None = None  # data endpoint; the control endpoint sits beside it
    batch_rows: int = 2000
    batch_seconds: float = 0.05
    synchronous: str = "FULL"
    max_db_bytes: int | None = None  # the store refuses to grow past this (then waits)
    max_wal_bytes: int = 64 << 20  # SQLite: the WAL is truncated once past this
    limits: wire.Limits = wire.DEFAULT_LIMITS
    curve_secret_key_file: str | None = None  # the daemon's CURVE certificate (secret)
    curve_authorized_keys_dir: str | None = None  # publishers' public certificates
    retention_schedule: str = "0 3 * * *"
    vacuum_schedule: str = "after-retention"
    retention_days: dict | None = None  # per table; None: the Writer's defaults
    chunk_rows: int = 5000
    log_level: str = "INFO"
    alerts: alerts.AlertsConfig = alerts.AlertsConfig()  # [[alerts]] rules, [sinks.NAME]
    metrics_listen: str | None = None  # HOST:PORT of the Prometheus endpoint

    @classmethod
    def from_config(cls, cfg) -> DaemonSettings:
        return cls(
            db_path=cfg.db if discovery.is_url(cfg.db) else Path(cfg.db),
            endpoint=cfg.endpoint,
            batch_rows=cfg.batch_rows,
            batch_seconds=cfg.batch_seconds,
            synchronous=cfg.synchronous,
            max_db_bytes=cfg.max_db_bytes,
            max_wal_bytes=cfg.max_wal_bytes,
            limits=wire.Limits(
                max_text_chars=cfg.max_text_chars, max_future_seconds=cfg.max_future_seconds
            ),
            curve_secret_key_file=cfg.curve_secret_key_file,
            curve_authorized_keys_dir=cfg.curve_authorized_keys_dir,
            retention_schedule=cfg.retention_schedule,
            vacuum_schedule=cfg.vacuum_schedule,
            retention_days=cfg.table_retention_days(),
            chunk_rows=cfg.chunk_rows,
            log_level=cfg.log_level,
            alerts=alerts.parse(cfg.alerts, cfg.sinks),
            metrics_listen=cfg.metrics_listen,
        )

    def writer_settings(self) -> WriterSettings:
        """What of these settings the Writer takes (at start and on a reload)."""
        return WriterSettings(
            batch_rows=self.batch_rows,
            batch_seconds=self.batch_seconds,
            limits=self.limits,
            retention_days=self.retention_days,
            chunk_rows=self.chunk_rows,
            max_db_bytes=self.max_db_bytes,
        )


class SecurityError(ValueError):
    """An endpoint that would let anyone on the network write, without CURVE."""


# What binding TCP without CURVE means, said wherever it is refused or warned about.
LOCAL_ALTERNATIVE = (
    "ipc:// endpoints (the default) let the group of their folder decide who may write; "
    "CURVE keys (curve_secret_key_file, curve_authorized_keys_dir: memorybank keygen) let "
    "the daemon decide"
)


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
    """Runs the writer for one database until SIGTERM/SIGINT; SIGHUP reloads settings.

    It is its writer's host (``WriterHost``): after each commit it sends the batch's
    events and anomalies to `view --follow`, and it adds its own figures to the writer's.
    """

    def __init__(self, settings: DaemonSettings, reload=None):
        self.settings = settings
        self._reload_settings = reload  # () -> DaemonSettings, raising on a bad file
        # The store's location (path or URL) and the local path its lock, endpoints file
        # and publisher spools hang from (the same for SQLite).
        self.location = settings.db_path
        self.key = discovery.location_key(settings.db_path, settings.endpoint)
        self.name = discovery.display_name(self.location)
        if settings.endpoint:
            self.endpoints = discovery.Endpoints(
                settings.endpoint, sockets.control_endpoint_for(settings.endpoint)
            )
        else:
            self.endpoints = discovery.default_endpoints(self.key)
        self._stop_requested = False
        self._reload_requested = False
        self._lock = discovery.WriterLock(
            self.key, self.name, database_file=not discovery.is_url(self.location)
        )
        self.curve = _load_curve(settings)
        if self.curve is None and not _is_loopback_endpoint(self.endpoints.data):
            raise SecurityError(
                f"refusing to bind {self.endpoints.data} without CURVE keys: anyone who can "
                f"reach it could write (and tcp://127.0.0.1 lets every user of this host "
                f"write). {LOCAL_ALTERNATIVE}"
            )
        self.notifier = Notifier()

    # -- signals: flags only ----------------------------------------------------------
    def _on_stop_signal(self, signum, _frame) -> None:
        self._stop_requested = True

    def _on_reload_signal(self, _signum, _frame) -> None:
        self._reload_requested = True

    @contextlib.contextmanager
    def _signal_flags(self) -> Iterator[socket.socket]:
        """SIGTERM and SIGINT ask to stop, SIGHUP to reload: the handlers set flags, and
        each signal writes a byte to the socket yielded, so that whatever waits (the wait
        for the store, the loop's poller) wakes and looks at them."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        old_handlers = {
            sig: signal.signal(sig, self._on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        old_handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_reload_signal)
        try:
            yield wake_r
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def run(self) -> int:
        """Serve until stopped; returns the exit status. Raises DaemonLockedError at once when
        another writer owns the database."""
        started = time.time()
        self._lock.acquire({"pid": os.getpid(), "started": started, "starting": True})
        try:
            return self._serve(started)
        finally:
            self._lock.release()
            self.notifier.close()

    # -- start-up -----------------------------------------------------------------------
    def _open_store(self, wake: socket.socket) -> Store | None:
        """Open the store; a PostgreSQL server that is not up yet is waited for (backing
        off to 10 s), since publishers keep their records meanwhile. None when asked to
        stop while waiting (a reload asked meanwhile is applied once serving)."""
        options: dict[str, object] = {"max_db_bytes": self.settings.max_db_bytes}
        if discovery.is_url(self.location):
            # Its rows in the shared counters: this host and endpoint, stable over restarts.
            options["writer"] = f"{socket.gethostname()}/{self.key.name}"
        else:
            options["synchronous"] = self.settings.synchronous
            options["max_wal_bytes"] = self.settings.max_wal_bytes
        delay = 1.0
        while True:
            try:
                return open_store(self.location, **options)
            except ConnectionError as exc:
                if self._stop_requested:
                    return None
                log.error("cannot reach %s: %s; retrying in %gs", self.name, exc, delay)
                # systemd would kill a start-up longer than TimeoutStartSec: ask for more.
                self.notifier.notify(
                    f"STATUS=waiting for {self.name}: {exc}",
                    f"EXTEND_TIMEOUT_USEC={int((delay + 10) * 1_000_000)}",
                )
                # `memorybank status` reads this while nothing is bound yet.
                self._lock.update_info(
                    {"pid": os.getpid(), "starting": True, "store_error": str(exc)}
                )
                if not _wait_for_signal(wake, delay, lambda: self._stop_requested):
                    return None
                delay = min(delay * 2, 10.0)

    def _open_writer(self, store: Store) -> Writer:
        spool_auth = None
        if self.curve is not None:
            spool_auth = SpoolAuth(
                z85.decode(self.curve["secret_key"].encode()), self._authorized_keys_dir
            )
        return Writer(
            store,
            self.settings.writer_settings(),
            spool_key=self.key,
            spool_auth=spool_auth,
            host=self,
            wake=functools.partial(os.eventfd_write, self._committed_fd, 1),
        )

    def _addresses(self) -> dict[str, str]:
        """Every endpoint this daemon binds, by role (checked free before binding any).
        With CURVE on the network endpoint, local processes (publishers on this host,
        `memorybank status`) use the default ipc endpoints in the private runtime folder,
        and the tail is bound there only."""
        addresses = {"data": self.endpoints.data, "control": self.endpoints.control}
        if self.curve is not None:
            local = discovery.default_endpoints(self.key)
            addresses.update({"local data": local.data, "local control": local.control})
        addresses["tail"] = sockets.tail_endpoint_for(
            addresses.get("local data", addresses["data"])
        )
        return addresses

    def _bind(self, ctx: zmq.Context) -> tuple[zmq.Socket, zmq.Socket]:
        try:
            return self._bind_sockets(ctx)
        except zmq.ZMQError as exc:  # taken between the check and the bind
            if exc.errno != errno.EADDRINUSE:
                raise
            ports.check_free(self._addresses())
            raise ports.EndpointInUse(f"cannot bind: {exc}") from None

    def _bind_sockets(self, ctx: zmq.Context) -> tuple[zmq.Socket, zmq.Socket]:
        at = self._addresses()
        local = "local data" in at
        bind = self.bindings.bind
        pull = sockets.daemon_pull(ctx, at["data"], self.curve, at.get("local data"), bind)
        router = sockets.daemon_router(
            ctx, at["control"], self.curve, at.get("local control"), bind
        )
        router.bind(self._inproc_control)  # the scheduler's jobs come in here
        self.tail_endpoint = at["tail"]
        self.tail = sockets.daemon_tail(ctx, self.tail_endpoint, bind)
        self._info = {
            "pid": os.getpid(),
            "started": time.time(),
            "data_endpoint": at["local data" if local else "data"],
            "control_endpoint": at["local control" if local else "control"],
            "network_endpoint": at["data"] if local else None,
            "tail_endpoint": self.tail_endpoint,
            "version": __version__,
        }
        self._lock.update_info(self._info)
        return pull, router

    @property
    def _authorized_keys_dir(self) -> str:
        """The publishers' public keys, under CURVE (``_load_curve`` requires them)."""
        assert self.settings.curve_authorized_keys_dir is not None
        return self.settings.curve_authorized_keys_dir

    @property
    def _inproc_control(self) -> str:
        return f"inproc://memorybank-control-{id(self)}"

    def _serve(self, started: float) -> int:
        ports.check_free(self._addresses())  # all of them, before the store or any bind
        # Signals are flags from here on: a SIGHUP while the store is waited for is kept
        # for the loop, and a SIGTERM ends the wait.
        with self._signal_flags() as wake_r:
            store = self._open_store(wake_r)
            if store is None:
                log.info("stopped while waiting for %s", self.name)
                return 0
            return self._serve_store(store, wake_r)

    def _serve_store(self, store: Store, wake_r: socket.socket) -> int:
        # Alerts (memory_bank.alerts): evaluated inside each batch's transaction through
        # the store's batch_hook, driven from the loop (tick), reloaded on SIGHUP, stopped
        # before the store closes. None when no rule or sink is configured.
        self.store = store  # for alert rules given on a reload
        self.alerts = alerts.attach(store, self.settings.alerts)
        self.exporter = None
        if self.settings.metrics_listen:  # Prometheus: figures refreshed from the loop
            from .prometheus import Exporter

            self.exporter = Exporter(self.settings.metrics_listen)
        ctx = zmq.Context()
        self.handshakes = None
        if self.curve is not None:
            from .handshakes import HandshakeWatch

            self.handshakes = HandshakeWatch(ctx, self._authorized_keys_dir)
        elif not self.endpoints.data.startswith("ipc://"):
            log.warning(
                "%s has no CURVE keys: every user of this host can write to it. %s",
                self.endpoints.data,
                LOCAL_ALTERNATIVE,
            )
        self.bindings = Bindings(self._lock, lambda: self._info)
        pull, router = self._bind(ctx)
        self.followers = 0
        schedule = self.schedule = MaintenanceSchedule(ctx, self._inproc_control)
        schedule.configure(self.settings.retention_schedule, self.settings.vacuum_schedule)
        # Readable once a batch's COMMIT returned on the store's thread: the loop wakes to
        # acknowledge it.
        self._committed_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        writer = self._open_writer(store)
        _collect_less()
        try:
            writer.adopt_spools(force=True)
            writer.catch_up_maintenance(schedule)
            schedule.start()
            log.info(
                "serving %s on %s (control %s), pid %d",
                self.name,
                self.endpoints.data,
                self.endpoints.control,
                os.getpid(),
            )
            self.notifier.notify("READY=1", f"STATUS=serving {self.name}", f"MAINPID={os.getpid()}")
            self._loop(writer, pull, router, wake_r, schedule)
            self.notifier.notify("STOPPING=1", "STATUS=committing what was received")
            schedule.shutdown()
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
            if self.alerts is not None:
                self.alerts.stop()
            if self.exporter is not None:
                self.exporter.close()
            writer.close()
            os.close(self._committed_fd)
            if self.handshakes is not None:
                self.handshakes.stop()
            pull.close(0)
            router.close(0)
            self.tail.close(0)
            ctx.term()

    # -- the writer's host (WriterHost) ------------------------------------------------------
    def after_commit(self, batch: list[Message], seconds: float) -> None:
        """After a commit that took ``seconds``: the time to Prometheus' histogram (if on),
        the batch's events and anomalies to `view --follow` (if any)."""
        if self.exporter is not None:
            self.exporter.observe_commit(seconds)
        if not self.followers:
            return
        events = [row for msg in batch for row in msg.events]
        anomalies = [row for msg in batch for row in msg.anomalies]
        if events or anomalies:
            try:
                self.tail.send(wire.encode_tail(events, anomalies), zmq.NOBLOCK)
            except zmq.Again:
                pass  # followers too slow: they miss lines, the database has them

    def figures(self) -> dict:
        """The daemon's own figures, which ``Writer.figures`` adds to its own."""
        return {
            "data_endpoint": self.endpoints.data,
            "control_endpoint": self.endpoints.control,
            "endpoint_problem": self.bindings.problem,
            "endpoint_repairs": self.bindings.repairs,
            **(self.handshakes.figures() if self.handshakes else {}),
            "next_maintenance": self.schedule.next_runs(),
            "version": __version__,
            **({"alerts": self.alerts.figures()} if self.alerts else {}),
        }

    # -- the loop -----------------------------------------------------------------------
    def _loop(self, writer: Writer, pull, router, wake_r, schedule) -> None:
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(router, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        poller.register(self.tail, zmq.POLLIN)
        poller.register(self._committed_fd, zmq.POLLIN)
        handshakes = self.handshakes
        monitors = [handshakes.watch(sock) for sock in (pull, router)] if handshakes else []
        for monitor in monitors:
            poller.register(monitor, zmq.POLLIN)
        reading = True
        next_status = next_watchdog = time.monotonic()
        watchdog = self.notifier.watchdog_interval
        while not self._stop_requested:
            sleep = writer.seconds_to_next_tick()
            if watchdog is not None:
                sleep = min(sleep, max(0.0, next_watchdog - time.monotonic()))
            ready = dict(poller.poll(int(sleep * 1000) + 1))
            if wake_r.fileno() in ready:
                _drain_wakeups(wake_r)
            if self._committed_fd in ready:
                sockets.clear_wakeup(self._committed_fd)  # (writer.tick below finishes the batch)
            if self._reload_requested:
                self._reload_requested = False
                self._reload(writer, schedule)
            if pull in ready:
                self._receive(pull, writer)
            if router in ready:
                self._answer_control(router, writer)
            if self.tail in ready:
                self._count_followers()
            for monitor in monitors:
                if monitor in ready and handshakes is not None:
                    handshakes.read(monitor)
            self.bindings.check()
            if self.alerts is not None and writer.store_error is None:
                self._tick_alerts(writer)
            writer.tick()
            if self.exporter is not None:
                self.exporter.refresh(writer.figures)
            writer.maintenance_step()
            writer.adopt_spools()
            # Backpressure: while the store cannot keep up (or is full), leave records
            # in ZeroMQ's queues and the publishers' buffers rather than in our memory.
            if writer.accepting != reading:
                reading = writer.accepting
                poller.modify(pull, zmq.POLLIN if reading else 0)
            now = time.monotonic()
            if watchdog is not None and now >= next_watchdog:
                self.notifier.notify("WATCHDOG=1")
                next_watchdog = now + watchdog
            if self.notifier.enabled and now >= next_status:
                self.notifier.notify("STATUS=" + _status_line(writer, self.bindings.problem))
                next_status = now + STATUS_SECONDS

    def _count_followers(self) -> None:
        while True:
            try:
                event = self.tail.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                self.followers += 1
            elif event[:1] == b"\x00":
                self.followers = max(0, self.followers - 1)

    def _reload(self, writer: Writer, schedule: MaintenanceSchedule) -> None:
        """SIGHUP: apply a new configuration, or keep the running one if it is invalid."""
        if self._reload_settings is None:
            log.warning("SIGHUP: no configuration to reload")
            return
        self.notifier.notify("RELOADING=1")
        try:
            new = self._reload_settings()
            schedule.configure(new.retention_schedule, new.vacuum_schedule)
        except Exception as exc:  # a bad file never stops the daemon
            log.error("reload refused, keeping the running configuration: %s", exc)
            self.notifier.notify("READY=1")
            return
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(self.settings, key):
                log.warning("reload: %s changed; it takes effect at the next restart", key)
                setattr(new, key, getattr(self.settings, key))
        self.settings = new
        writer.configure(new.writer_settings())  # (which also settles the batch committing)
        try:
            if self.alerts is not None:
                self.alerts.reload(new.alerts)
            else:
                self.alerts = alerts.attach(self.store, new.alerts)
        except alerts.RuleError as exc:  # rules on a store that cannot run them
            log.error("reload: alerts not started: %s", exc)
        logging.getLogger().setLevel(new.log_level)
        log.info(
            "configuration reloaded: retention %s, vacuum %s, keep %s",
            new.retention_schedule,
            new.vacuum_schedule,
            writer.maintenance.retention_days,
        )
        self.notifier.notify("READY=1")

    def _tick_alerts(self, writer) -> None:
        """The alerts' tick (time's notifications, the sinks' outcomes, the streams'
        positions) writes on the store's connection, so after the batch in flight: when
        its COMMIT has returned (settling it costs no wait then; this runs before
        ``writer.tick`` hands the next batch to the committer thread) or none is in
        flight. Only a tick late by ALERT_TICK_PATIENCE waits for a COMMIT still running.
        Settling at every pass of the loop made the writer wait for each COMMIT as soon
        as it had handed it over, whenever alerts were configured."""
        alerts = self.alerts
        if not alerts.tick_due():
            return
        if writer.commit_running() and not alerts.tick_due(late=ALERT_TICK_PATIENCE):
            return
        writer.settle()
        alerts.tick()

    def _receive(self, pull: zmq.Socket, writer: Writer) -> None:
        for _ in range(RECV_BURST):
            if not writer.accepting:
                return
            try:
                raw = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            writer.accept_raw(raw)
            _commit_when_due(pull, writer)

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
            _commit_when_due(pull, writer)

    def _answer_control(self, router: zmq.Socket, writer: Writer) -> None:
        while True:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            identity, payload = frames[0].bytes, frames[1]

            def reply(body: dict, identity=identity) -> None:
                router.send_multipart([identity, msgpack.packb(body)])

            try:
                request = msgpack.unpackb(payload.bytes, raw=False)
                if not isinstance(request, dict):
                    raise ValueError("request is not a map")
                writer.handle_request(request, reply, _peer(payload))
            except Exception as exc:  # a bad request never stops the daemon
                log.warning("bad control request: %s", exc)
                reply(wire.unreadable_reply(str(exc)))


def _peer(frame: zmq.Frame) -> str:
    """Who sent a control request: the CURVE public key ZAP authenticated (the User-Id the
    authenticator gives it, pyzmq's ``curve_user_id``: the key in z85), or LOCAL for the
    private ipc socket and inproc, which carry no User-Id (no ZAP on the NULL mechanism)."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return LOCAL


def _status_line(writer: Writer, unreachable: str | None) -> str:
    received, committed = writer.rates()
    line = f"{received:.0f} rec/s in, {committed:.0f} rec/s committed, queue {writer.pending_rows}"
    if writer.maintenance_running:
        line += f", running {writer.maintenance_running}"
    if writer.store_error:
        line += f", STORE ERROR: {writer.store_error}"
    if unreachable:
        line += f", UNREACHABLE: {unreachable}"
    return line


def _wait_for_signal(wake: socket.socket, seconds: float, stop: Callable[[], bool]) -> bool:
    """Wait ``seconds`` unless ``stop()`` turns true (a signal wakes ``wake``); returns
    False when it did."""
    deadline = time.monotonic() + seconds
    while not stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        select.select([wake], [], [], left)
        _drain_wakeups(wake)
    return False


def _commit_when_due(pull: zmq.Socket, writer: Writer) -> None:
    """Commit a due batch, unless more records already wait and the batch may take them
    (Writer.may_grow): a backlog goes in fewer, larger batches."""
    if writer.due() and not (int(pull.get(zmq.EVENTS)) & zmq.POLLIN and writer.may_grow()):
        writer.tick()  # (int(): pyzmq types get() as int | bytes)
    elif writer.commit_returned():
        writer.settle()  # acknowledge it now, not after the burst


def _collect_less() -> None:
    """Set the start-up's objects aside from the cyclic collector (``gc.freeze``: the
    modules, the store, the sockets are never garbage) and collect young objects only every
    GC_YOUNG_THRESHOLD allocations, so most of a batch's rows are freed before any
    collection sees them."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _drain_wakeups(sock: socket.socket) -> None:
    try:
        while sock.recv(512):
            pass
    except BlockingIOError:
        pass
