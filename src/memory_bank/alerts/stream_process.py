"""The MQTT stream in a process of its own (a sink's ``stream_process = true``): paho-mqtt's
work per message and the records' JSON leave the daemon's GIL, so the writer's commit
loop no longer shares it with them.

The process is the same ``MqttStream`` (mqtt.py): the daemon hands it each committed
batch's rows through its stdin, and what did not come that way (the backlog of a restart,
of the daemon or of the process; what the daemon did not hold for it, PIPE_HOLD) it reads
back from the database by ``mb_stream_log`` on a read-only connection of its own (SQLite
or PostgreSQL), as an in-process stream does past ``stream_max_pending``. The pipe is only
a shortcut: the guarantees rest on the log and the position, so a batch lost with the
pipe costs a read-back, never a record. The daemon supervises it through two pipes:

- to the process (its stdin): first one JSON line (the sink, the database's location, the
  position to start from, the log level); then after each COMMIT that logged a batch
  ``"<seq> <records> <bytes>"`` and that many bytes, msgpack of ``[created_at, {table:
  rows}]`` (the batch's rows of the stream's tables, in the wire's layout), or, when the
  process is more than PIPE_HOLD bytes behind, ``"<seq> <records>"`` alone (read back);
  and ``"stop"``. The writer puts each frame into the pipe (1 MiB) when nothing waits
  before it and the pipe has room; what it does not take a thread of the daemon writes,
  so the writer never blocks on the pipe. End of file (the daemon is gone, even by
  SIGKILL) ends it at once.
- from the process (its stdout): a JSON line with its figures and ``position`` (where the
  broker acknowledged, in order) whenever they change, at most every STATUS_SECONDS
  (written by the threads that moved them: nothing wakes on a timer to look). The
  daemon writes that position to ``mb_stream_position`` as it does an in-process stream's
  (the process never writes the database), so the guarantees stay the same: a restart,
  of the daemon or of the process alone, resends from the last position written.

A process that ends when it was not asked to is started again from the last position it
reported, after a backoff (1 s doubling to 30 s), and said so in the log and in ``status``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque

import msgpack

from .. import wire
from .records import created_at
from .rules import Sink

log = logging.getLogger(__name__)

# How often, at most, the process reports its figures: the position the daemon writes
# lags the broker's acknowledgements by this much more than an in-process stream's.
STATUS_SECONDS = 0.01
RESTART_MAX_SECONDS = 30.0
STOP_SECONDS = 2.0  # how long a stopping stream waits for the broker (as in the daemon)
FIGURES = ("published", "pending", "dropped", "read_back", "failures", "last_error")
# Bytes of rows the daemon holds for the process at most (about 50,000 records); past it a
# batch goes as a note alone and the process reads it back from the database.
PIPE_HOLD = 8 << 20
PIPE_BYTES = 1 << 20  # the pipe's own size (Linux's default most a user may set)


def _widen(fd: int) -> None:
    """Make the pipe hold PIPE_BYTES (Linux; 64 KiB by default): a batch's frame (about
    150 KB for 2,000 records) then goes in one write and is read in one, where through
    64 KiB the feeding thread and the process woke each other several times a frame."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except OSError:  # not Linux, or past /proc/sys/fs/pipe-max-size: a pipe as it is
        pass


def _frame_encoder():
    """What packs a batch's rows for the pipe: msgspec's encoder (the same msgpack bytes
    as ``msgpack.packb``, in about a third of its time: it ran on the writer's thread at
    every COMMIT), or msgpack where msgspec is not installed (PyPy)."""
    msgspec = wire.optional_msgspec()
    return msgpack.packb if msgspec is None else msgspec.msgpack.Encoder().encode


