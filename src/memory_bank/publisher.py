"""The write half that CSMS, charge point and charger code import: fire-and-forget, never blocks.

A call builds its row, takes an id from the publisher's leased id block, appends the row to
an in-memory queue and returns (microseconds). A sender thread does everything else:

- packs queued rows into numbered messages of many rows;
- keeps each message until the daemon acknowledges its commit: in memory up to
  ``memory_bytes``, then in a disk spool up to ``spool_bytes``; past both, ``overflow``
  says whether the newest rows or the oldest messages go, and every dropped record is
  counted and logged once per interval;
- sends them (PUSH), asks for acknowledgements (DEALER), and replays from the first
  unacknowledged message when the daemon asks for it, restarts, or stops answering.

A publisher that exits normally waits (bounded) for its last acknowledgement; what is
still unacknowledged then is left in its spool, which the daemon applies when it can.
Imports nothing heavy: standard library, pyzmq, msgpack, and this package's wire module.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import signal
import threading
import time
import weakref
from collections import deque
from pathlib import Path

import msgpack
import zmq

from . import discovery, sockets, spool, wire

log = logging.getLogger(__name__)

_EVENTS, _ANOMALIES, _METRICS, _OPERATIONS, _MARKER = 0, 1, 2, 3, 4
OVERFLOW_POLICIES = ("drop_newest", "drop_oldest")
# How long an acknowledgement request may go unanswered before it is sent again.
ACK_TIMEOUT = 2.0
# How long the daemon may answer without acknowledging anything new before a replay.
STALL_SECONDS = 5.0
# While it keeps not acknowledging, the replays that follow are summed up this often.
STALL_SUMMARY_SECONDS = 60.0
# While records flow, the sender gathers them this long between messages: fewer wake-ups
# and GIL handoffs for the caller, larger messages for the daemon.
LINGER = 0.001
# Largest packed message; rows beyond it go into the next message. One record alone may
# take up to the daemon's limit (sockets.DAEMON_MAXMSGSIZE); a larger one is refused.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Why a record was dropped (Publisher.dropped_by_reason); each reason is logged at most
# once per DROP_LOG_SECONDS.
DROP_REASONS = {
    "overflow": "memory and spool full, or the spool cannot be written",
    "unencodable": "msgpack cannot pack the record",
    "oversized": "the record packs to more than the daemon's message limit "
    f"({sockets.DAEMON_MAXMSGSIZE // 2**20} MiB)",
    "unspooled": "not confirmed at close and the spool could not take it",
}
DROP_LOG_SECONDS = 10.0
# After a spool write fails (disk full...), the spool counts as full for this long.
SPOOL_RETRY_SECONDS = 1.0
# "memory": messages go to the spool only when memory is full (fast; a killed process loses
# what memory held). "disk": every message is written to the spool before it is sent, and
# fsync'd in groups every DISK_SYNC_SECONDS (Vector's disk buffers): a SIGKILLed process
# loses only what it had not yet packed, a power loss at most the last few milliseconds.
DURABILITY_MODES = ("memory", "disk")
DISK_SYNC_SECONDS = 0.005


# allow_nan=False: NaN and infinities are not JSON (jq, browsers and PostgreSQL's jsonb
# refuse the tokens Python would write), so a record holding one is refused at the call.
_STRICT = json.JSONEncoder(allow_nan=False)
_LENIENT = json.JSONEncoder(default=str, allow_nan=False)
_CANONICAL = json.JSONEncoder(default=str, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _json(value) -> str | None:
    """JSON-encode a data/metadata argument on the caller's side (the seed stores JSON text).

    A pre-built encoder with no ``default`` takes the C encoder's fast path (what
    ``json.dumps(value)`` uses); only a value JSON cannot encode (a datetime, a set...) pays
    for the lenient one. A value that cannot be stored is refused here, with the reason.
    """
    if value is None:
        return None
    try:
        try:
            text = _STRICT.encode(value)
        except TypeError:
            text = _LENIENT.encode(value)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        raise ValueError(
            "NaN and infinities cannot be stored in data, metadata or pattern_data: they are "
            "not JSON (use None for a missing value)"
        ) from None
    if "\\ud" in text:  # an escaped surrogate: fine in pairs (emoji), refused alone
        _check_text(json.loads(text), "JSON")
    return text


def _sendable(*texts) -> None:
    """Refuse at the call a text field the sender could not encode (a lone surrogate, a
    value msgpack cannot pack): one such record must never cost the records around it."""
    try:
        for text in texts:
            if not (text is None or text.isascii()):
                break
        else:
            return  # the common case: ASCII text
    except AttributeError:
        pass
    for text in texts:
        _check_text(text, "text")


def _check_text(value, what: str) -> None:
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what} {value[max(exc.start - 20, 0) : exc.end + 20]!r} holds a lone "
                f"surrogate at position {exc.start} and cannot be stored as UTF-8 (decode "
                "bytes with errors='replace', not 'surrogateescape')"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, what)
            _check_text(item, what)
    elif isinstance(value, list):
        for item in value:
            _check_text(item, what)
    elif value is not None and what == "text":
        try:
            msgpack.packb(value)
        except Exception as exc:  # msgpack raises several unrelated types
            raise TypeError(f"{value!r} cannot be sent: {exc}") from None


def _time(timestamp) -> float:
    return time.time() if timestamp is None else float(timestamp)


def _session(session_id) -> str:
    text = str(session_id)
    _sendable(text)
    return text


class _Marker:
    """Queued by flush(): set once everything queued before it is acknowledged."""

    __slots__ = ("event", "seq")

    def __init__(self):
        self.event = threading.Event()
        self.seq = -1  # set by the sender when it reaches the marker


class _Stall:
    """A spell of replies that acknowledge nothing new, for its log lines."""

    __slots__ = ("since", "resends", "resends_logged", "logged_at")

    def __init__(self, since: float, now: float):
        self.since = since  # the last acknowledgement before it
        self.resends = self.resends_logged = 0
        self.logged_at = now


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

    def _sockets(self) -> tuple[zmq.Socket, zmq.Socket]:
        if self._push is None:
            self._push = sockets.publisher_push(self.ctx, self.data_endpoint, self.curve)
        if self._dealer is None:
            self._dealer = sockets.control_dealer(self.ctx, self.control_endpoint, self.curve)
            self._monitor = self._dealer.get_monitor_socket(sockets.HANDSHAKE_EVENTS)
        return self._push, self._dealer

    def likely_cause(self) -> str:
        """Why the daemon may not answer, when its CURVE handshakes said (else "")."""
        if self._monitor is None:
            return ""
        failures, _ = sockets.handshake_failures(self._monitor, server=False)
        return f" ({failures[-1][1]})" if failures else ""

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
            pass  # the request is retried after ACK_TIMEOUT

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
        from .control import ControlClient, DaemonUnavailable

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


_live_publishers: weakref.WeakSet = weakref.WeakSet()


class Publisher:
    """Sends records to the writer of one database. Thread-safe; one per process is enough.

    ``Publisher(db_path)`` finds the daemon of that database by itself;
    ``Publisher(endpoint="tcp://host:port")`` talks to a named daemon (which then leases the
    id block, so that daemon must answer once at construction).
    """

    def __init__(
        self,
        db_path: str | os.PathLike | None = None,
        *,
        endpoint: str | None = None,
        transport=None,
        curve: dict | None = None,
        max_queue: int = 1_000_000,
        batch_records: int = 512,
        close_timeout: float = 5.0,
        memory_bytes: int = 64 * 1024 * 1024,
        spool_dir: str | os.PathLike | None = None,
        spool_bytes: int = 1024 * 1024 * 1024,
        overflow: str = "drop_newest",
        spool_mode: int = spool.DIR_MODE,
        durability: str = "memory",
        handle_sigterm: bool = True,
    ):
        if db_path is None and endpoint is None and transport is None:
            raise ValueError("Publisher needs a database path or an endpoint")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, not {overflow!r}")
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {DURABILITY_MODES}, not {durability!r}")
        # A PostgreSQL URL has no local file to lease ids from: its daemon leases them
        # from the database (unique across every daemon of it).
        self._ids_from_daemon = db_path is None or discovery.is_url(db_path)
        self.db_path = discovery.location_key(db_path, endpoint) if db_path is not None else None
        self.max_queue = max_queue
        self.batch_records = batch_records
        self.close_timeout = close_timeout
        self.memory_bytes = memory_bytes
        self.spool_bytes = spool_bytes
        self.overflow = overflow
        self.spool_mode = spool_mode
        self.durability = durability
        self._curve = curve
        if transport is None:
            if endpoint is not None:
                data_ep, control_ep = endpoint, sockets.control_endpoint_for(endpoint)
            else:
                found = discovery.find_endpoints(self.db_path)
                data_ep, control_ep = found.data, found.control
            transport = ZmqTransport(data_ep, control_ep, curve)
        self._transport = transport
        self._id_lock = threading.Lock()
        # Under CURVE, what lets a daemon apply this publisher's spool: (identity, token),
        # from the lease or from the first acknowledgement exchange (spool_auth).
        self._spool_token = self._lease_block()
        self._token_instance: str | None = None  # the daemon instance that last gave one
        self.publisher_id = self._block
        if spool_dir is not None:
            self._spool_folder = os.path.join(os.fspath(spool_dir), str(self.publisher_id))
        elif self.db_path is not None:
            self._spool_folder = os.fspath(spool.spool_root(self.db_path) / str(self.publisher_id))
        else:
            self._spool_folder = None
            if durability == "disk":
                raise ValueError('durability="disk" needs a spool: give db_path or spool_dir')
        # Shared with callers.
        self._queue: deque = deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_pending = False
        self._dirty = False
        self._closed = False
        self._forked = False
        self.dropped = 0
        self.dropped_by_reason: dict[str, int] = {}  # reason (see DROP_REASONS) -> records
        self._drop_logged: dict[str, tuple[float, int]] = {}  # reason -> (when, count)
        self.sender_errors = 0
        self._sender_error_logged_at = -DROP_LOG_SECONDS
        self._refusal_logged_at = -60.0
        # The sender thread's own state.
        self._seq = 0  # last message packed
        self._base = 0  # no message at or below this will be sent again
        self._acked = 0  # daemon has committed everything up to here
        self._mem: deque = deque()  # (seq, raw, records), unacknowledged, newest part
        self._mem_bytes = 0
        self._spool: spool.Spool | None = None
        self._spool_retry_at = 0.0  # monotonic; before it, the spool counts as full
        self._spool_error: str | None = None  # the last write failure, until one succeeds
        self._written_seq = 0  # every message up to here is in the spool (or acknowledged)
        self._synced_at = 0.0
        self._spooled: deque = deque()  # (seq, records) of spooled messages, oldest first
        self._next_send = 1  # next message to hand to ZeroMQ
        self._replay_iter = None  # spool reader during a replay
        self._replay_peek = None
        self._markers: list[_Marker] = []
        self._instance: str | None = None
        self._ack_rid = 0
        self._ack_dropped = 0  # the drop count the outstanding request carries
        self._dropped_reported = 0  # the drop count the daemon has acknowledged hearing
        self._ack_sent_at: float | None = None
        self._ack_urgent = False
        self._last_progress = time.monotonic()
        self._stall: _Stall | None = None
        self._stop = False
        self._poller: zmq.Poller | None = None
        self._poller_key: tuple = ()
        self._sender = threading.Thread(
            target=self._run_sender, name=f"memorybank-publisher-{self._block}", daemon=True
        )
        self._sender.start()
        _live_publishers.add(self)
        if handle_sigterm:
            _spool_on_sigterm()

    # -- ids --------------------------------------------------------------------------
    def _lease_block(self) -> tuple[str, bytes] | None:
        """Lease the next id block; returns the spool token the daemon sent with it."""
        token = None
        if self._ids_from_daemon:
            from .control import DaemonUnavailable

            try:
                block, token = self._transport.lease_block(timeout=self.close_timeout)
            except DaemonUnavailable as exc:
                raise DaemonUnavailable(
                    f"{exc}. Ids for a PostgreSQL database or a named endpoint come from its "
                    "daemon, so one must be running: memorybank daemon --db URL [--endpoint ...]"
                ) from None
        else:
            block = discovery.lease_id_block(self.db_path)
        self._block = block
        base = block << wire.ID_BLOCK_BITS
        self._id_limit = base + (1 << wire.ID_BLOCK_BITS) - 1
        self._ids = itertools.count(base + 1)
        return token

    def _new_id(self) -> int:
        new_id = next(self._ids)
        if new_id > self._id_limit:
            with self._id_lock:
                if new_id > self._id_limit:
                    self._lease_block()
                new_id = next(self._ids)
        return new_id

    # -- the queue (caller side) ------------------------------------------------------
    def _put(self, kind: int, row: list) -> None:
        if self._closed:
            if self._forked:
                raise RuntimeError(
                    "this Publisher (or MemoryBank) was made by the parent process; "
                    "make a new one in the child after fork"
                )
            raise RuntimeError("this Publisher is closed")
        if len(self._queue) >= self.max_queue:
            if self.overflow == "drop_newest":
                self._count_drop(1)
                return
            try:
                self._queue.popleft()
                self._count_drop(1)
            except IndexError:
                pass
        self._queue.append((kind, row))
        self._dirty = True
        if not self._wake_pending:
            self._wake_pending = True
            os.eventfd_write(self._wake_fd, 1)

    def _count_drop(self, records: int, reason: str = "overflow", detail: str = "") -> None:
        """Count dropped records by reason; log each reason at most once per 10 s with the
        count since its last line (never silent)."""
        self.dropped += records
        self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + records
        now = time.monotonic()
        logged_at, logged = self._drop_logged.get(reason, (-DROP_LOG_SECONDS, 0))
        if now - logged_at < DROP_LOG_SECONDS:
            return
        total = self.dropped_by_reason[reason]
        self._drop_logged[reason] = (now, total)
        if reason == "overflow":
            log.error(
                "publisher %d: buffers full (memory %d bytes, spool %d bytes, policy %s): "
                "dropped %d record(s) since the last report, %d in all; is the daemon of %s "
                "running?",
                self.publisher_id,
                self.memory_bytes,
                self.spool_bytes,
                self.overflow,
                total - logged,
                self.dropped,
                self.db_path or "this endpoint",
            )
        else:
            log.error(
                "publisher %d: refused %d record(s) since the last report (%s: %s%s); "
                "%d dropped in all",
                self.publisher_id,
                total - logged,
                reason,
                DROP_REASONS.get(reason, reason),
                f"; last: {detail}" if detail else "",
                self.dropped,
            )

    # -- the seed's write calls -------------------------------------------------------
    def log_event(self, event_type, component, message="", data=None, *, timestamp=None) -> int:
        _sendable(event_type, component, message)
        data_json = _json(data)
        event_id = self._new_id()
        self._put(_EVENTS, [event_id, _time(timestamp), event_type, component, message, data_json])
        return event_id

    def record_anomaly(
        self,
        anomaly_type,
        severity,
        description="",
        pattern_data=None,
        current_value=None,
        expected_value=None,
        *,
        timestamp=None,
    ) -> int:
        _sendable(anomaly_type, severity, description)
        pattern_json = _json(pattern_data)
        anomaly_id = self._new_id()
        self._put(
            _ANOMALIES,
            [
                anomaly_id,
                _time(timestamp),
                anomaly_type,
                severity,
                description,
                pattern_json,
                None if current_value is None else float(current_value),
                None if expected_value is None else float(expected_value),
            ],
        )
        return anomaly_id

    def record_metric(self, metric_name, metric_value, unit=None, metadata=None, *, timestamp=None):
        _sendable(metric_name, unit)
        metadata_json = _json(metadata)
        metric_id = self._new_id()
        self._put(
            _METRICS,
            [metric_id, _time(timestamp), metric_name, float(metric_value), unit, metadata_json],
        )
        return metric_id

    def start_session(self, session_id, *, timestamp=None) -> int:
        """Returns the id of the session's row (unless the session was already started:
        that row keeps the id its first start returned)."""
        row_id = self._new_id()
        self._put(
            _OPERATIONS, [wire.OP_SESSION_START, _time(timestamp), _session(session_id), row_id]
        )
        return row_id

    def increment_session_anomaly_count(self, session_id, *, timestamp=None) -> None:
        self._put(
            _OPERATIONS,
            [wire.OP_SESSION_ANOMALY, _time(timestamp), _session(session_id), self._new_id()],
        )

    def end_session(
        self,
        session_id,
        total_energy=None,
        avg_current=None,
        max_current=None,
        min_current=None,
        *,
        timestamp=None,
    ) -> None:
        stats = [
            None if v is None else float(v)
            for v in (total_energy, avg_current, max_current, min_current)
        ]
        self._put(
            _OPERATIONS,
            [wire.OP_SESSION_END, _time(timestamp), _session(session_id), *stats, self._new_id()],
        )

    def record_pattern(self, pattern_type, pattern_data, confidence=1.0, *, timestamp=None) -> None:
        _sendable(pattern_type)
        pattern_json = _json(pattern_data)
        key = _CANONICAL.encode(pattern_data)
        self._put(
            _OPERATIONS,
            [
                wire.OP_PATTERN,
                _time(timestamp),
                pattern_type,
                pattern_json or "null",  # as the seed: json.dumps(None) included
                key,
                float(confidence),
            ],
        )

    # -- delivery (caller side) -------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far is committed; False if not within ``timeout``.

        Free when nothing was written since the last successful flush.
        """
        if not self._dirty:
            return True
        if not self._sender.is_alive():
            return False
        timeout = self.close_timeout if timeout is None else timeout
        self._dirty = False
        marker = _Marker()
        self._queue.append((_MARKER, marker))
        os.eventfd_write(self._wake_fd, 1)
        if not marker.event.wait(timeout):
            self._dirty = True
            return False
        return True

    # -- the sender thread ------------------------------------------------------------
    def _run_sender(self) -> None:
        """While records flow, cycle every LINGER seconds (callers then make no system
        call to wake it); when a cycle finds nothing, re-arm the wake-up and sleep.

        The thread never dies of what it handles: a record that cannot be packed is refused
        alone (``_store_message``), and any other error in a cycle is counted
        (``sender_errors``), logged, and the next cycle goes on after a pause."""
        wake_fd = self._wake_fd
        while True:
            try:
                packed = self._pack()
                if self.durability == "disk":
                    self._write_ahead()  # what a failed write left behind
                    if self._spool is not None and self._spool.unsynced:
                        self._sync_spool()
                self._send()
                self._handle_replies()
                self._ask_for_ack()
                if self._stop:
                    return
                if packed:
                    timeout = LINGER
                else:
                    self._wake_pending = False  # the next call wakes us...
                    if self._queue:  # ...unless one came in just now
                        continue
                    timeout = self._poll_timeout()
                poller = self._poller_for(self._transport.poll_items(self._has_unsent()))
                ready = dict(poller.poll(None if timeout is None else int(timeout * 1000) + 1))
                if wake_fd in ready:
                    try:
                        os.eventfd_read(wake_fd)
                    except BlockingIOError:
                        pass
            except Exception:
                self._sender_failed()
                if self._stop:
                    return

    def _sender_failed(self) -> None:
        """An unexpected error in a sender cycle: counted, logged with its traceback (at
        most once per DROP_LOG_SECONDS), then a pause so a lasting fault cannot spin."""
        self.sender_errors += 1
        now = time.monotonic()
        if now - self._sender_error_logged_at >= DROP_LOG_SECONDS:
            self._sender_error_logged_at = now
            log.exception(
                "publisher %d: error in the sender thread (%d so far); it goes on",
                self.publisher_id,
                self.sender_errors,
            )
        time.sleep(0.05)

    def _poller_for(self, items: list) -> zmq.Poller:
        """The sender's poller, rebuilt only when the sockets or the events it waits for
        change (building one each cycle cost the caller GIL time)."""
        key = tuple((id(sock), flags) for sock, flags in items)
        if key != self._poller_key:
            self._poller = zmq.Poller()
            for sock, flags in items:
                self._poller.register(sock, flags)
            self._poller.register(self._wake_fd, zmq.POLLIN)
            self._poller_key = key
        return self._poller

    def _poll_timeout(self) -> float | None:
        if self.durability == "disk" and self._spool is not None and self._spool.unsynced:
            return DISK_SYNC_SECONDS
        if self._acked >= self._seq and not self._queue and self.dropped == self._dropped_reported:
            return None  # idle: sleep until a call or a reply wakes us
        return 0.05 if self._has_unsent() else 0.25

    def _has_unsent(self) -> bool:
        return self._next_send <= self._seq

    def _pack(self) -> bool:
        """Turn queued rows into numbered messages held until acknowledged; True if any."""
        queue = self._queue
        packed = False
        while queue:
            if self._full() and self.overflow == "drop_newest":
                return packed  # rows wait in the queue; past max_queue the newest drop
            rows: list[list] = [[], [], [], []]
            count = 0
            markers = []
            while count < self.batch_records:
                try:
                    kind, row = queue.popleft()
                except IndexError:
                    break
                if kind == _MARKER:
                    markers.append(row)
                    break
                rows[kind].append(row)
                count += 1
            if count:
                self._store_message(rows, count)
                packed = True
            for marker in markers:
                marker.seq = self._seq
                self._markers.append(marker)
        self._release_markers()
        return packed

    def _store_message(self, rows: list[list], count: int) -> None:
        try:
            raw = wire.encode(self.publisher_id, self._seq + 1, self._base, *rows)
        except Exception:  # msgpack raises several unrelated types
            count = self._refuse_unencodable(rows)
            if not count:
                return
            raw = wire.encode(self.publisher_id, self._seq + 1, self._base, *rows)
        if count == 1 and len(raw) > sockets.DAEMON_MAXMSGSIZE:
            # ZeroMQ on the daemon's side would drop it without a trace, and this
            # publisher would resend it forever: refuse it alone.
            self._count_drop(1, "oversized", f"{len(raw):,} bytes packed")
            return
        if len(raw) > MAX_MESSAGE_BYTES and count > 1:
            half = [[], [], [], []]
            moved = 0
            for kind in range(4):
                while rows[kind] and moved < count // 2:
                    half[kind].append(rows[kind].pop())
                    moved += 1
            self._store_message(rows, count - moved)
            self._store_message([list(reversed(r)) for r in half], moved)
            return
        self._seq += 1
        self._mem.append((self._seq, raw, count))
        self._mem_bytes += len(raw)
        if self.durability == "disk":
            self._write_ahead()
        while self._mem_bytes > self.memory_bytes and self._mem:
            if not self._spill_oldest():
                if self.overflow == "drop_newest":
                    break  # memory is full: _pack stops, and the newest rows wait or drop
                self._drop_oldest_message()

    def _refuse_unencodable(self, rows: list[list]) -> int:
        """Set aside (counted, logged) each row msgpack cannot pack, in place; the rows
        left. Only runs when a whole message failed to pack, so the call path stays free."""
        left = 0
        for kind_rows in rows:
            kept = []
            for row in kind_rows:
                try:
                    msgpack.packb(row, use_bin_type=True)
                except Exception as exc:
                    self._count_drop(1, "unencodable", f"{type(exc).__name__}: {exc}")
                else:
                    kept.append(row)
            kind_rows[:] = kept
            left += len(kept)
        return left

    def _full(self) -> bool:
        spool_full = (
            self._spool_folder is None
            or time.monotonic() < self._spool_retry_at
            or (self._spool is not None and self._spool.bytes >= self.spool_bytes)
        )
        return self._mem_bytes >= self.memory_bytes and spool_full

    def _spill_oldest(self) -> bool:
        """Move the oldest message in memory to the disk spool; False if it cannot go there
        (no spool, spool full, or a write that failed: then the spool counts as full)."""
        seq, raw, count = self._mem[0]
        if seq > self._written_seq and not self._write_to_spool(seq, raw):
            return False
        self._mem.popleft()
        self._mem_bytes -= len(raw)
        self._spooled.append((seq, count))
        return True

    def _write_ahead(self) -> None:
        """durability="disk": write every message not yet on disk to the spool, in order,
        before it is sent. One that cannot be written (spool full or failing) is sent from
        memory all the same, and written when the spool takes writes again."""
        if not self._mem or self._written_seq >= self._seq:
            return
        first = self._mem[0][0]
        for index in range(max(self._written_seq + 1 - first, 0), len(self._mem)):
            seq, raw, _ = self._mem[index]
            if not self._write_to_spool(seq, raw):
                return

    def _write_to_spool(self, seq: int, raw: bytes) -> bool:
        """Append one message to the spool (messages go there in order, each once)."""
        if not self._open_spool() or self._spool.bytes >= self.spool_bytes:
            return False
        try:
            self._spool.append(seq, raw)
        except OSError as exc:
            self._spool_failed(exc)
            return False
        self._written_seq = seq
        return True

    def _sync_spool(self) -> None:
        """durability="disk": fsync what was written, at most every DISK_SYNC_SECONDS (one
        fsync covers every message written since the last)."""
        now = time.monotonic()
        if now - self._synced_at < DISK_SYNC_SECONDS:
            return
        self._synced_at = now
        try:
            self._spool.sync()
        except OSError as exc:
            self._spool_failed(exc)

    def _open_spool(self) -> bool:
        """The spool, made on first use; False while there is none or a failed write's
        pause (SPOOL_RETRY_SECONDS) runs."""
        if self._spool_folder is None or time.monotonic() < self._spool_retry_at:
            return False
        if self._spool is None:
            try:
                self._spool = spool.Spool(Path(self._spool_folder), self.spool_mode)
            except OSError as exc:
                self._spool_failed(exc)
                return False
        if self._spool_token is not None and self._spool.token != self._spool_token[1]:
            try:
                self._spool.set_token(*self._spool_token)
            except OSError as exc:
                self._spool_failed(exc)
                return False
        if self._spool_error is not None:
            log.warning(
                "publisher %d: its spool %s is usable again (it failed: %s)",
                self.publisher_id,
                self._spool_folder,
                self._spool_error,
            )
            self._spool_error = None
        return True

    def _spool_failed(self, exc: OSError) -> None:
        """A spool that cannot be written (disk full, a size limit, an I/O error) counts as
        full: the overflow policy applies, and it is tried again after a pause."""
        self._spool_retry_at = time.monotonic() + SPOOL_RETRY_SECONDS
        if self._spool_error is None:
            log.error(
                "publisher %d: cannot write its spool %s (%s); it counts as full, so the "
                "overflow policy (%s) applies, and it is tried again every %gs",
                self.publisher_id,
                self._spool_folder,
                exc,
                self.overflow,
                SPOOL_RETRY_SECONDS,
            )
        self._spool_error = str(exc)

    def _drop_oldest_message(self) -> None:
        """Both bounds are full: give up the oldest message in memory (counted, logged)."""
        seq, raw, count = self._mem.popleft()
        self._mem_bytes -= len(raw)
        self._base = max(self._base, seq)
        self._next_send = max(self._next_send, seq + 1)
        self._count_drop(count)

    def _raw_for(self, seq: int) -> bytes | None:
        """The packed message ``seq``: from memory, else from the spool (read in order)."""
        if self._mem and self._mem[0][0] <= seq:
            return self._mem[seq - self._mem[0][0]][1]
        if not self._spooled or seq < self._spooled[0][0]:
            return None  # acknowledged or given up meanwhile
        for _attempt in range(2):
            if self._replay_iter is None:
                self._replay_iter = iter(self._spool.read_all())
                self._replay_peek = next(self._replay_iter, None)
            while self._replay_peek is not None and self._replay_peek[0] < seq:
                self._replay_peek = next(self._replay_iter, None)
            if self._replay_peek is not None and self._replay_peek[0] == seq:
                return self._replay_peek[1]
            self._replay_iter = None  # spilled after this reader started: read again
        return None

    def _send(self) -> None:
        while self._next_send <= self._seq:
            raw = self._raw_for(self._next_send)
            if raw is None:  # acknowledged or given up meanwhile
                self._next_send += 1
                continue
            if not self._transport.try_send(raw):
                return
            self._next_send += 1
        self._replay_iter = None

    def _ask_for_ack(self) -> None:
        """Keep one acknowledgement request outstanding while anything is unacknowledged.

        A flush makes it urgent (the daemon commits at once instead of at the end of its
        batch window); an urgent need does not wait behind an outstanding ordinary request.
        A drop count the daemon has not heard yet is a reason to ask too (for `status`).
        """
        settled = self._acked >= self._seq or self._next_send == 1
        if settled and self.dropped == self._dropped_reported:
            return
        urgent = bool(self._markers)
        now = time.monotonic()
        if (
            self._ack_sent_at is not None
            and now - self._ack_sent_at < ACK_TIMEOUT
            and (self._ack_urgent or not urgent)
        ):
            return
        if self._ack_sent_at is not None:  # the last request went unanswered
            self._report_refusal(now)
        self._ack_rid += 1
        self._ack_sent_at = now
        self._ack_urgent = urgent
        self._ack_dropped = self.dropped
        self._transport.request(
            wire.sync_request(
                self._ack_rid,
                self.publisher_id,
                self._next_send - 1,
                wait=ACK_TIMEOUT / 2,
                urgent=urgent,
                dropped=self._ack_dropped,
                base=self._base,
                # A spool token from each daemon instance (its key may have changed).
                token=self._token_instance is None or self._token_instance != self._instance,
            )
        )

    def _report_refusal(self, now: float) -> None:
        """A daemon that refuses this publisher's CURVE handshake never answers; say why
        (at most once a minute), since nothing else would."""
        cause = getattr(self._transport, "likely_cause", str)()
        if cause and now - self._refusal_logged_at >= 60.0:
            self._refusal_logged_at = now
            log.error(
                "publisher %d: the daemon does not answer%s; records wait (memory, then "
                "spool) until it does",
                self.publisher_id,
                cause,
            )

    def _handle_replies(self) -> None:
        for reply in self._transport.replies():
            ack = wire.Ack.parse(reply)
            if ack.rid == self._ack_rid:
                self._ack_sent_at = None
                self._dropped_reported = self._ack_dropped
            committed = ack.committed
            restarted = self._instance is not None and ack.instance != self._instance
            self._instance = ack.instance
            if ack.has_token:
                self._token_instance = ack.instance
                self._spool_token = ack.token or self._spool_token
            if committed > self._acked:
                self._acknowledge(committed)
            if ack.resend or restarted:
                self._replay(max(committed, self._acked) + 1)
            elif self._acked < self._next_send - 1 and (
                time.monotonic() - self._last_progress > STALL_SECONDS
            ):
                self._note_stall()
                self._replay(self._acked + 1, quiet=True)

    def _note_stall(self) -> None:
        """The first replay of a stall is logged; later ones are summed up once per
        STALL_SUMMARY_SECONDS, and the end of the stall says how long it lasted."""
        now = time.monotonic()
        if self._stall is None:
            self._stall = _Stall(self._last_progress, now)
            log.warning(
                "publisher %d: no acknowledgement for %gs; resending from %d (repeats are "
                "summed up every %gs)",
                self.publisher_id,
                STALL_SECONDS,
                self._acked + 1,
                STALL_SUMMARY_SECONDS,
            )
        stall = self._stall
        stall.resends += 1
        if now - stall.logged_at >= STALL_SUMMARY_SECONDS:
            log.warning(
                "publisher %d: still no acknowledgement after %.0fs; resent from %d %d "
                "more time(s)",
                self.publisher_id,
                now - stall.since,
                self._acked + 1,
                stall.resends - stall.resends_logged,
            )
            stall.resends_logged, stall.logged_at = stall.resends, now

    def _acknowledge(self, committed: int) -> None:
        self._acked = committed
        self._last_progress = time.monotonic()
        if self._stall is not None:
            log.warning(
                "publisher %d: the daemon acknowledges again after %.0fs (resent %d time(s) "
                "meanwhile)",
                self.publisher_id,
                self._last_progress - self._stall.since,
                self._stall.resends,
            )
            self._stall = None
        while self._mem and self._mem[0][0] <= committed:
            _, raw, _ = self._mem.popleft()
            self._mem_bytes -= len(raw)
        while self._spooled and self._spooled[0][0] <= committed:
            self._spooled.popleft()
        if self._spool is not None:
            self._spool.release_through(committed)
        self._base = max(self._base, committed)
        self._release_markers()

    def _release_markers(self) -> None:
        if not self._markers:
            return
        still = []
        for marker in self._markers:
            if marker.seq <= self._acked:
                marker.event.set()
            else:
                still.append(marker)
        self._markers = still

    def _replay(self, from_seq: int, quiet: bool = False) -> None:
        """Send again everything from ``from_seq``, on a fresh connection (``quiet``: the
        caller has said so already)."""
        from_seq = max(from_seq, self._base + 1)
        if from_seq > self._seq:
            return
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "publisher %d: replaying messages %d..%d",
            self.publisher_id,
            from_seq,
            self._seq,
        )
        self._transport.restart_data()
        self._next_send = from_seq
        self._replay_iter = None
        self._ack_sent_at = None
        self._last_progress = time.monotonic()

    # -- closing ----------------------------------------------------------------------
    def close(self, timeout: float | None = None) -> bool:
        """Hand everything over and wait (bounded) for its commit; True if all was committed.

        What is still unacknowledged stays in this publisher's spool for the daemon.
        """
        if self._closed:
            return True
        timeout = self.close_timeout if timeout is None else timeout
        committed = self.flush(timeout)
        self._closed = True
        self._stop = True
        os.eventfd_write(self._wake_fd, 1)
        self._sender.join(timeout=5.0)
        if not committed:
            self._spool_everything()
        elif self._spool is not None:
            self._spool.close(keep=False)
        self._transport.close()
        os.close(self._wake_fd)
        _live_publishers.discard(self)
        return committed

    def _spool_everything(self) -> None:
        """At close, unacknowledged messages go to the spool (or are counted lost)."""
        self._pack_remaining()
        pending = self._queue and sum(1 for kind, _ in self._queue if kind != _MARKER)
        if self._spool_folder is not None:
            self._spool_retry_at = 0.0  # one more try, whatever failed before
            while self._mem:
                if not self._spill_oldest():
                    break
        lost = sum(n for _, _, n in self._mem) + (pending or 0)
        spooled = sum(n for _, n in self._spooled)
        if self._spool is not None:
            self._spool.close(keep=bool(self._spooled))
        if spooled:
            log.warning(
                "publisher %d: the daemon did not confirm %d record(s) within %gs; they are "
                "kept in %s and the daemon applies them when it runs",
                self.publisher_id,
                spooled,
                self.close_timeout,
                self._spool_folder,
            )
        if lost:
            self._count_drop(lost, "unspooled")

    def _pack_remaining(self) -> None:
        self._markers = []
        saved, self.overflow = self.overflow, "drop_oldest"
        try:
            self._pack()
        finally:
            self.overflow = saved

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@atexit.register
def _close_live_publishers() -> None:
    """A process that exits normally hands its records over first (bounded in time)."""
    for publisher in list(_live_publishers):
        try:
            publisher.close()
        except Exception:  # exit must go on whatever one publisher does
            log.exception("closing a publisher at exit failed")


_sigterm_handled = False


def _spool_on_sigterm() -> None:
    """Make SIGTERM keep what a normal exit keeps: hand every publisher's records over (to
    the daemon, else the spool, as at exit), then die of SIGTERM as before.

    Installed once, from the main thread, and only where SIGTERM still has its default
    disposition: a process that handles SIGTERM itself (or ignores it) is left alone, and
    its own shutdown path reaches the exit handler above. ``handle_sigterm=False`` opts out.
    """
    global _sigterm_handled
    if _sigterm_handled or threading.current_thread() is not threading.main_thread():
        return
    _sigterm_handled = True
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, _frame) -> None:
    try:
        if _live_publishers:
            log.warning("SIGTERM: handing over what %d publisher(s) hold", len(_live_publishers))
            _close_live_publishers()
    finally:
        # Then the default action, so the process still ends with SIGTERM's status.
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def _forget_after_fork() -> None:
    """A forked child must not use its parent's sockets, thread or id block."""
    for publisher in list(_live_publishers):
        publisher._closed = True
        publisher._forked = True
    _live_publishers.clear()


os.register_at_fork(after_in_child=_forget_after_fork)

__all__ = ["Publisher", "ZmqTransport", "OVERFLOW_POLICIES"]
