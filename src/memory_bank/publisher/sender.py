"""A publisher's sender thread: packs the caller's queue into messages, sends them, asks for
acknowledgements, and replays from the first unacknowledged message when the daemon asks
for it, restarts, or stops acknowledging.

It keeps ARCHITECTURE.md's contracts "Committed means kept" (a message is kept until
acknowledged, and replayed) and "Never block, never drop silently" (what it gives up is
counted in drops.py); the messages it sends and the control maps it exchanges are
wire.py's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from itertools import repeat, starmap

import msgpack
import zmq

from .. import sockets, wire
from .drops import DROP_LOG_SECONDS, Drops
from .outbox import DISK_SYNC_SECONDS, Outbox
from .transport import Transport

log = logging.getLogger(__package__)

# What the caller's queue holds: rows, each with its kind appended (the index of its rows in
# a message, wire.encode's order), or [a flush's Marker, MARKER]. One list per call, no
# (kind, row) pair: the fewer objects a call leaves behind, the rarer the collections.
EVENTS, ANOMALIES, METRICS, OPERATIONS, MARKER = 0, 1, 2, 3, 4
# How long an acknowledgement request may go unanswered before it is sent again.
ACK_TIMEOUT = 2.0
# How long the daemon may answer without acknowledging anything new before a replay.
STALL_SECONDS = 5.0
# While it keeps not acknowledging, the replays that follow are summed up this often.
STALL_SUMMARY_SECONDS = 60.0
# While records flow, the sender gathers them this long between messages: fewer wake-ups
# and GIL handoffs for the caller, larger messages for the daemon.
LINGER = 0.001
# After the last record, it goes on cycling so long before it sleeps: a wake-up is an
# eventfd write in the caller's call (a system call that lets go of the GIL and wakes this
# thread: a median 55-68 us of that call's wall time, bench/publish_cpu.py), so a caller
# that keeps writing, if with pauses, should not pay one.
LINGER_IDLE = 0.05
# Largest packed message; rows beyond it go into the next message. One record alone may
# take up to the daemon's limit (sockets.DAEMON_MAXMSGSIZE); a larger one is refused.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class Marker:
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


class Sender:
    """The thread between a publisher's queue and its transport.

    Callers append to ``queue`` and, unless ``wake_pending`` is already set, call wake().
    """

    def __init__(
        self,
        publisher_id: int,
        transport: Transport,
        outbox: Outbox,
        drops: Drops,
        batch_records: int,
    ):
        self.publisher_id = publisher_id
        self.transport = transport
        self.outbox = outbox
        self.drops = drops
        self.batch_records = batch_records
        # Shared with callers.
        self.queue: deque = deque()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.wake_pending = False
        self.errors = 0  # unexpected errors in a cycle (Publisher.sender_errors)
        # The thread's own state.
        self._acked = 0  # the daemon has committed everything up to here
        self._next_send = 1  # next message to hand to the transport
        self._markers: list[Marker] = []
        self._instance: str | None = None  # the daemon instance that last answered
        self._token_instance: str | None = None  # the daemon instance that last gave a token
        self._ack_rid = 0
        self._ack_dropped = 0  # the drop count the outstanding request carries
        self._dropped_reported = 0  # the drop count the daemon has acknowledged hearing
        self._ack_sent_at: float | None = None
        self._ack_urgent = False
        self._last_progress = time.monotonic()
        self._stall: _Stall | None = None
        self._error_logged_at = -DROP_LOG_SECONDS
        self._refusal_logged_at = -60.0
        self._stop = False
        self._poller: zmq.Poller | None = None
        self._poller_key: tuple = ()
        self._thread = threading.Thread(
            target=self._run, name=f"memorybank-publisher-{publisher_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A caller queued something (or a flush marker): end the thread's sleep."""
        self.wake_pending = True
        os.eventfd_write(self.wake_fd, 1)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread after its current cycle (bounded wait)."""
        self._stop = True
        os.eventfd_write(self.wake_fd, 1)
        self._thread.join(timeout=timeout)

    def close(self) -> None:
        os.close(self.wake_fd)

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        """While records flow, and for LINGER_IDLE after, cycle every LINGER seconds
        (callers then make no system call to wake it); then re-arm the wake-up and sleep.

        The thread never dies of what it handles: a record that cannot be packed is refused
        alone (``_store_message``), and any other error in a cycle is counted
        (``errors``), logged, and the next cycle goes on after a pause."""
        wake_fd = self.wake_fd
        outbox = self.outbox
        # Whether the transport may hold replies: only then is it asked (each ask is a
        # system call that lets go of the GIL, and every time this thread takes the GIL
        # back from a busy caller, that caller waits).
        replies_ready = True
        lingers_until = 0.0  # monotonic; cycling every LINGER until then
        while True:
            try:
                packed = self.pack()
                if outbox.durability == "disk":
                    outbox.write_ahead()  # what a failed write left behind
                    if outbox.unsynced:
                        outbox.sync()
                self._send()
                if replies_ready:
                    self._handle_replies()
                self._ask_for_ack()
                if self._stop:
                    return
                timeout: float | None
                if packed:
                    timeout = LINGER
                    lingers_until = time.monotonic() + LINGER_IDLE
                elif time.monotonic() < lingers_until:
                    timeout = LINGER
                else:
                    self.wake_pending = False  # the next call wakes us...
                    if self.queue:  # ...unless one came in just now
                        continue
                    timeout = self._poll_timeout()
                poller = self._poller_for(self.transport.poll_items(self._has_unsent()))
                ready = dict(poller.poll(None if timeout is None else int(timeout * 1000) + 1))
                replies_ready = len(ready) > (wake_fd in ready)
                if wake_fd in ready:
                    sockets.clear_wakeup(wake_fd)
            except Exception:
                self._failed()
                if self._stop:
                    return

    def _failed(self) -> None:
        """An unexpected error in a cycle: counted, logged with its traceback (at most once
        per DROP_LOG_SECONDS), then a pause so a lasting fault cannot spin."""
        self.errors += 1
        now = time.monotonic()
        if now - self._error_logged_at >= DROP_LOG_SECONDS:
            self._error_logged_at = now
            log.exception(
                "publisher %d: error in the sender thread (%d so far); it goes on",
                self.publisher_id,
                self.errors,
            )
        time.sleep(0.05)

    def _poller_for(self, items: list) -> zmq.Poller:
        """The thread's poller, rebuilt only when the sockets or the events it waits for
        change (building one each cycle cost the caller GIL time)."""
        key = tuple((id(sock), flags) for sock, flags in items)
        if self._poller is None or key != self._poller_key:
            poller = zmq.Poller()
            for sock, flags in items:
                poller.register(sock, flags)
            poller.register(self.wake_fd, zmq.POLLIN)
            self._poller, self._poller_key = poller, key
        return self._poller

    def _poll_timeout(self) -> float | None:
        if self.outbox.durability == "disk" and self.outbox.unsynced:
            return DISK_SYNC_SECONDS
        if (
            self._acked >= self.outbox.seq
            and not self.queue
            and self.drops.total == self._dropped_reported
        ):
            return None  # idle: sleep until a call or a reply wakes us
        return 0.05 if self._has_unsent() else 0.25

    def _has_unsent(self) -> bool:
        return self._next_send <= self.outbox.seq

    # -- packing ------------------------------------------------------------------------
    def pack(self) -> bool:
        """Turn queued rows into numbered messages held until acknowledged; True if any."""
        queue = self.queue
        popleft = queue.popleft
        packed = False
        while queue:
            if self.outbox.full() and self.outbox.overflow == "drop_newest":
                return packed  # rows wait in the queue; past max_queue the newest drop
            # Up to a message's worth, taken in one C loop, then sorted with one Python step
            # a row (a third fewer instructions than a loop doing both, callgrind). Only the
            # sender takes from the queue's left, but a drop_oldest call may too: rows taken
            # before the queue ran out are kept.
            taken: list[list] = []
            try:
                taken.extend(starmap(popleft, repeat((), min(len(queue), self.batch_records))))
            except IndexError:
                pass
            rows: list[list] = [[], [], [], [], []]  # by kind; flushes' markers last
            for row in taken:
                rows[row.pop()].append(row)
            # A marker is released with the message its rows go into, or a later one: a
            # flush waits for everything queued before it (and perhaps a few rows after).
            markers = rows.pop()
            count = len(taken) - len(markers)
            if count:
                self._store_message(rows, count)
                packed = True
            for (marker,) in markers:
                marker.seq = self.outbox.seq
                self._markers.append(marker)
        self._release_markers()
        return packed

    def pack_remaining(self) -> int:
        """At close, after the thread stopped: pack whatever is queued, the oldest messages
        giving way if both bounds are full; returns the records left unpacked."""
        self._markers = []
        saved, self.outbox.overflow = self.outbox.overflow, "drop_oldest"
        try:
            self.pack()
        finally:
            self.outbox.overflow = saved
        return sum(1 for row in self.queue if row[-1] != MARKER)

    def _store_message(self, rows: list[list], count: int) -> None:
        outbox = self.outbox
        try:
            raw = wire.encode(self.publisher_id, outbox.seq + 1, outbox.base, *rows)
        except Exception:  # msgpack raises several unrelated types
            count = self._refuse_unencodable(rows)
            if not count:
                return
            raw = wire.encode(self.publisher_id, outbox.seq + 1, outbox.base, *rows)
        if count == 1 and len(raw) > sockets.DAEMON_MAXMSGSIZE:
            # ZeroMQ on the daemon's side would drop it without a trace, and this
            # publisher would resend it forever: refuse it alone.
            self.drops.count(1, "oversized", f"{len(raw):,} bytes packed")
            return
        if len(raw) > MAX_MESSAGE_BYTES and count > 1:
            half: list[list] = [[], [], [], []]
            moved = 0
            for kind in range(4):
                while rows[kind] and moved < count // 2:
                    half[kind].append(rows[kind].pop())
                    moved += 1
            self._store_message(rows, count - moved)
            self._store_message([list(reversed(r)) for r in half], moved)
            return
        dropped = outbox.add(raw, count)
        if dropped:
            self.drops.count(dropped)

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
                    self.drops.count(1, "unencodable", f"{type(exc).__name__}: {exc}")
                else:
                    kept.append(row)
            kind_rows[:] = kept
            left += len(kept)
        return left

    # -- sending ------------------------------------------------------------------------
    def _send(self) -> None:
        outbox = self.outbox
        # Nothing at or below base is sent again (a message dropped to make room included).
        self._next_send = max(self._next_send, outbox.base + 1)
        while self._next_send <= outbox.seq:
            raw = outbox.raw_for(self._next_send)
            if raw is None:  # acknowledged or given up meanwhile
                self._next_send += 1
                continue
            if not self.transport.try_send(raw):
                return
            self._next_send += 1
        outbox.rewind()

    def _replay(self, from_seq: int, quiet: bool = False) -> None:
        """Send again everything from ``from_seq``, on a fresh connection (``quiet``: the
        caller has said so already)."""
        from_seq = max(from_seq, self.outbox.base + 1)
        if from_seq > self.outbox.seq:
            return
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "publisher %d: replaying messages %d..%d",
            self.publisher_id,
            from_seq,
            self.outbox.seq,
        )
        self.transport.restart_data()
        self._next_send = from_seq
        self.outbox.rewind()
        self._ack_sent_at = None
        self._last_progress = time.monotonic()

    # -- acknowledgements ---------------------------------------------------------------
    def _ask_for_ack(self) -> None:
        """Keep one acknowledgement request outstanding while anything is unacknowledged.

        A flush makes it urgent (the daemon commits at once instead of at the end of its
        batch window); an urgent need does not wait behind an outstanding ordinary request.
        A drop count the daemon has not heard yet is a reason to ask too (for `status`).
        """
        settled = self._acked >= self.outbox.seq or self._next_send == 1
        if settled and self.drops.total == self._dropped_reported:
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
        self._ack_dropped = self.drops.total
        self.transport.request(
            wire.sync_request(
                self._ack_rid,
                self.publisher_id,
                self._next_send - 1,
                wait=ACK_TIMEOUT / 2,
                urgent=urgent,
                dropped=self._ack_dropped,
                base=self.outbox.base,
                # A spool token from each daemon instance (its key may have changed).
                token=self._token_instance is None or self._token_instance != self._instance,
            )
        )

    def _report_refusal(self, now: float) -> None:
        """A daemon that refuses this publisher's CURVE handshake never answers; say why
        (at most once a minute), since nothing else would."""
        cause = getattr(self.transport, "likely_cause", str)()
        if cause and now - self._refusal_logged_at >= 60.0:
            self._refusal_logged_at = now
            log.error(
                "publisher %d: the daemon does not answer%s; records wait (memory, then "
                "spool) until it does",
                self.publisher_id,
                cause,
            )

    def _handle_replies(self) -> None:
        for reply in self.transport.replies():
            ack = wire.Ack.parse(reply)
            if ack.rid == self._ack_rid:
                self._ack_sent_at = None
                self._dropped_reported = self._ack_dropped
            committed = ack.committed
            restarted = self._instance is not None and ack.instance != self._instance
            self._instance = ack.instance
            if ack.has_token:
                self._token_instance = ack.instance
                self.outbox.spool_token = ack.token or self.outbox.spool_token
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
        self.outbox.release_through(committed)
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