class StreamProcess:
    """The daemon's side: what ``AlertEngine`` uses of an ``MqttStream`` (``start``,
    ``put``, ``position``, ``stop``, ``figures``), with the stream in a child process."""

    def __init__(self, config: Sink, location: str, position, backlog: int = 0):
        self.config = config
        self.location = location
        self.position = position  # as the process last reported it
        self.restarts = 0
        self._reported = False  # the running process has said where it stands
        self._figures: dict = dict.fromkeys(FIGURES, 0) | {"pending": backlog, "last_error": None}
        # The counts of the processes that ended, added to the running one's.
        self._before = dict.fromkeys(("published", "dropped", "read_back", "failures"), 0)
        self._lock = threading.Lock()  # the process and its stdin, replaced on a restart
        self._stopping = threading.Event()
        self._proc: subprocess.Popen | None = None
        # What the feeding thread writes to the process's stdin next, and its size; and
        # whether it is writing (what it took out of _frames).
        self._frames: deque[bytes] = deque()
        self._held = 0
        self._writing = False
        self._encode = _frame_encoder()
        self._fed = threading.Condition(self._lock)
        self._thread = threading.Thread(
            target=self._supervise, name=f"memorybank-stream-{config.name}", daemon=True
        )
        self._feeder = threading.Thread(
            target=self._feed, name=f"memorybank-stream-{config.name}-feed", daemon=True
        )

    def start(self) -> StreamProcess:
        self._spawn()
        self._thread.start()
        self._feeder.start()
        return self

    def _spawn(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert proc.stdin is not None
        _widen(proc.stdin.fileno())
        first = {
            "sink": dataclasses.asdict(self.config),
            "location": self.location,
            "position": list(self.position),
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        proc.stdin.write(json.dumps(first).encode() + b"\n")
        proc.stdin.flush()
        os.set_blocking(proc.stdin.fileno(), False)  # put writes what the pipe takes now
        self._proc = proc
        self._frames.clear()  # for the process before: this one reads them back
        self._held = 0

    def put(self, seq: int, tables: dict[str, list]) -> None:
        """After a COMMIT that logged batch ``seq``: hand its rows to the process, or tell
        it to read them back when it is PIPE_HOLD behind (never blocks). The frame goes
        into the pipe at once when nothing waits before it and the pipe has room (most
        of the time: the pipe holds several frames); the feeding thread writes the rest,
        so it wakes only when the process is behind."""
        chosen = {t: tables[t] for t in self.config.stream if tables.get(t)}
        count = sum(map(len, chosen.values()))
        frame = f"{seq} {count}\n".encode()
        if self._held < PIPE_HOLD:
            try:
                body = self._encode([created_at(), chosen])
            except (TypeError, ValueError, OverflowError):  # not for msgpack: read back
                pass
            else:
                frame = f"{seq} {count} {len(body)}\n".encode() + body
        with self._fed:
            if self._proc and not (self._frames or self._writing or self._stopping.is_set()):
                frame = self._write_now(self._proc, frame)
                if not frame:
                    return
            self._frames.append(frame)
            self._held += len(frame)
            self._fed.notify()

    @staticmethod
    def _write_now(proc: subprocess.Popen, frame: bytes) -> bytes:
        """What of ``frame`` the pipe did not take (without waiting for it)."""
        assert proc.stdin is not None
        try:
            return frame[os.write(proc.stdin.fileno(), frame) :]
        except BlockingIOError:  # full: the feeding thread waits for room
            return frame
        except OSError:  # it ended: the one started next reads the log from its position
            return b""

    def _feed(self) -> None:
        """Write what ``put`` queued to the process's stdin (blocking: this thread waits
        for the process, the writer does not); after ``stop``, close it."""
        while True:
            with self._fed:
                while not self._frames:
                    self._fed.wait()
                closing = self._stopping.is_set() and b"stop\n" in self._frames
                proc, data = self._proc, b"".join(self._frames)
                self._frames.clear()
                self._writing = True
            assert proc is not None and proc.stdin is not None
            try:
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(proc.stdin.fileno(), view) :]
                    except BlockingIOError:  # (the pipe is non-blocking for put)
                        select.select([], [proc.stdin], [])
                if closing:
                    proc.stdin.close()
                    return
            except OSError:  # it ended: the one started next reads the log from its position
                if self._stopping.is_set():
                    return
            with self._fed:
                self._writing = False
                if self._proc is proc:
                    self._held = max(self._held - len(data), 0)

    def _supervise(self) -> None:
        """Read the process's figures until it ends; start it again unless stopping."""
        delay = 1.0
        while True:
            proc = self._proc
            assert proc is not None and proc.stdout is not None
            started = time.monotonic()
            for line in proc.stdout:
                self._status(line)
            code = proc.wait()
            if self._stopping.is_set():
                return
            for key in self._before:
                self._before[key] += self._figures[key]
                self._figures[key] = 0
            self._figures["last_error"] = f"the stream's process ended (exit status {code})"
            if time.monotonic() - started > RESTART_MAX_SECONDS:
                delay = 1.0
            log.error(
                "mqtt stream %s: its process ended (exit status %s); starting it again in "
                "%gs, from where the broker last acknowledged",
                self.config.name,
                code,
                delay,
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_MAX_SECONDS)
            with self._lock:
                if self._stopping.is_set():
                    return
                self.restarts += 1
                self._reported = False
                try:
                    self._spawn()
                except OSError as exc:
                    log.error("mqtt stream %s: cannot start its process: %s", self.config.name, exc)
                    return

    def _status(self, line: bytes) -> None:
        try:
            status = json.loads(line)
            position = tuple(status["position"])
        except (ValueError, KeyError, TypeError):
            log.warning("mqtt stream %s: its process said %r", self.config.name, line[:200])
            return
        self._figures = {key: status.get(key) for key in FIGURES}
        self.position = position
        self._reported = True

    def stop(self) -> None:
        """Stop the process: its stream gives the broker STOP_SECONDS to take what is
        pending (what it has not acknowledged is sent after the next start)."""
        with self._fed:
            self._stopping.set()
            proc = self._proc
            self._frames.append(b"stop\n")
            self._fed.notify()
        if proc is None:
            return
        self._feeder.join(STOP_SECONDS + self.config.timeout + 5.0)
        self._thread.join(STOP_SECONDS + self.config.timeout + 5.0)
        if proc.poll() is None:
            log.error("mqtt stream %s: its process did not stop; killing it", self.config.name)
            proc.kill()
            proc.wait()

    def figures(self) -> dict:
        figures = dict(self._figures)
        for key, before in self._before.items():
            figures[key] = (figures[key] or 0) + before
        proc = self._proc
        figures["process"] = {
            "pid": proc.pid if proc else None,
            "restarts": self.restarts,
            "ready": self._reported,
        }
        return figures


# -- the process -----------------------------------------------------------------------
class _Reporter:
    """Writes the stream's figures and position to the daemon (stdout) when they changed,
    at most every STATUS_SECONDS. Called by the threads that are awake anyway (the
    stream's at each pass of its loop, the main one after each frame from the daemon),
    so no thread wakes on a timer to look: a thread's wake costs tens of µs of CPU, and
    one looking every 10 ms cost the stream's process about an eighth of its CPU under
    load and kept an idle one busy. Returns in how many seconds a report it held back
    is due (the stream's thread comes back for it), or None."""

    def __init__(self, stream, out):
        self.stream = stream
        self.out = out
        self._lock = threading.Lock()  # one line at a time, each newer than the last
        self._last: dict | None = None
        self._next = 0.0

    def __call__(self, force: bool = False) -> float | None:
        with self._lock:
            status = self.stream.figures() | {"position": list(self.stream.position)}
            if status == self._last:
                return None
            now = time.monotonic()
            if now < self._next and not force:
                return self._next - now
            try:
                self.out.write(json.dumps(status).encode() + b"\n")
                self.out.flush()
            except OSError:  # the daemon is gone
                os._exit(0)
            self._last = status
            self._next = now + STATUS_SECONDS
            return None


def main() -> int:
    from . import stream_log
    from .mqtt import MqttStream
    from .storage import readers

    # The daemon stops and reloads it (its stdin): the signals sent to the daemon's whole
    # group (a terminal's Ctrl-C; systemd's SIGTERM to every process of the service) are
    # for the daemon, which then stops it after its last commit. SIGKILL still ends it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    stdin, out = sys.stdin.buffer, sys.stdout.buffer
    first = json.loads(stdin.readline())
    logging.basicConfig(
        level=first["log_level"],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    raw = first["sink"]
    config = Sink(**(raw | {"stream": tuple(raw["stream"]), "headers": ()}))
    db = readers(first["location"])
    position = tuple(first["position"])
    delay = 1.0
    while True:  # the backlog's size: the figure `status` shows until it is sent
        try:
            conn = db.open_reader()
            try:
                backlog, top = stream_log.backlog(conn, position, config.stream)
            finally:
                conn.close()
            break
        except db.errors as exc:
            log.warning("mqtt stream %s: cannot read the database now (%s)", config.name, exc)
            time.sleep(delay)
            delay = min(delay * 2, config.backoff_max)
    stream = MqttStream(config, db, position, backlog, top)
    report = stream.after_pass = _Reporter(stream, out)
    report()  # where it stands: the daemon counts it ready from this line
    stream.start()
    for line in iter(stdin.readline, b""):
        if line == b"stop\n":
            stream.stop(STOP_SECONDS)
            report(force=True)
            return 0
        seq, count, *size = map(int, line.split())
        if not size:  # the daemon did not hold its rows: read back
            stream.logged(seq, count)
        else:
            body = stdin.read(size[0])
            if len(body) < size[0]:
                break
            committed, tables = msgpack.unpackb(body, use_list=False)  # tuples: no GC tracking
            stream.put(seq, tables, committed)
        report()  # its figures moved (pending), whatever the stream's thread is doing
    os._exit(0)  # the daemon is gone: stop at once, its successor resends from the position


if __name__ == "__main__":
    sys.exit(main())
