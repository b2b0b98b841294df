"""The Publisher: the seed's write calls, the id lease, and the caller's queue.

A call checks and encodes its values (records.py), then, under one lock, takes its time
and an id from the leased block and appends its row to the queue, and returns: nothing else
runs in the caller's thread. The
sender thread (sender.py) takes it from there; the outbox (outbox.py) keeps every message
until the daemon acknowledges it. Also here: what a process does for its publishers at exit,
on SIGTERM and after fork.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import signal
import threading
import weakref
from time import time

from .. import discovery, sockets, spool, wire
from .drops import Drops
from .outbox import DURABILITY_MODES, OVERFLOW_POLICIES, Outbox
from .records import checked_json, pattern_texts, session_text
from .sender import ANOMALIES, EVENTS, MARKER, METRICS, OPERATIONS, Marker, Sender
from .transport import Transport, ZmqTransport

log = logging.getLogger(__package__)

_live_publishers: weakref.WeakSet = weakref.WeakSet()
# Where every row and operation keeps its time.
_TIMESTAMP = wire.ROW_TIMESTAMP
assert _TIMESTAMP == wire.OP_TIMESTAMP
# A queued row carries its kind last (the sender takes it off), so a session operation's id,
# last on the wire, is the item before it.
_SESSION_ID_AT = wire.SessionOp.ROW_ID - 1


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
        transport: Transport | None = None,
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
        # The database's identity on this host (discovery.location_key): where its daemon's
        # lock and endpoints, its id lease and this publisher's spool hang from.
        self.location = discovery.location_key(db_path, endpoint) if db_path is not None else None
        self.max_queue = max_queue
        self.batch_records = batch_records
        self.close_timeout = close_timeout
        if transport is None:
            if endpoint is not None:
                data_ep, control_ep = endpoint, sockets.control_endpoint_for(endpoint)
            else:
                assert self.location is not None  # db_path was given (checked above)
                found = discovery.find_endpoints(self.location)
                data_ep, control_ep = found.data, found.control
            transport = ZmqTransport(data_ep, control_ep, curve)
        self._transport = transport
        # Taken by a call to stamp, number and queue its row (_put).
        self._lock = threading.Lock()
        # Under CURVE, what lets a daemon apply this publisher's spool: (identity, token),
        # from the lease or from the first acknowledgement exchange (spool_auth).
        spool_token = self._lease_block()
        self.publisher_id = self._block
        if spool_dir is not None:
            folder = os.path.join(os.fspath(spool_dir), str(self.publisher_id))
        elif self.location is not None:
            folder = os.fspath(spool.spool_root(self.location) / str(self.publisher_id))
        else:
            folder = None
            if durability == "disk":
                raise ValueError('durability="disk" needs a spool: give db_path or spool_dir')
        self._outbox = Outbox(
            self.publisher_id,
            folder,
            memory_bytes=memory_bytes,
            spool_bytes=spool_bytes,
            overflow=overflow,
            spool_mode=spool_mode,
            durability=durability,
        )
        self._outbox.spool_token = spool_token
        self._drops = Drops(self.publisher_id, self._outbox, self.location)
        self._sender = Sender(
            self.publisher_id, transport, self._outbox, self._drops, batch_records
        )
        # Shared with callers.
        self._queue = self._sender.queue
        self._dirty = False
        self._closed = False
        self._forked = False
        self._sender.start()
        _live_publishers.add(self)
        if handle_sigterm:
            _spool_on_sigterm()

    @property
    def db_path(self):
        """The name ``location`` had before (kept for callers that read it)."""
        return self.location

    # The outbox's bounds and policies, as given.
    memory_bytes = property(lambda self: self._outbox.memory_bytes)
    spool_bytes = property(lambda self: self._outbox.spool_bytes)
    overflow = property(lambda self: self._outbox.overflow)
    spool_mode = property(lambda self: self._outbox.spool_mode)
    durability = property(lambda self: self._outbox.durability)

    @property
    def dropped(self) -> int:
        """Records given up so far, for any reason (see dropped_by_reason)."""
        return self._drops.total

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        """Records given up per reason (drops.DROP_REASONS)."""
        return self._drops.by_reason

    @property
    def sender_errors(self) -> int:
        """Unexpected errors the sender thread logged and went on from."""
        return self._sender.errors

    @property
    def unflushed(self) -> bool:
        """Something was written since the last successful flush."""
        return self._dirty

    # -- ids --------------------------------------------------------------------------
    def _lease_block(self) -> tuple[str, bytes] | None:
        """Lease the next id block; returns the spool token the daemon sent with it."""
        token = None
        if self._ids_from_daemon or self.location is None:
            from ..control import DaemonUnavailable

            try:
                block, token = self._transport.lease_block(timeout=self.close_timeout)
            except DaemonUnavailable as exc:
                raise DaemonUnavailable(
                    f"{exc}. Ids for a PostgreSQL database or a named endpoint come from its "
                    "daemon, so one must be running: memorybank daemon --db URL [--endpoint ...]"
                ) from None
        else:
            block = discovery.lease_id_block(self.location)
        self._block = block
        base = block << wire.ID_BLOCK_BITS
        self._id_limit = base + (1 << wire.ID_BLOCK_BITS) - 1
        self._ids = itertools.count(base + 1)
        return token

    # -- the queue (caller side) ------------------------------------------------------
    def _put(self, row: list, timestamp, id_at: int | None = wire.ROW_ID) -> int:
        """Queue ``row`` (its kind last: sender.py takes it off) with its time (the call's,
        unless ``timestamp`` is given) and, at ``id_at`` (None: none), the next id; returns
        the id (0 when none).

        One lock covers the id and the append, so threads sharing this publisher queue ids
        in the order they took them: its rows commit in id order, as readers of committed
        rows (the detector's position) expect. The row is the only object a call leaves
        behind (no pair around it): one, not two, for the garbage collector to count."""
        row[_TIMESTAMP] = time() if timestamp is None else float(timestamp)
        lock = self._lock
        lock.acquire()  # (a with statement costs twice as much here)
        try:
            if self._closed:
                self._refuse_closed()
            row_id = 0
            if id_at is not None:
                row_id = next(self._ids)
                if row_id > self._id_limit:
                    self._lease_block()
                    row_id = next(self._ids)
                row[id_at] = row_id
            queue = self._queue
            if len(queue) >= self.max_queue:
                if self.overflow == "drop_newest":
                    self._drops.count(1)
                    return row_id
                try:
                    queue.popleft()
                    self._drops.count(1)
                except IndexError:
                    pass
            queue.append(row)
        finally:
            lock.release()
        self._dirty = True
        if not self._sender.wake_pending:
            self._sender.wake()
        return row_id

    def _refuse_closed(self):
        if self._forked:
            raise RuntimeError(
                "this Publisher (or MemoryBank) was made by the parent process; "
                "make a new one in the child after fork"
            )
        raise RuntimeError("this Publisher is closed")

    # -- the seed's write calls (rows in wire's column order: wire.EventRow..., then their
    # kind; _put fills in the time and the id) ---------------------------------------------
    def log_event(self, event_type, component, message="", data=None, *, timestamp=None) -> int:
        text = checked_json(data, event_type, component, message)
        row = [0, 0.0, event_type, component, message, text, EVENTS]
        return self._put(row, timestamp)

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
        text = checked_json(pattern_data, anomaly_type, severity, description)
        row = [
            0,
            0.0,
            anomaly_type,
            severity,
            description,
            text,
            None if current_value is None else float(current_value),
            None if expected_value is None else float(expected_value),
            ANOMALIES,
        ]
        return self._put(row, timestamp)

    def record_metric(self, metric_name, metric_value, unit=None, metadata=None, *, timestamp=None):
        text = checked_json(metadata, metric_name, unit)
        row = [0, 0.0, metric_name, float(metric_value), unit, text, METRICS]
        return self._put(row, timestamp)

    def start_session(self, session_id, *, timestamp=None) -> int:
        """Returns the id of the session's row (unless the session was already started:
        that row keeps the id its first start returned)."""
        row = [wire.OP_SESSION_START, 0.0, session_text(session_id), 0, OPERATIONS]
        return self._put(row, timestamp, _SESSION_ID_AT)

    def increment_session_anomaly_count(self, session_id, *, timestamp=None) -> None:
        row = [wire.OP_SESSION_ANOMALY, 0.0, session_text(session_id), 0, OPERATIONS]
        self._put(row, timestamp, _SESSION_ID_AT)

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
        row = [wire.OP_SESSION_END, 0.0, session_text(session_id), *stats, 0, OPERATIONS]
        self._put(row, timestamp, _SESSION_ID_AT)

    def record_pattern(self, pattern_type, pattern_data, confidence=1.0, *, timestamp=None) -> None:
        text, key = pattern_texts(pattern_data, pattern_type)
        row = [
            wire.OP_PATTERN,
            0.0,
            pattern_type,
            text,
            key,
            float(confidence),
            OPERATIONS,
        ]
        self._put(row, timestamp, None)

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
        marker = Marker()
        self._queue.append([marker, MARKER])
        self._sender.wake()
        if not marker.event.wait(timeout):
            self._dirty = True
            return False
        return True

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
        self._sender.stop()
        if committed:
            self._outbox.close(keep=False)
        else:
            self._spool_everything()
        self._transport.close()
        self._sender.close()
        _live_publishers.discard(self)
        return committed

    def _spool_everything(self) -> None:
        """At close, unacknowledged messages go to the spool (or are counted lost)."""
        unpacked = self._sender.pack_remaining()
        spooled, lost = self._outbox.close(keep=True)
        if spooled:
            # Why, when the daemon's handshakes said (a script that closes within the
            # sender's first unanswered request would learn it nowhere else); its sockets
            # are read only once the sender's thread has ended.
            likely_cause = getattr(self._transport, "likely_cause", None)
            cause = likely_cause() if likely_cause and not self._sender.is_alive() else ""
            log.warning(
                "publisher %d: the daemon did not confirm %d record(s) within %gs%s; they "
                "are kept in %s and the daemon applies them when it runs",
                self.publisher_id,
                spooled,
                self.close_timeout,
                cause,
                self._outbox.folder,
            )
        if lost + unpacked:
            self._drops.count(lost + unpacked, "unspooled")

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
        # Another thread of the parent (gone here), in a call, may have held it at the fork.
        publisher._lock = threading.Lock()
    _live_publishers.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
