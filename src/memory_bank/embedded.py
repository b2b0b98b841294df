"""The writer in a thread of this process: ``MemoryBank(db, embedded=True)``.

The same Writer as the daemon's, fed from an in-process queue instead of ZeroMQ, and
holding the same one-writer lock, so a daemon cannot start on the database meanwhile.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

from . import discovery
from .store.sqlite import SqliteStore
from .writer import Writer

log = logging.getLogger(__name__)

_STOP = object()


class EmbeddedWriter:
    """Runs a Writer in a background thread and is the Publisher's transport."""

    def __init__(self, db_path: Path, batch_rows: int = 4000, batch_seconds: float = 0.05):
        self.db_path = db_path
        self._lock = discovery.WriterLock(db_path)
        self._lock.acquire({"pid": os.getpid(), "embedded": True, "started": time.time()})
        try:
            store = SqliteStore(db_path)
            discovery.reserve_id_blocks(db_path, store.first_free_id_block())
        except BaseException:
            self._lock.release()
            raise
        self.writer = Writer(store, batch_rows, batch_seconds)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="memorybank-writer", daemon=True)
        self._thread.start()

    # -- transport interface (used by Publisher's sender thread and flush) ------------------
    def send(self, publisher_id: int, seq: int, rows: list, give_up_at: float | None) -> bool:
        self._inbox.put(("msg", [1, publisher_id, seq, *rows]))
        return True

    def wait_committed(self, publisher_id: int, seq: int, timeout: float) -> bool:
        return self.call(lambda w: _wait(w, publisher_id, seq, timeout), timeout + 1.0)

    def lease_block(self, timeout: float) -> int:
        return discovery.lease_id_block(self.db_path)

    def close(self) -> None:
        """Publisher.close calls this; the writer itself stops in shutdown()."""

    # -- running code on the writer thread ----------------------------------------------
    def call(self, fn, timeout: float | None = None):
        """Run ``fn(writer)`` on the writer thread; return its result (or raise its error)."""
        done = threading.Event()
        box: dict = {}
        self._inbox.put(("call", (fn, done, box)))
        if not done.wait(timeout):
            raise TimeoutError("the embedded writer did not answer in time")
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _run(self) -> None:
        writer = self.writer
        while True:
            try:
                kind, item = self._inbox.get(timeout=writer.seconds_to_next_tick())
            except queue.Empty:
                writer.tick()
                continue
            if item is _STOP:
                writer.close()
                return
            if kind == "msg":
                writer.accept_body(item)
            else:
                fn, done, box = item
                try:
                    box["result"] = fn(writer)
                except BaseException as exc:  # handed back to the caller
                    box["error"] = exc
                if not isinstance(box.get("result"), _Pending):
                    done.set()
                else:
                    box["result"].attach(done, box)
            writer.tick()

    def shutdown(self) -> None:
        """Commit everything received, stop the thread, release the lock."""
        self._inbox.put(("stop", _STOP))
        self._thread.join()
        self._lock.release()


class _Pending:
    """A result the writer thread delivers later (a wait for a commit)."""

    def __init__(self):
        self.value = None
        self._done = None
        self._box = None
        self._finished = False

    def attach(self, done: threading.Event, box: dict) -> None:
        self._done, self._box = done, box
        if self._finished:
            self._deliver()

    def finish(self, ok: bool, _committed: int) -> None:
        self.value = ok
        self._finished = True
        if self._done is not None:
            self._deliver()

    def _deliver(self) -> None:
        self._box["result"] = self.value
        self._done.set()


def _wait(writer: Writer, publisher_id: int, seq: int, timeout: float) -> _Pending:
    pending = _Pending()
    writer.wait_for(publisher_id, seq, timeout, pending.finish)
    return pending
