"""The live feed: one subscription to the daemon's tail, fanned out to every browser.

The daemon publishes each committed batch's events and anomalies on its tail socket
(the one `memorybank view --follow` reads) only while someone subscribes. This process
subscribes once and hands each batch to every Server-Sent Events stream: twenty
browsers cost the daemon what one follower does.
Batches are numbered per process and the last ones kept. A stream is a place in them:
woken with every other stream by one event (at most every WAKE_SECONDS), it takes what
follows its place, each batch as the message its filters make (made once per batch for
all streams with those filters), in one write. A browser that reconnects with
``Last-Event-ID`` resumes from there; one whose place is no longer kept (it fell behind,
or was away too long) gets a ``reset``. The alerts' notifications, read from the daemon's
outbox (alerts.py), take their places in the same numbering, so a reconnect resumes them
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import islice
from typing import cast

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .. import discovery, sockets, wire
from ..store.sql import JSON_COLUMNS
from ..wire import AnomalyRow, EventRow
from .alerts import AlertFollower

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0  # a comment line keeps proxies and the browser from timing out
PROBE_SECONDS = 1.0  # how often the daemon's presence (and endpoint) is checked
KEEP_BATCHES = 1000  # batches kept for reconnecting and lagging browsers...
KEEP_BYTES = 32 << 20  # ...within this much memory (a busy second is a few MB)
SEND_BATCHES = 64  # batches a stream behind others is sent in one write
# Streams are woken for batches at most this often: at high rates each write carries the
# few batches committed meanwhile (a page draws ten times a second), where one write a
# batch would cost each stream a send, and its browser a wake-up, per commit.
WAKE_SECONDS = 0.1
RETRY_MS = 2000  # how soon a browser reconnects after losing the stream
MAX_ROWS = 25  # events (and anomalies) of one batch sent to a page; the rest are counted
ALERT_POLL_SECONDS = 0.2  # how often the outbox is read for new notifications while
ALERT_IDLE_SECONDS = 1.0  # ...someone follows the stream, and while nobody does
# The field of an alert's triggering record that the stream's ``type`` filter reads.
ALERT_TYPE_FIELD = {"events": "event_type", "anomalies": "anomaly_type", "metrics": "metric_name"}


@dataclass(frozen=True)
class StreamFilter:
    """The viewer's --follow filters: events by type and component, anomalies by type
    and severity. Equal filters share their messages."""

    type: str | None = None
    component: str | None = None
    severity: str | None = None

    @property
    def empty(self) -> bool:
        return self.type is None and self.component is None and self.severity is None

    def apply(self, events: list[list], anomalies: list[list]) -> tuple[list, list]:
        """The tail's rows (lists in column order) these filters let through."""
        kind, component, severity = self.type, self.component, self.severity
        return (
            [
                e
                for e in events
                if kind in (None, e[EventRow.EVENT_TYPE])
                and component in (None, e[EventRow.COMPONENT])
            ],
            [
                a
                for a in anomalies
                if kind in (None, a[AnomalyRow.ANOMALY_TYPE])
                and severity in (None, a[AnomalyRow.SEVERITY])
            ],
        )

    def admits(self, alert: dict) -> bool:
        """Whether a notification passes: each filter must hold for what caused it, as
        Alertmanager's matchers need the label (an alert without that field is left out):
        ``type`` is its record's event type, anomaly type or metric name, ``component``
        its event's component, ``severity`` its anomaly's severity."""
        record = alert.get("record") or {}
        return (
            self.type in (None, record.get(ALERT_TYPE_FIELD.get(alert.get("table") or "", "")))
            and self.component in (None, record.get("component"))
            and self.severity in (None, alert.get("severity"))
        )


@dataclass(eq=False)
class Subscriber:
    """One stream's place: the last batch it was given, the status and summary it has
    seen, the heartbeat it has had."""

    wanted: StreamFilter
    seq: int
    status: int
    summary: int
    beat: int


