"""The live feed: one subscription to the daemon's tail, fanned out to every browser.

The daemon publishes each committed batch's events and anomalies on its tail socket
(the one `memorybank view --follow` reads) only while someone subscribes. This process
subscribes once and copies each batch to every Server-Sent Events stream: twenty
browsers cost the daemon what one follower does.
Batches are numbered per process and the last ones kept, so a browser that reconnects
with ``Last-Event-ID`` gets what it missed, or a ``reset`` when that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .. import discovery, sockets, wire
from ..store.sql import JSON_COLUMNS

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0  # a comment line keeps proxies and the browser from timing out
PROBE_SECONDS = 1.0  # how often the daemon's presence (and endpoint) is checked
KEEP_BATCHES = 1000  # batches kept for reconnecting browsers...
KEEP_BYTES = 32 << 20  # ...within this much memory (a busy second is a few MB)
QUEUE_BATCHES = 1000  # batches a slow browser may fall behind before it is told to reset
RETRY_MS = 2000  # how soon a browser reconnects after losing the stream
MAX_ROWS = 25  # events (and anomalies) of one batch sent to a page; the rest are counted


@dataclass
class StreamFilter:
    """The viewer's --follow filters: events by type and component, anomalies by type
    and severity."""

    type: str | None = None
    component: str | None = None
    severity: str | None = None

    @property
    def empty(self) -> bool:
        return self.type is None and self.component is None and self.severity is None

    def apply(self, events: list[dict], anomalies: list[dict]) -> tuple[list, list]:
        return (
            [
                e
                for e in events
                if self.type in (None, e["event_type"]) and self.component in (None, e["component"])
            ],
            [
                a
                for a in anomalies
                if self.type in (None, a["anomaly_type"]) and self.severity in (None, a["severity"])
            ],
        )


@dataclass(eq=False)
class Subscriber:
    wanted: StreamFilter
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_BATCHES))
    lagged: bool = False


def _shown(row: dict) -> dict:
    """A tail row as the API returns it: JSON columns decoded (and an anomaly's deviation)."""
    row = dict(row)  # the batch's rows are shared by every stream
    for key in JSON_COLUMNS:
        if isinstance(row.get(key), str):
            with contextlib.suppress(ValueError):
                row[key] = json.loads(row[key])
    if "expected_value" in row:
        current, expected = row["current_value"], row["expected_value"]
        row["deviation"] = None if current is None or expected is None else abs(current - expected)
    return row


def _frame_data(events: list[dict], anomalies: list[dict]) -> str:
    """A ``records`` event's data: the newest MAX_ROWS of each kind, and how many more
    there were (a page keeps a few hundred lines; the database keeps them all)."""
    shown_events, shown_anomalies = events[-MAX_ROWS:], anomalies[-MAX_ROWS:]
    return json.dumps(
        {
            "events": [_shown(e) for e in shown_events],
            "anomalies": [_shown(a) for a in shown_anomalies],
            "skipped": {
                "events": len(events) - len(shown_events),
                "anomalies": len(anomalies) - len(shown_anomalies),
            },
        },
        default=str,
    )


class Batch:
    """One committed batch from the tail, numbered. Read only when a stream takes it (with
    nobody watching, a batch costs its receipt), and its JSON made once for every stream
    that takes it unfiltered."""

    def __init__(self, seq: int, raw: bytes):
        self.seq = seq
        self.raw = raw  # kept as received: the smallest form of the batch
        self._unfiltered: str | None = None

    def data(self, wanted: StreamFilter) -> str | None:
        """The event's data for a stream with these filters; None when nothing is left."""
        if wanted.empty:
            if self._unfiltered is None:
                self._unfiltered = _frame_data(*wire.decode_tail(self.raw))
            return self._unfiltered
        events, anomalies = wanted.apply(*wire.decode_tail(self.raw))
        return _frame_data(events, anomalies) if events or anomalies else None


class LiveFeed:
    """The tail subscription and its fan-out (runs as one task in the server's loop)."""

    def __init__(self, location: str, summarize=None):
        self.key = discovery.location_key(location)
        self.summarize = summarize  # the reader's summary (blocking: run in a thread)
        self.summary: str | None = None  # its latest JSON, pushed to every stream
        self._summary_due = False
        self._summary_task: asyncio.Task | None = None
        self.name = discovery.display_name(location)
        self.boot = secrets.token_hex(4)  # a reconnect to another process cannot replay
        self.seq = 0
        self.kept: deque[Batch] = deque()
        self.kept_bytes = 0
        self.subscribers: set[Subscriber] = set()
        self.live = False
        self.closing = False
        self._wake = asyncio.Event()

    # -- what the streams see ---------------------------------------------------------
    def status(self) -> dict:
        if self.live:
            return {"live": True, "message": f"live: following the daemon of {self.name}"}
        return {"live": False, "message": "live feed unavailable: no daemon serves this database"}

    def subscribe(self, wanted: StreamFilter) -> Subscriber:
        subscriber = Subscriber(wanted)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def close(self) -> None:
        """Server shutdown: end every stream so the server need not wait for them."""
        self.closing = True
        for subscriber in self.subscribers:
            _offer(subscriber, None)
        self._wake.set()

    def missed_since(self, last_event_id: str | None) -> list[Batch] | None:
        """Batches after ``last_event_id`` still kept; None when they cannot be told."""
        if not last_event_id:
            return []
        boot, _, seq = last_event_id.partition("-")
        if boot != self.boot or not seq.isdigit() or int(seq) > self.seq:
            return None
        after = int(seq)
        oldest = self.kept[0].seq if self.kept else self.seq + 1
        if after + 1 < oldest and after < self.seq:
            return None  # some of what it missed is no longer kept
        return [batch for batch in self.kept if batch.seq > after]

    def event_id(self, seq: int) -> str:
        return f"{self.boot}-{seq}"

    # -- the subscription ---------------------------------------------------------------
    def _publish(self, raw: bytes) -> None:
        batch = Batch(self.seq + 1, raw)
        self.seq = batch.seq
        self.kept.append(batch)
        self.kept_bytes += len(raw)
        while self.kept_bytes > KEEP_BYTES or len(self.kept) > KEEP_BATCHES:
            self.kept_bytes -= len(self.kept.popleft().raw)
        self._summary_due = True
        for subscriber in self.subscribers:
            _offer(subscriber, batch)

    def _start_summary(self) -> None:
        """After commits, at most once a PROBE_SECONDS: one summary query for every page
        (the cards follow the data without each browser asking). It runs beside the tail,
        one at a time: a slow one (a busy database) delays the cards, never the records."""
        if not (self._summary_due and self.subscribers and self.summarize):
            return
        if self._summary_task is not None and not self._summary_task.done():
            return  # the one running will be followed by the next, still due
        self._summary_due = False
        self._summary_task = asyncio.create_task(self._push_summary())

    async def _push_summary(self) -> None:
        try:
            summary = await asyncio.to_thread(self.summarize)
        except Exception as exc:  # the next commit tries again
            log.warning("summary for the live pages failed: %s", exc)
            return
        self.summary = json.dumps(summary, default=str)
        for subscriber in self.subscribers:
            _offer(subscriber, "summary")

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            log.info("%s", self.status()["message"])
            for subscriber in self.subscribers:
                _offer(subscriber, "status")

    def _tail_endpoint(self) -> str:
        info = discovery.read_daemon_info(self.key) or {}
        return info.get("tail_endpoint") or sockets.tail_endpoint_for(
            discovery.find_endpoints(self.key).data
        )

    async def run(self) -> None:
        """Follow the daemon whenever one serves the database; notice it come and go.

        The subscription stays open while the daemon lives, browsers or not, so a page that
        loads its backlog and then follows misses nothing committed in between. The feed
        is "live" once the subscription's handshake with the daemon's tail succeeded: from
        then on every commit reaches it."""
        ctx = zmq.asyncio.Context()
        follower: _Follower | None = None
        loop = asyncio.get_running_loop()
        try:
            while not self.closing:
                running = discovery.daemon_running(self.key)
                if running and (follower is None or self._tail_endpoint() != follower.endpoint):
                    if follower is not None:
                        follower.close()  # the daemon came back on another endpoint
                    follower = _Follower(ctx, self._tail_endpoint())
                elif not running and follower is not None:
                    follower.close()
                    follower = None
                self._set_live(follower is not None and follower.connected)
                if follower is None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), PROBE_SECONDS)
                    continue
                self._start_summary()
                until = loop.time() + PROBE_SECONDS
                while not self.closing and loop.time() < until:
                    timeout_ms = int(max(until - loop.time(), 0) * 1000) + 1
                    for raw in await follower.receive(timeout_ms):
                        self._publish(raw)
                    if follower.connected != self.live:
                        break  # say so at once
        finally:
            if self._summary_task is not None:
                self._summary_task.cancel()  # its thread finishes on its own; nobody waits
            if follower is not None:
                follower.close()
            ctx.term()


