"""MQTT with paho-mqtt: notifications to ``<topic>/alerts/<rule>`` (a sink), and the stream
of committed records to ``<topic>/<table>/<type>`` (QoS 1 both).

The stream sends the committed records in commit order and moves its position (kept in
the database, stream_log.py) only as the broker acknowledges them (PUBACK), in order: when
the broker goes away, what it had not acknowledged is sent again, in order, on a new
connection; when the daemon restarts (SIGTERM or SIGKILL), from the position on. At least
once: a restart may send again what was acknowledged after the position was last written.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from itertools import compress, repeat
from operator import eq, itemgetter
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from . import stream_log
from .records import TYPE_INDEX, as_json_array, as_json_each, created_at
from .rules import Sink
from .sinks import SinkError

log = logging.getLogger(__name__)

# Records in flight at most (taken as whole batches): published, not yet acknowledged. The
# window slides: each acknowledgement makes room for the next batch at once, so the broker
# always has something to take while records wait (a window sent whole and awaited whole
# stalled ~40 ms each time on the broker's Nagle delay behind our delayed ACK).
WINDOW = 2000
BATCH_RECORDS = 1000  # records per message at most with stream_batch
LOG_ROWS = 50  # log rows (batches) read back from the database at once
# No limit in paho: WINDOW bounds what is in flight, and paho's queue behind a limit costs
# O(limit) per PUBACK (it scans the messages in flight for the next queued one).
MAX_INFLIGHT = 0


def topic_level(name: str) -> str:
    """A name as one topic level: no separator, no wildcard."""
    return "".join("_" if c in "/+#\0" else c for c in str(name)) or "_"


class Connection:
    """One paho client, replaced by a new one after any failure (so nothing a broken
    session held is sent twice behind our back)."""

    def __init__(self, config: Sink, role: str):
        parts = urlsplit(config.url)
        self.config = config
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.address = f"{self.host}:{self.port}"  # as messages name the broker
        self.client_id = f"memorybank-{role}-{uuid.uuid4().hex[:8]}"
        self._client: mqtt.Client | None = None
        # Called with each acknowledged mid, in paho's network thread.
        self.on_ack: Callable[[int], None] | None = None

    def client(self) -> mqtt.Client:
        if self._client is not None and self._client.is_connected():
            return self._client
        self.close()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True
        )
        client.max_inflight_messages_set(MAX_INFLIGHT)
        if self.on_ack is not None:
            on_ack = self.on_ack
            client.on_publish = lambda _c, _u, mid, _rc, _p: on_ack(mid)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set()
        try:
            client.connect(self.host, self.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot connect to {self.address}: {exc}") from None
        client.loop_start()
        deadline = time.monotonic() + self.config.timeout
        while not client.is_connected():
            if time.monotonic() > deadline:
                client.loop_stop()
                client.disconnect()
                raise SinkError(f"{self.address} did not accept the connection")
            time.sleep(0.01)
        self._client = client
        return client

    def publish(self, messages: list[tuple[str, bytes]]) -> tuple[int, str | None]:
        """Publish in order with QoS 1 and wait; returns how many, from the first, the
        broker acknowledged, and the error that stopped the rest (None: all were). The
        broker fails when it acknowledges nothing for ``timeout``. (The stream does not
        wait message by message: MqttStream._send and _await.)"""
        try:
            client = self.client()
        except SinkError as exc:
            return 0, str(exc)
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for done, info in enumerate(infos):
            try:
                info.wait_for_publish(self.config.timeout)
            except (ValueError, RuntimeError) as exc:
                self.close()
                return done, f"{self.address}: {exc}"
            if not info.is_published():
                self.close()
                return done, f"{self.address} did not acknowledge in time"
        return len(infos), None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    def close(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None


class MqttSink:
    """Notifications, one QoS 1 message each, to ``<topic>/alerts/<rule>``."""

    def __init__(self, config: Sink):
        self.config = config
        self.connection = Connection(config, "alerts")

    def send(self, body: dict) -> None:
        topic = f"{self.config.topic}/alerts/{topic_level(body['rule'])}"
        _done, error = self.connection.publish([(topic, json.dumps(body, default=str).encode())])
        if error is not None:
            raise SinkError(error)

    def close(self) -> None:
        self.connection.close()


def _by_kind(
    kinds: list[str], rows: list, stamps: str | list
) -> list[tuple[str, list, str | list]]:
    """The rows per type (``kinds``: each row's), in the order the types first appear, with
    their created_at (one for all, or a list): taken in C (``compress``), and the rows as
    they are when they have one type (as a batch's mostly do)."""
    distinct = dict.fromkeys(kinds)
    if len(distinct) == 1:
        return [(kinds[0], rows, stamps)]
    out: list[tuple[str, list, str | list]] = []
    for kind in distinct:
        picked = list(map(eq, kinds, repeat(kind)))
        at = stamps if isinstance(stamps, str) else list(compress(stamps, picked))
        out.append((kind, list(compress(rows, picked)), at))
    return out


class MqttStream:
    """Every committed record of the chosen tables, in commit order, at least once, across
    broker and daemon restarts.

    Committed batches come in memory (``put``, after each COMMIT) with their ``seq`` in
    ``mb_stream_log``; what memory does not hold (the backlog of a restart, or what
    overflowed ``stream_max_pending`` while the broker was away) is read back from the
    database by that log. ``position`` is where the broker acknowledged, in order; the
    engine writes it to the database (stream_log.py), and a restart resumes from it.
    """

    def __init__(
        self, config: Sink, db, position: stream_log.Position, backlog: int = 0, top: int = 0
    ):
        self.config = config
        self.db = db  # storage.py's SqliteStorage or PostgresStorage
        self.connection = Connection(config, "stream")
        self.connection.on_ack = self._acked
        self._chunks: deque = deque()  # (seq, created_at text, [(table, rows)]) in order
        self._queued = 0  # records in _chunks
        self._spilled = backlog  # records left to the database (not in _chunks)
        self._counted = top  # the last logged seq counted in _spilled (``logged``)
        self._notified = 0  # the last seq ``logged`` told of
        # Converted, not yet acknowledged: (topic, payload); and per message the position
        # once the broker acknowledged it.
        self._window: list[tuple[str, bytes]] = []
        self._marks: list[tuple[stream_log.Position, int]] = []
        self._in_window = 0  # records in _window
        # The mids of the window's messages sent on the current connection (the first
        # len(_sent) of _window), and those the broker acknowledged (paho's thread adds).
        self._sent: list[int] = []
        self._acks: set[int] = set()
        self._news = False  # an acknowledgement or a batch came since the thread looked
        self._progress = 0.0  # when the broker last acknowledged (or the first send)
        self.cursor = position  # the next record to take
        self.position = position  # the next record the broker has not acknowledged
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.published = 0
        self.dropped = 0  # logged records gone from the database before they were sent
        self.read_back = 0  # records read back from the database (not handed in memory)
        self.failures = 0
        self.last_error: str | None = None
        self._spill_logged = 0.0
        self._db = None  # a read-only connection, opened when the database is read
        self._topics: dict[str, dict[str, str]] = {}  # table -> type -> topic
        # Called on the stream's thread at each pass of its loop (a stream process reports
        # its figures from it, so no thread of its own wakes on a timer to look); returns
        # in how many seconds it wants to be called again (a report it held back), or None.
        self.after_pass: Callable[[], float | None] | None = None
        self._recall: float | None = None  # what after_pass last returned
        self._thread = threading.Thread(
            target=self._run, name=f"memorybank-stream-{config.name}", daemon=True
        )

    def start(self) -> MqttStream:
        self._thread.start()
        return self

    @property
    def pending(self) -> int:
        return self._queued + self._spilled + self._in_window

    def put(self, seq: int, tables: dict[str, list], committed: str | None = None) -> None:
        """A committed batch's rows and its log ``seq`` (called by the writer after COMMIT,
        or in a stream process as the daemon hands them over: never blocks; ``committed``,
        their created_at, now by default). Past ``stream_max_pending`` it is left to the
        database."""
        chosen = [(t, tables[t]) for t in self.config.stream if tables.get(t)]
        count = sum(len(rows) for _t, rows in chosen)
        with self._cond:
            if self._queued + count > self.config.stream_max_pending:
                self._spilled += count
                now = time.monotonic()
                if now - self._spill_logged >= 10.0:
                    self._spill_logged = now
                    log.warning(
                        "mqtt stream %s: %d record(s) wait for the broker (more than "
                        "stream_max_pending %d); the rest is read back from the database",
                        self.config.name,
                        self.pending,
                        self.config.stream_max_pending,
                    )
                return
            self._chunks.append((seq, committed or created_at(), chosen))
            self._queued += count
            self._news = True
            self._cond.notify()

    def logged(self, seq: int, count: int) -> None:
        """Batch ``seq``, with ``count`` records of the stream's tables, was committed: read
        back from the database (how a stream in a process of its own, stream_process.py,
        is told of each commit; never blocks)."""
        with self._cond:
            if seq > self._counted:
                self._spilled += count
                self._counted = seq
            self._notified = max(self._notified, seq)
            self._news = True
            self._cond.notify()

    def _take(self, wait: bool) -> list[tuple[int, str | None, list]]:
        """The next batches from the cursor on: from memory when it holds them, else from
        the database. Every committed batch comes to memory (``put``) or is counted in
        ``_spilled`` (``logged``, the backlog, what overflowed): the database is read when
        it holds records memory does not, and after a second with nothing new all the
        same. Empty when nothing is new (after up to a second, with ``wait``)."""
        seq = self.cursor[0]
        with self._cond:
            while self._chunks and self._chunks[0][0] < seq:  # read from the database
                self._queued -= sum(len(r) for _t, r in self._chunks.popleft()[2])
            taken, records = [], 0
            while self._chunks and self._chunks[0][0] == seq and records < WINDOW:
                chunk = self._chunks.popleft()
                n = sum(len(r) for _t, r in chunk[2])
                self._queued -= n
                records += n
                taken.append(chunk)
                seq += 1
            if taken:
                return taken
            head = self._chunks[0][0] if self._chunks else None
            if head is None and not self._spilled:
                if not wait or self._stop.is_set():
                    return []
                if self._recall is not None and self._recall < 1.0:  # back for after_pass
                    self._cond.wait(self._recall)
                    return []
                if self._cond.wait(1.0):
                    return []
        batches = self._from_database(seq, head)
        if batches:
            return batches
        if head is not None:  # no batch logged before it (PostgreSQL's seq skips a
            self.cursor = (head, 0)  # rolled-back batch's): memory goes on from there
            return []
        with self._cond:
            if self._notified < seq:  # caught up with the database (nothing told since)
                self._spilled = 0
        return []

    def _from_database(self, after: int, before: int | None) -> list[tuple[int, str | None, list]]:
        if self._db is None:
            self._db = self.db.open_reader()
        batches: list[tuple[int, str | None, list]] = []
        records = 0
        for seq, ids in stream_log.read(self._db, after, before, LOG_ROWS):
            if records >= WINDOW:
                break
            chosen = []
            for table in self.config.stream:
                if not ids[table]:
                    continue
                columns = self.db.row_columns(table)
                found = stream_log.rows_by_id(self._db, columns, table, ids[table])
                self.dropped += len(ids[table]) - len(found)
                self.read_back += len(found)
                chosen.append((table, [found[i] for i in ids[table] if i in found]))
                records += len(ids[table])
            batches.append((seq, None, chosen))
        if batches:
            with self._cond:
                self._spilled = max(self._spilled - records, 0)
        return batches

    def _fill_window(self, wait: bool) -> None:
        """Convert the next batches into messages, each with the position the broker's
        acknowledgement of it (and of all before it) reaches and its count of records."""
        for seq, committed, chosen in self._take(wait):
            skip = self.cursor[1] if seq == self.cursor[0] else 0
            arrays = 0
            n = 0  # records of the batch up to this table's
            for table, rows in chosen:
                n += len(rows)
                if n <= skip:
                    continue
                rows = rows[max(skip - n + len(rows), 0) :]
                stamps: str | list
                if committed is None:  # from the database: (row, its created_at)
                    rows, stamps = [r for r, _c in rows], [c for _r, c in rows]
                else:
                    stamps = committed
                kinds = list(map(itemgetter(TYPE_INDEX[table]), rows))
                names = self._names(table, kinds)
                if not self.config.stream_batch:
                    payloads = as_json_each(table, rows, stamps)
                    self._window.extend(zip(map(names.__getitem__, kinds), payloads, strict=True))
                    taken = range(n - len(rows) + 1, n + 1)
                    self._marks.extend(zip(zip(repeat(seq), taken), repeat(1)))
                    self._in_window += len(rows)
                    continue
                # A batch's arrays group its records by topic, out of their order in the
                # batch: the position passes the batch only with its last array.
                for kind, part, at in _by_kind(kinds, rows, stamps):
                    for i in range(0, len(part), BATCH_RECORDS):
                        chunk = part[i : i + BATCH_RECORDS]
                        chunk_at = at if isinstance(at, str) else at[i : i + BATCH_RECORDS]
                        self._window.append((names[kind], as_json_array(table, chunk, chunk_at)))
                        self._marks.append(((seq, skip), len(chunk)))
                        self._in_window += len(chunk)
                        arrays += 1
            if arrays:
                self._marks[-1] = ((seq + 1, 0), self._marks[-1][1])
            self.cursor = (seq + 1, 0)
        if not self._window:
            self.position = self.cursor  # nothing unacknowledged: batches without records

    def _names(self, table: str, kinds: list[str]) -> dict[str, str]:
        """The topic of each type of ``table`` (kept: one batch after another brings the
        same few types, and a topic per record cost as much as its JSON)."""
        names = self._topics.setdefault(table, {})
        new = set(kinds).difference(names)
        if len(names) + len(new) > 10_000:  # as many types as that: keep no more
            names.clear()
            new = set(kinds)
        for kind in new:
            names[kind] = f"{self.config.topic}/{table}/{topic_level(kind)}"
        return names

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            if self.after_pass is not None:
                self._recall = self.after_pass()
            if self._in_window < WINDOW:
                try:
                    self._fill_window(wait=not self._window)
                except self.db.errors as exc:
                    self._failed(f"cannot read the stream's backlog: {exc}")
                    if self._db is not None:
                        self._db.close()
                        self._db = None
                    self._back_off(delay)
                    delay = min(delay * 2, self.config.backoff_max)
                    continue
            if not self._window:
                continue
            acked, error = self._send()
            if error is None:
                acked, error = self._await()
            if error is None:
                if acked and self.last_error is not None:
                    if self.failures:
                        log.info("mqtt stream %s: the broker takes records again", self.config.name)
                    self.last_error = None
                    delay = 1.0
                continue
            self._reconnect()
            self._failed(error)
            self._back_off(delay)
            delay = min(delay * 2, self.config.backoff_max)
        self.connection.close()
        if self._db is not None:
            self._db.close()

    def _back_off(self, seconds: float) -> None:
        """Wait ``seconds`` before trying again (or until stopped), calling ``after_pass``
        first and when it asks: the failure it just counted is reported now, not after
        the wait (up to ``backoff_max``)."""
        until = time.monotonic() + seconds
        while True:
            again = self.after_pass() if self.after_pass is not None else None
            left = until - time.monotonic()
            if left <= 0 or self._stop.wait(left if again is None else min(left, again)):
                return

    def _send(self) -> tuple[int, str | None]:
        """Publish the window's messages not yet sent on this connection (QoS 1, in order)."""
        if len(self._sent) == len(self._window):
            return 0, None
        if self._sent and not self.connection.connected:  # what it took is lost with it
            return 0, f"{self.connection.address}: the connection was lost"
        try:
            client = self.connection.client()
        except SinkError as exc:
            return 0, str(exc)
        if not self._sent:
            self._progress = time.monotonic()
        for topic, payload in self._window[len(self._sent) :]:
            info = client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return 0, f"{self.connection.address}: {mqtt.error_string(info.rc)}"
            self._sent.append(info.mid)
        return 0, None

    def _acked(self, mid: int) -> None:
        """paho's network thread: the broker acknowledged message ``mid``."""
        with self._cond:
            self._acks.add(mid)
            self._news = True
            self._cond.notify()

    def _await(self) -> tuple[int, str | None]:
        """Wait for an acknowledgement or a new batch; move the position past the messages
        acknowledged in order. An error when the broker acknowledged nothing for
        ``timeout`` (a long window is not a failure while acknowledgements keep coming)."""
        deadline = self._progress + self.config.timeout
        with self._cond:
            if not self._news and not self._stop.is_set():
                wait = max(deadline - time.monotonic(), 0.0)
                self._cond.wait(wait if self._recall is None else min(wait, self._recall))
            self._news = False
            done = 0
            while done < len(self._sent) and self._sent[done] in self._acks:
                self._acks.discard(self._sent[done])
                done += 1
        if done:
            self._acknowledged(done)
            del self._window[:done]
            del self._marks[:done]
            del self._sent[:done]
            self._progress = time.monotonic()
            if not self._window:
                self.position = self.cursor
            return done, None
        if not self._sent or time.monotonic() < deadline:
            return 0, None
        where = self.connection.address
        if not self.connection.connected:
            return 0, f"{where}: the connection was lost"
        return 0, f"{where} did not acknowledge in time"

    def _reconnect(self) -> None:
        """After a failure: a new connection resends, in order, all it had not acknowledged."""
        self.connection.close()
        with self._cond:
            self._sent.clear()
            self._acks.clear()

    def _acknowledged(self, done: int) -> None:
        """The broker acknowledged the window's first ``done`` messages, in order: the
        position and the figures move with each acknowledgement, not once the window is
        through (a daemon killed in the middle of a window resends only what follows, and
        what it counted published is what the position passed)."""
        self.position = self._marks[done - 1][0]
        count = sum(n for _p, n in self._marks[:done])
        self.published += count
        self._in_window -= count

    def _failed(self, error: str) -> None:
        self.failures += 1
        if self.last_error != error:
            log.warning(
                "mqtt stream %s: %s; %d record(s) wait, sent in order when it is back",
                self.config.name,
                error,
                self.pending,
            )
        self.last_error = error

    def stop(self, timeout: float = 2.0) -> None:
        """Give the broker ``timeout`` to take what is pending, then stop (what it has not
        acknowledged is sent after the next start)."""
        deadline = time.monotonic() + timeout
        while self.pending and self.last_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self._thread.join(timeout + self.config.timeout)
        if self.pending:
            log.info(
                "mqtt stream %s: stopping with %d record(s) the broker has not acknowledged; "
                "they are sent after the next start",
                self.config.name,
                self.pending,
            )

    def figures(self) -> dict:
        return {
            "published": self.published,
            "pending": self.pending,
            "dropped": self.dropped,
            "read_back": self.read_back,
            "failures": self.failures,
            "last_error": self.last_error,
        }