def _shown(kind: str, row: list) -> dict:
    """A tail row as the API returns it: JSON columns decoded (and an anomaly's deviation)."""
    shown = wire.row_dict(kind, row)
    for key in JSON_COLUMNS:
        if isinstance(shown.get(key), str):
            with contextlib.suppress(ValueError):
                shown[key] = json.loads(shown[key])
    if kind == "anomalies":
        current, expected = shown["current_value"], shown["expected_value"]
        shown["deviation"] = (
            None if current is None or expected is None else abs(current - expected)
        )
    return shown


def _frame_data(
    events: list[list], event_count: int, anomalies: list[list], anomaly_count: int
) -> str:
    """A ``records`` event's data: the newest MAX_ROWS of each kind, and how many more
    there were (a page keeps a few hundred lines; the database keeps them all)."""
    events, anomalies = events[-MAX_ROWS:], anomalies[-MAX_ROWS:]
    return json.dumps(
        {
            "events": [_shown("events", e) for e in events],
            "anomalies": [_shown("anomalies", a) for a in anomalies],
            "skipped": {
                "events": event_count - len(events),
                "anomalies": anomaly_count - len(anomalies),
            },
        },
        default=str,
    )


class Batch:
    """One committed batch from the tail, numbered, kept as received (its smallest form:
    with nobody watching, a batch costs its receipt); or the notifications one look at
    the outbox found (``alerts``: each with its JSON). ``frames`` holds the message made
    from it for each filter that asked, shared by every stream with that filter."""

    __slots__ = ("seq", "raw", "alerts", "frames", "size")

    def __init__(self, seq: int, raw: bytes, alerts: list[tuple[dict, str]] | None = None):
        self.seq = seq
        self.raw = raw
        self.alerts = alerts
        self.frames: dict[StreamFilter, bytes] = {}
        # with its frames: what keeping it costs
        self.size = len(raw) + sum(len(text) for _alert, text in alerts or ())


