"""The writer in a thread of this process: ``MemoryBank(db, embedded=True)``.

The same Writer as the daemon's, fed from an in-process queue instead of ZeroMQ, holding
the same one-writer lock (so no daemon can start on the database meanwhile), and acting
as the Publisher's transport: messages and acknowledgement requests go in through the
queue, replies come back through a deque and an eventfd the sender thread polls.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque

import zmq

from . import discovery, sockets, wire
from .store import open_store
from .writer import Writer, WriterSettings

log = logging.getLogger(__name__)

_STOP = "stop"
_COMMITTED = "committed"


class EmbeddedWriter:
    """Runs a Writer in a background thread; is the Publisher's transport."""

    def __init__(self, location, batch_rows: int = 2000, batch_seconds: float = 0.05):
        self.db_path = discovery.location_key(location)
        self._lock = discovery.WriterLock(
            self.db_path, database_file=not discovery.is_url(location)
        )
        self._lock.acquire({"pid": os.getpid(), "embedded": True, "started": time.time()})
        try:
            store = open_store(location)
        except BaseException:
            self._lock.release()
            raise
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.writer = Writer(
            store,
            WriterSettings(batch_rows, batch_seconds),
            spool_key=self.db_path,
            # A batch's COMMIT returned on the store's thread: the loop below finishes it.
            wake=lambda: self._inbox.put((_COMMITTED, None)),
        )
        self._replies: deque = deque()
        self._reply_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="memorybank-writer", daemon=True)
        self._thread.start()

    # -- transport interface (the Publisher's sender thread) ----------------------------
    def try_send(self, raw: bytes) -> bool:
        self._inbox.put(("raw", raw))
        return True

    def request(self, body: dict) -> None:
        self._inbox.put(("ctl", body))

    def replies(self) -> list[dict]:
        # Cleared before the replies are taken (a reply added in between wakes the next
        # poll): left set, the sender thread's poll would return at once, forever,
        # spinning a core.
        sockets.clear_wakeup(self._reply_fd)
        out = []
        while self._replies:
            out.append(self._replies.popleft())
        return out

    def restart_data(self) -> None:
        """Nothing is ever lost in-process; nothing to reconnect."""

    def poll_items(self, want_write: bool) -> list:
        return [(self._reply_fd, zmq.POLLIN)]

    def lease_block(self, timeout: float) -> tuple[int, tuple[str, bytes] | None]:
        """A new id block, asked of the writer as a daemon is asked (a lease request), on
        its thread; no spool token comes with it (this writer has no CURVE: it applies
        every spool)."""

        def lease(writer: Writer) -> wire.Lease:
            replies: list[dict] = []
            writer.handle_request(wire.request(wire.OP_LEASE, 0), replies.append)
            return wire.Lease.parse(replies[0])

        deadline = time.monotonic() + timeout
        while True:  # a store briefly down answers "not now", as a daemon's does
            granted = self.call(lease, max(deadline - time.monotonic(), 0.1))
            if granted.block is not None:
                return granted.block, granted.token
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the embedded writer could not lease ids: {granted.error}")
            time.sleep(0.2)

    def close(self) -> None:
        """Publisher.close calls this; the writer itself stops in shutdown()."""

    def _reply(self, body: dict) -> None:
        self._replies.append(body)
        os.eventfd_write(self._reply_fd, 1)

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
        writer.adopt_spools(force=True)
        while True:
            try:
                kind, item = self._inbox.get(timeout=writer.seconds_to_next_tick())
            except queue.Empty:
                writer.tick()
                writer.maintenance_step()
                writer.adopt_spools()
                continue
            if kind == _STOP:
                writer.close()
                return
            if kind == _COMMITTED:
                pass  # writer.tick() below finishes the batch
            elif kind == "raw":
                writer.accept_raw(item)
            elif kind == "ctl":
                writer.handle_request(item, self._reply)
            else:
                fn, done, box = item
                try:
                    box["result"] = fn(writer)
                except BaseException as exc:  # handed back to the caller
                    box["error"] = exc
                done.set()
            writer.tick()
            writer.maintenance_step()

    def shutdown(self) -> None:
        """Commit everything received, stop the thread, release the lock."""
        self._inbox.put((_STOP, None))
        self._thread.join()
        os.close(self._reply_fd)
        self._lock.release()
