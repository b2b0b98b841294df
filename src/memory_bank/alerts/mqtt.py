"""MQTT with paho-mqtt: notifications to ``<topic>/alerts/<rule>`` (a sink), and the stream
of committed records to ``<topic>/<table>/<type>`` (QoS 1 both).

The stream keeps the committed records in memory, in commit order, and forgets them only
once the broker acknowledged them (PUBACK): when the broker goes away, what it had not
acknowledged is sent again, in order, on a new connection (at least once). It is bounded
(``stream_max_pending`` records; beyond it the newest are dropped, counted and logged) and
lives in memory: a daemon restart loses what the broker had not acknowledged (logged).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from .records import TYPE_INDEX, as_record, created_at
from .rules import Sink
from .sinks import SinkError

log = logging.getLogger(__name__)

WINDOW = 2000  # records published before their acknowledgements are awaited
MAX_INFLIGHT = 1000


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
        self.client_id = f"memorybank-{role}-{uuid.uuid4().hex[:8]}"
        self._client: mqtt.Client | None = None

    def _connected(self) -> mqtt.Client:
        if self._client is not None and self._client.is_connected():
            return self._client
        self.close()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True
        )
        client.max_inflight_messages_set(MAX_INFLIGHT)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set()
        try:
            client.connect(self.host, self.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        client.loop_start()
        deadline = time.monotonic() + self.config.timeout
        while not client.is_connected():
            if time.monotonic() > deadline:
                client.loop_stop()
                client.disconnect()
                raise SinkError(f"{self.host}:{self.port} did not accept the connection")
            time.sleep(0.01)
        self._client = client
        return client

    def publish(self, messages: list[tuple[str, bytes]]) -> tuple[int, str | None]:
        """Publish in order with QoS 1; returns how many, from the first, the broker
        acknowledged, and the error that stopped the rest (None: all were)."""
        try:
            client = self._connected()
        except SinkError as exc:
            return 0, str(exc)
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        deadline = time.monotonic() + self.config.timeout
        for done, info in enumerate(infos):
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
            except (ValueError, RuntimeError) as exc:
                self.close()
                return done, f"{self.host}:{self.port}: {exc}"
            if not info.is_published():
                self.close()
                return done, f"{self.host}:{self.port} did not acknowledge in time"
        return len(infos), None

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


class MqttStream:
    """Every committed record of the chosen tables, in commit order, at least once."""

    def __init__(self, config: Sink):
        self.config = config
        self.connection = Connection(config, "stream")
        self._chunks: deque = deque()  # (created_at text, [(table, rows)]) in commit order
        self._queued = 0  # records in _chunks
        self._window: list[tuple[str, bytes]] = []  # converted, not yet acknowledged
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.published = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None
        self._dropped_logged = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"memorybank-stream-{config.name}", daemon=True
        )

    def start(self) -> MqttStream:
        self._thread.start()
        return self

    @property
    def pending(self) -> int:
        return self._queued + len(self._window)

    def put(self, tables: dict[str, list]) -> None:
        """A committed batch's rows (called by the writer after COMMIT: never blocks)."""
        chosen = [(t, tables[t]) for t in self.config.stream if tables.get(t)]
        count = sum(len(rows) for _t, rows in chosen)
        if not count:
            return
        with self._cond:
            if self.pending + count > self.config.stream_max_pending:
                self.dropped += count
                now = time.monotonic()
                if now - self._dropped_logged >= 10.0:
                    self._dropped_logged = now
                    log.error(
                        "mqtt stream %s: %d record(s) wait for the broker (stream_max_pending "
                        "%d); dropped the newest, %d so far",
                        self.config.name,
                        self.pending,
                        self.config.stream_max_pending,
                        self.dropped,
                    )
                return
            self._chunks.append((created_at(), chosen))
            self._queued += count
            self._cond.notify()

    def _fill_window(self) -> None:
        with self._cond:
            while not self._chunks and not self._stop.is_set():
                self._cond.wait(1.0)
            chunks: list[tuple[str, list[tuple[str, list]]]] = []
            while self._chunks and sum(len(r) for _c, ch in chunks for _t, r in ch) < WINDOW:
                chunks.append(self._chunks.popleft())
        topic = self.config.topic
        for committed, chosen in chunks:
            for table, rows in chosen:
                t = TYPE_INDEX[table]
                for row in rows:
                    payload = json.dumps(as_record(table, row, committed), default=str)
                    self._window.append(
                        (f"{topic}/{table}/{topic_level(row[t])}", payload.encode())
                    )
        with self._cond:
            self._queued -= sum(len(r) for _c, ch in chunks for _t, r in ch)

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            if not self._window:
                self._fill_window()
                continue
            done, error = self.connection.publish(self._window)
            del self._window[:done]
            self.published += done
            if error is None:
                if self.last_error is not None and self.failures:
                    log.info("mqtt stream %s: the broker takes records again", self.config.name)
                delay = 1.0
                self.last_error = None
                continue
            self.failures += 1
            if self.last_error != error:
                log.warning(
                    "mqtt stream %s: %s; %d record(s) wait, resent in order when it is back",
                    self.config.name,
                    error,
                    self.pending,
                )
            self.last_error = error
            self._stop.wait(delay)
            delay = min(delay * 2, self.config.backoff_max)
        self.connection.close()

    def stop(self, timeout: float = 2.0) -> None:
        """Give the broker ``timeout`` to take what is pending, then stop."""
        deadline = time.monotonic() + timeout
        while self.pending and self.last_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self._thread.join(timeout + self.config.timeout)
        if self.pending:
            log.warning(
                "mqtt stream %s: stopping with %d record(s) the broker has not acknowledged; "
                "they are in the database but not streamed",
                self.config.name,
                self.pending,
            )

    def figures(self) -> dict:
        return {
            "published": self.published,
            "pending": self.pending,
            "dropped": self.dropped,
            "failures": self.failures,
            "last_error": self.last_error,
        }