class _Follower:
    """A SUB socket on the daemon's tail, with a monitor telling when it is connected."""

    WATCHED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str):
        self.endpoint = endpoint
        # A socket takes its context's kind: these are asyncio sockets (awaitable receives).
        self.sub = cast(zmq.asyncio.Socket, sockets.follower_sub(ctx, endpoint, connect=False))
        self.monitor = self.sub.get_monitor_socket(self.WATCHED)
        self.sub.connect(endpoint)
        self.connected = False
        self.poller = zmq.asyncio.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    async def receive(self, timeout_ms: int) -> list[bytes]:
        """Tail messages that arrived within ``timeout_ms`` (connection news applied)."""
        ready = dict(await self.poller.poll(timeout_ms))
        if self.monitor in ready:
            while True:
                try:
                    event = parse_monitor_message(await self.monitor.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                self.connected = event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
        messages = []
        if self.sub in ready:
            while True:
                try:
                    messages.append(await self.sub.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        return messages

    def close(self) -> None:
        self.sub.disable_monitor()
        self.monitor.close(0)
        self.sub.close(0)


def _offer(subscriber: Subscriber, item) -> None:
    """Queue an item for one stream; a stream that fell too far behind is reset."""
    try:
        subscriber.queue.put_nowait(item)
    except asyncio.QueueFull:
        subscriber.lagged = True


def sse(event: str, data: str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


async def stream(
    feed: LiveFeed, wanted: StreamFilter, last_event_id: str | None
) -> AsyncIterator[str]:
    """One browser's Server-Sent Events: status, then each committed batch (``records``),
    heartbeats between; ``reset`` when batches were lost to it (it reloads from the API)."""
    subscriber = feed.subscribe(wanted)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield sse("status", json.dumps(feed.status()))
        missed = feed.missed_since(last_event_id)
        if missed is None:
            yield sse("reset", "{}", feed.event_id(feed.seq))
        else:
            for frame in (_records(feed, wanted, batch) for batch in missed):
                if frame:
                    yield frame
        while True:
            try:
                item = await asyncio.wait_for(subscriber.queue.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is None:
                return
            if item == "status":
                yield sse("status", json.dumps(feed.status()))
            elif item == "summary":
                if feed.summary is not None:  # queued only once there is one
                    yield sse("summary", feed.summary)
            elif subscriber.lagged and subscriber.queue.empty():
                subscriber.lagged = False
                yield sse("reset", "{}", feed.event_id(item.seq))
            elif frame := _records(feed, wanted, item):
                yield frame
    finally:
        feed.unsubscribe(subscriber)


def _records(feed: LiveFeed, wanted: StreamFilter, batch: Batch) -> str:
    try:
        data = batch.data(wanted)
    except Exception as exc:  # a message we cannot read is skipped, not fatal
        log.warning("unreadable tail message %d skipped: %s", batch.seq, exc)
        return ""
    return "" if data is None else sse("records", data, feed.event_id(batch.seq))
