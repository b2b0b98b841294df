"""The delivery worker: one thread per sink, taking the sink's pending outbox rows in order.

It reads the outbox on a read-only connection of its own (committed rows only; the
storage's, storage.py) and never writes the database: each outcome goes back to the
engine, which writes it on the daemon's connection (one writer). When the database cannot
be read (a PostgreSQL server restarting), it waits and opens a new connection. A
notification that fails is retried, backing off from 1 s to the sink's ``backoff_max``,
before any later one is sent: a sink receives in order.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time

from . import outbox
from .rules import Sink
from .sinks import SinkError, make_sink

log = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0
IDLE_POLL_SECONDS = 1.0


class DeliveryWorker:
    def __init__(self, config: Sink, db, results: queue.Queue):
        self.config = config
        self.db = db  # storage.py's SqliteStorage or PostgresStorage
        self.results = results
        self.wake = threading.Event()
        self._stop = threading.Event()
        self.failing = False
        self.last_error: str | None = None  # the latest failure, kept after recovery
        self.last_error_at: float | None = None
        self.failures = 0
        self.delivered = 0
        self._thread = threading.Thread(
            target=self._run, name=f"memorybank-sink-{config.name}", daemon=True
        )

    def start(self) -> DeliveryWorker:
        self._thread.start()
        return self

    def request_stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop, waiting up to ``timeout`` for a send in progress to end."""
        self.request_stop()
        self._thread.join(timeout)

    def _run(self) -> None:
        sink = None
        conn = None
        after = 0
        try:
            while not self._stop.is_set():
                self.wake.clear()
                try:
                    if conn is None:
                        conn = self.db.open_reader()
                    rows = outbox.next_pending(conn, self.config.name, after)
                except self.db.errors as exc:
                    log.warning("sink %s: cannot read the outbox now (%s)", self.config.name, exc)
                    if conn is not None:
                        conn.close()
                        conn = None
                    self._stop.wait(IDLE_POLL_SECONDS)
                    continue
                if not rows:
                    self.wake.wait(IDLE_POLL_SECONDS)
                    continue
                for seq, text, attempts in rows:
                    if sink is None:
                        sink = self._open_sink()
                        if sink is None:
                            break
                    if not self._deliver(sink, seq, json.loads(text), attempts):
                        break  # stopping
                    after = seq
        finally:
            if conn is not None:
                conn.close()
            if sink is not None:
                sink.close()

    def _open_sink(self):
        delay = min(FIRST_BACKOFF, self.config.backoff_max)
        while not self._stop.is_set():
            try:
                return make_sink(self.config)
            except (SinkError, OSError) as exc:
                self._failed(str(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, self.config.backoff_max)
        return None

    def _deliver(self, sink, seq: int, body: dict, attempts: int) -> bool:
        """Send one notification until it is taken; False when stopped first."""
        delay = min(FIRST_BACKOFF, self.config.backoff_max)
        while not self._stop.is_set():
            attempts += 1
            try:
                sink.send(body)
            except Exception as exc:  # a sink's failure never stops the worker
                error = str(exc) or type(exc).__name__
                self._failed(error)
                self.results.put((self.config.name, seq, attempts, error, time.time()))
                self._stop.wait(delay)
                delay = min(delay * 2, self.config.backoff_max)
                continue
            if self.failing:
                log.info("sink %s delivers again", self.config.name)
                self.failing = False
            self.delivered += 1
            self.results.put((self.config.name, seq, attempts, None, time.time()))
            return True
        return False

    def _failed(self, error: str) -> None:
        if not self.failing or self.last_error != error:
            log.warning("sink %s: %s; retrying with backoff", self.config.name, error)
        self.failures += 1
        self.failing = True
        self.last_error, self.last_error_at = error, time.time()
