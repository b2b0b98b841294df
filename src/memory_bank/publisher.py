"""The write half that CSMS, charge point and charger code import: fire-and-forget, never blocks.

A call builds its row, takes an id from the publisher's leased id block, appends the row to
an in-memory queue and returns (microseconds). A background sender thread drains the queue
into messages of many rows and hands them to the transport (ZeroMQ PUSH to the daemon, or
the embedded writer). Imports nothing heavy: standard library, pyzmq, msgpack, wire.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import threading
import time
import weakref
from collections import deque

import zmq

from . import discovery, sockets, wire
from .control import ControlClient, DaemonUnavailable

log = logging.getLogger(__name__)

_EVENTS, _ANOMALIES, _METRICS, _OPERATIONS, _MARKER = 0, 1, 2, 3, 4


def _json(value) -> str | None:
    """JSON-encode a data/metadata argument on the caller's side (the seed stores JSON text)."""
    if value is None:
        return None
    return json.dumps(value, default=str)


def _time(timestamp) -> float:
    return time.time() if timestamp is None else float(timestamp)


class _Marker:
    """Put in the queue by flush(): the sender tells which message closed everything before it."""

    __slots__ = ("event", "seq")

    def __init__(self):
        self.event = threading.Event()
        self.seq = 0


class ZmqTransport:
    """Messages to a daemon over PUSH; commit confirmations over the control channel."""

    def __init__(self, data_endpoint: str, control_endpoint: str):
        self.data_endpoint = data_endpoint
        self._ctx = zmq.Context()
        self._push: zmq.Socket | None = None
        self.control = ControlClient(control_endpoint, self._ctx)

    def send(self, publisher_id: int, seq: int, rows: list, give_up_at: float | None) -> bool:
        """Hand one message to ZeroMQ; waits (in the sender thread only) while its queue is
        full. Returns False when ``give_up_at`` passed first."""
        if self._push is None:
            self._push = sockets.publisher_push(self._ctx, self.data_endpoint)
        raw = wire.encode(publisher_id, seq, *rows)
        while True:
            try:
                self._push.send(raw, zmq.NOBLOCK)
                return True
            except zmq.Again:
                if give_up_at is not None and time.monotonic() >= give_up_at:
                    return False
                self._push.poll(100, zmq.POLLOUT)

    def wait_committed(self, publisher_id: int, seq: int, timeout: float) -> bool:
        try:
            reply = self.control.request(
                "sync", timeout=timeout + 1.0, pub=publisher_id, seq=seq, wait=timeout
            )
        except DaemonUnavailable:
            return False
        return bool(reply.get("ok"))

    def lease_block(self, timeout: float) -> int:
        reply = self.control.request("lease", timeout=timeout)
        return int(reply["block"])

    def close(self) -> None:
        self.control.close()
        if self._push is not None:
            self._push.close(sockets.PUBLISHER_LINGER_MS)
            self._push = None
        self._ctx.term()


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
        max_queue: int = 1_000_000,
        batch_records: int = 512,
        close_timeout: float = 5.0,
    ):
        if db_path is None and endpoint is None and transport is None:
            raise ValueError("Publisher needs a database path or an endpoint")
        self.db_path = discovery.resolve_db_path(db_path) if db_path is not None else None
        self.max_queue = max_queue
        self.batch_records = batch_records
        self.close_timeout = close_timeout
        if transport is None:
            if endpoint is not None:
                data_ep, control_ep = endpoint, sockets.control_endpoint_for(endpoint)
            else:
                found = discovery.find_endpoints(self.db_path)
                data_ep, control_ep = found.data, found.control
            transport = ZmqTransport(data_ep, control_ep)
        self._transport = transport
        self._id_lock = threading.Lock()
        self._lease_block()
        self.publisher_id = self._block
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._dirty = False
        self._closing = False
        self._closed = False
        self._forked = False
        self._give_up_at: float | None = None
        self._seq = 0
        self.dropped = 0
        self._dropped_logged_at = 0.0
        self._sender = threading.Thread(
            target=self._run_sender, name=f"memorybank-publisher-{self._block}", daemon=True
        )
        self._sender.start()
        _live_publishers.add(self)

    # -- ids --------------------------------------------------------------------------
    def _lease_block(self) -> None:
        if self.db_path is not None:
            block = discovery.lease_id_block(self.db_path)
        else:
            block = self._transport.lease_block(timeout=self.close_timeout)
        self._block = block
        base = block << wire.ID_BLOCK_BITS
        self._id_limit = base + (1 << wire.ID_BLOCK_BITS) - 1
        self._ids = itertools.count(base + 1)

    def _new_id(self) -> int:
        new_id = next(self._ids)
        if new_id > self._id_limit:
            with self._id_lock:
                if new_id > self._id_limit:
                    self._lease_block()
                new_id = next(self._ids)
        return new_id

    # -- the queue --------------------------------------------------------------------
    def _put(self, kind: int, row: list) -> None:
        if self._closed:
            if self._forked:
                raise RuntimeError(
                    "this Publisher (or MemoryBank) was made by the parent process; "
                    "make a new one in the child after fork"
                )
            raise RuntimeError("this Publisher is closed")
        if len(self._queue) >= self.max_queue:
            self._count_drop()
            return
        self._queue.append((kind, row))
        self._dirty = True
        if not self._wake.is_set():
            self._wake.set()

    def _count_drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged_at >= 10.0:
            self._dropped_logged_at = now
            log.error(
                "publisher queue full (%d records): %d record(s) dropped so far; is the daemon "
                "of %s running?",
                self.max_queue,
                self.dropped,
                self.db_path or "this endpoint",
            )

    # -- the seed's write calls -------------------------------------------------------
    def log_event(self, event_type, component, message="", data=None, *, timestamp=None) -> int:
        event_id = self._new_id()
        self._put(
            _EVENTS, [event_id, _time(timestamp), event_type, component, message, _json(data)]
        )
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
        anomaly_id = self._new_id()
        self._put(
            _ANOMALIES,
            [
                anomaly_id,
                _time(timestamp),
                anomaly_type,
                severity,
                description,
                _json(pattern_data),
                None if current_value is None else float(current_value),
                None if expected_value is None else float(expected_value),
            ],
        )
        return anomaly_id

    def record_metric(self, metric_name, metric_value, unit=None, metadata=None, *, timestamp=None):
        metric_id = self._new_id()
        self._put(
            _METRICS,
            [metric_id, _time(timestamp), metric_name, float(metric_value), unit, _json(metadata)],
        )
        return metric_id

    def start_session(self, session_id, *, timestamp=None) -> None:
        self._put(_OPERATIONS, [wire.OP_SESSION_START, _time(timestamp), str(session_id)])

    def increment_session_anomaly_count(self, session_id, *, timestamp=None) -> None:
        self._put(_OPERATIONS, [wire.OP_SESSION_ANOMALY, _time(timestamp), str(session_id)])

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
        self._put(_OPERATIONS, [wire.OP_SESSION_END, _time(timestamp), str(session_id), *stats])

    def record_pattern(self, pattern_type, pattern_data, confidence=1.0, *, timestamp=None) -> None:
        key = json.dumps(pattern_data, sort_keys=True, separators=(",", ":"), default=str)
        self._put(
            _OPERATIONS,
            [
                wire.OP_PATTERN,
                _time(timestamp),
                pattern_type,
                _json(pattern_data),
                key,
                float(confidence),
            ],
        )

    # -- delivery ---------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far is committed; False if not within ``timeout``.

        Free when nothing was written since the last successful flush.
        """
        if not self._dirty:
            return True
        timeout = self.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self._dirty = False
        marker = _Marker()
        self._queue.append((_MARKER, marker))
        self._wake.set()
        ok = marker.event.wait(timeout) and (
            marker.seq == 0
            or self._transport.wait_committed(
                self.publisher_id, marker.seq, max(0.0, deadline - time.monotonic())
            )
        )
        if not ok:
            self._dirty = True
        return ok

    def _run_sender(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait()
            self._wake.clear()
            while queue:
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
                    self._seq += 1
                    give_up = self._give_up_at if self._closing else None
                    if not self._transport.send(self.publisher_id, self._seq, rows, give_up):
                        self._count_unsent(count + len(queue))
                        queue.clear()
                for marker in markers:
                    marker.seq = self._seq
                    marker.event.set()
            if self._closing and not queue:
                return

    def _count_unsent(self, records: int) -> None:
        self.dropped += records
        log.error(
            "%d record(s) could not be handed to the daemon of %s before close; they are lost",
            records,
            self.db_path or "this endpoint",
        )

    def close(self, timeout: float | None = None) -> bool:
        """Hand everything over and wait (bounded) for its commit; True if all was committed."""
        if self._closed:
            return True
        timeout = self.close_timeout if timeout is None else timeout
        committed = self.flush(timeout)
        self._closing = True
        self._give_up_at = time.monotonic() + 0.1
        self._wake.set()
        self._sender.join(timeout=1.0)
        self._closed = True
        if not committed:
            log.warning(
                "closing publisher of %s: the daemon did not confirm the last records within "
                "%gs (is it running?)",
                self.db_path or "this endpoint",
                timeout,
            )
        self._transport.close()
        _live_publishers.discard(self)
        return committed

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


def _forget_after_fork() -> None:
    """A forked child must not use its parent's sockets, thread or id block."""
    for publisher in list(_live_publishers):
        publisher._closed = True
        publisher._forked = True
    _live_publishers.clear()


os.register_at_fork(after_in_child=_forget_after_fork)

__all__ = ["Publisher", "ZmqTransport", "DaemonUnavailable"]