class LiveFeed:
    """The tail subscription and its fan-out (runs as one task in the server's loop)."""

    def __init__(self, location: str, summarize=None, alerts: AlertFollower | None = None):
        self.key = discovery.location_key(location)
        self.summarize = summarize  # the reader's summary (blocking: run in a thread)
        self.alerts = alerts  # the outbox's notifications (blocking: polled in a thread)
        self.summary: bytes | None = None  # its latest ``summary`` event, sent to every stream
        self.summary_version = 0
        self._summary_due = False
        self._summary_task: asyncio.Task | None = None
        self.name = discovery.display_name(location)
        self.boot = secrets.token_hex(4)  # a reconnect to another process cannot replay
        self.seq = 0
        self.kept: deque[Batch] = deque()
        self.kept_bytes = 0
        self.subscribers: set[Subscriber] = set()
        self.live = False
        self.status_version = 0
        self.beats = 0
        self.closing = False
        self._wake = asyncio.Event()  # the follower: a stop, or a probe due
        self._changed = asyncio.Event()  # every stream: something new to send
        self._woken = 0.0  # when the streams were last woken (time.monotonic())
        self._wake_later: asyncio.TimerHandle | None = None
        self._unpacked: tuple[Batch, tuple[list, list]] | None = None

    # -- what the streams see ---------------------------------------------------------
    def status(self) -> dict:
        if self.live:
            return {"live": True, "message": f"live: following the daemon of {self.name}"}
        return {"live": False, "message": "live feed unavailable: no daemon serves this database"}

    def subscribe(self, wanted: StreamFilter, after: int | None = None) -> Subscriber:
        """A stream placed after batch ``after`` (the newest when None), with the current
        status (sent by the stream itself): it is sent what follows."""
        subscriber = Subscriber(
            wanted,
            self.seq if after is None else after,
            self.status_version,
            self.summary_version,
            self.beats,
        )
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def close(self) -> None:
        """Server shutdown: end every stream so the server need not wait for them."""
        self.closing = True
        self._wake.set()
        self._notify()

    def resume_after(self, last_event_id: str | None) -> int | None:
        """The batch a browser reconnecting with ``last_event_id`` saw last (the newest
        when it gives none); None when that cannot be told (another process's id). Whether
        what followed is still kept is the stream's next look (``due``)."""
        if not last_event_id:
            return self.seq
        boot, _, seq = last_event_id.partition("-")
        if boot != self.boot or not seq.isdigit() or int(seq) > self.seq:
            return None
        return int(seq)

    def event_id(self, seq: int) -> str:
        return f"{self.boot}-{seq}"

    async def changed(self) -> None:
        """Until there is something new: a batch, status, summary, heartbeat or the end."""
        await self._changed.wait()

    def due(self, subscriber: Subscriber) -> bytes:
        """Everything new for this stream, as one write (empty when there is nothing):
        status, then the batches after its place (or ``reset`` when they are no longer
        kept), then the summary; a heartbeat when there is nothing else."""
        parts = []
        if subscriber.status != self.status_version:
            subscriber.status = self.status_version
            parts.append(sse("status", json.dumps(self.status())).encode())
        if subscriber.seq < self.seq:
            oldest = self.kept[0].seq if self.kept else self.seq + 1
            if subscriber.seq + 1 < oldest:
                subscriber.seq = self.seq
                parts.append(sse("reset", "{}", self.event_id(self.seq)).encode())
            else:
                start = subscriber.seq + 1 - oldest
                for batch in islice(self.kept, start, start + SEND_BATCHES):
                    parts.append(self._frame(batch, subscriber.wanted))
                    subscriber.seq = batch.seq
        if subscriber.summary != self.summary_version:
            subscriber.summary = self.summary_version
            if self.summary is not None:
                parts.append(self.summary)
        if subscriber.beat != self.beats:
            subscriber.beat = self.beats
            if not any(parts):
                parts.append(b": keep-alive\n\n")
        return b"".join(parts)

    def _frame(self, batch: Batch, wanted: StreamFilter) -> bytes:
        """The ``records`` message of ``batch`` (its ``alert`` messages, for notifications)
        for streams with these filters (empty when nothing passes them), made on first
        need and kept with the batch."""
        frame = batch.frames.get(wanted)
        if frame is None and batch.alerts is not None:
            event_id = self.event_id(batch.seq)
            frame = "".join(
                sse("alert", text, event_id) for alert, text in batch.alerts if wanted.admits(alert)
            ).encode()
            self._keep_frame(batch, wanted, frame)
        elif frame is None:
            frame = b""
            try:
                if wanted.empty:
                    events, event_count, anomalies, anomaly_count = wire.tail_newest(
                        batch.raw, MAX_ROWS
                    )
                else:
                    events, anomalies = wanted.apply(*self._rows(batch))
                    event_count, anomaly_count = len(events), len(anomalies)
                if events or anomalies:
                    data = _frame_data(events, event_count, anomalies, anomaly_count)
                    frame = sse("records", data, self.event_id(batch.seq)).encode()
            except Exception as exc:  # a message we cannot read is skipped, not fatal
                log.warning("unreadable tail message %d skipped: %s", batch.seq, exc)
            self._keep_frame(batch, wanted, frame)
        return frame

    def _keep_frame(self, batch: Batch, wanted: StreamFilter, frame: bytes) -> None:
        batch.frames[wanted] = frame
        batch.size += len(frame)
        self.kept_bytes += len(frame)

    def _rows(self, batch: Batch) -> tuple[list, list]:
        """Every row of the batch, for filtering: unpacked once for all the filters that
        look at it (the newest batch only is kept unpacked)."""
        if self._unpacked is None or self._unpacked[0] is not batch:
            self._unpacked = (batch, wire.tail_rows(batch.raw))
        return self._unpacked[1]

    def _notify(self) -> None:
        """Wake every stream (each then takes what is due to it)."""
        if self._wake_later is not None:
            self._wake_later.cancel()
            self._wake_later = None
        self._woken = time.monotonic()
        self._changed.set()
        self._changed.clear()

    def _notify_soon(self) -> None:
        """Wake every stream now, or WAKE_SECONDS after the last time (once, whatever
        commits meanwhile)."""
        if self._wake_later is not None:
            return  # already due
        delay = self._woken + WAKE_SECONDS - time.monotonic()
        if delay <= 0:
            self._notify()
        else:
            self._wake_later = asyncio.get_running_loop().call_later(delay, self._notify)

    # -- the subscription ---------------------------------------------------------------
    def _publish(self, raw: bytes, alerts: list[dict] | None = None) -> None:
        """Keep a tail message (or the notifications of a look at the outbox, ``alerts``)
        as the next batch, and wake the streams for it."""
        shown = None if alerts is None else [(a, json.dumps(a, default=str)) for a in alerts]
        batch = Batch(self.seq + 1, raw, shown)
        self.seq = batch.seq
        self.kept.append(batch)
        self.kept_bytes += batch.size
        while self.kept_bytes > KEEP_BYTES or len(self.kept) > KEEP_BATCHES:
            self.kept_bytes -= self.kept.popleft().size
        if alerts is None:
            self._summary_due = True
        if self.subscribers:
            self._notify_soon()

    def place_alerts(self) -> None:
        """Before the first stream: the notifications already written are not news
        (blocking; the page reads the firing ones from the API)."""
        if self.alerts is not None:
            try:
                self.alerts.poll()
            except Exception as exc:  # the follower's first poll places it instead
                log.warning("alerts for the live pages: cannot read the outbox yet: %s", exc)

    def _follow_alerts(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        """(A thread of its own.) Read the outbox for new notifications every
        ALERT_POLL_SECONDS while someone follows (ALERT_IDLE_SECONDS while nobody does: the
        position stays current), and hand the loop what a read found. A read finding
        nothing (most) costs no trip through the loop: an indexed read, 12 us on SQLite."""
        assert self.alerts is not None
        failing = False
        while not stop.wait(ALERT_POLL_SECONDS if self.subscribers else ALERT_IDLE_SECONDS):
            try:
                alerts = self.alerts.poll()
            except Exception as exc:  # the database is away: the next poll tries again
                if not failing:
                    log.warning("alerts for the live pages: cannot read the outbox: %s", exc)
                failing = True
                continue
            failing = False
            if alerts:
                with contextlib.suppress(RuntimeError):  # the loop closed: the server stops
                    loop.call_soon_threadsafe(self._publish, b"", alerts)

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
        self.summary = sse("summary", json.dumps(summary, default=str)).encode()
        self.summary_version += 1
        self._notify()

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            log.info("%s", self.status()["message"])
            self.status_version += 1
            self._notify()

    async def _beat(self) -> None:
        """A heartbeat for every stream each HEARTBEAT_SECONDS (sent by those with
        nothing else to send)."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            self.beats += 1
            self._notify()

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
        heartbeat = asyncio.create_task(self._beat())
        stop_alerts = threading.Event()
        if self.alerts is not None:
            threading.Thread(
                target=self._follow_alerts, args=(loop, stop_alerts), name="alerts", daemon=True
            ).start()
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
            heartbeat.cancel()
            stop_alerts.set()
            if self._wake_later is not None:
                self._wake_later.cancel()
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


def sse(event: str, data: str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


async def stream(
    feed: LiveFeed, wanted: StreamFilter, last_event_id: str | None
) -> AsyncIterator[bytes]:
    """One browser's Server-Sent Events: status, then each committed batch (``records``)
    and each notification (``alert``), heartbeats between; ``reset`` when batches were
    lost to it (it reloads from the API)."""
    after = feed.resume_after(last_event_id)
    subscriber = feed.subscribe(wanted, after)
    try:
        head = f"retry: {RETRY_MS}\n\n" + sse("status", json.dumps(feed.status()))
        if after is None:  # what it saw cannot be told: it reloads from the API
            head += sse("reset", "{}", feed.event_id(feed.seq))
        yield head.encode()
        while not feed.closing:
            chunk = feed.due(subscriber)
            if chunk:
                yield chunk
            else:
                await feed.changed()
    finally:
        feed.unsubscribe(subscriber)
