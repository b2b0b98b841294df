"""The alerts engine: the writer's hook (evaluate inside the batch's transaction, queue the
notifications in the outbox of that same transaction), and the delivery workers.

How the daemon uses it (the only places alerts touch the write side):

- ``store.batch_hook = engine``: the store calls ``engine.stage(tables)`` inside each
  batch's transaction right before COMMIT, then ``engine.committed()`` after the COMMIT or
  ``engine.discarded()`` after a rollback. A record is therefore evaluated exactly once,
  when it is committed, even across restarts: the evaluation state (``for``, ``rate``,
  ``absence``, firing or not) is written in the same transaction (mb_alert_state) and read
  back at start. With an MQTT stream, the batch's ids go to ``mb_stream_log`` in that
  transaction too, and after COMMIT its rows to each stream (stream_log.py, mqtt.py).
- ``engine.tick()`` from the daemon's loop, between batches, on the same connection: what
  time alone causes (absence, resolve_after, repeat), the delivery outcomes the workers
  report and the streams' positions, in a transaction of its own.
- ``engine.reload(config)`` on SIGHUP, ``engine.figures()`` for status, ``engine.stop()``.
"""

from __future__ import annotations

import logging
import queue
import time

from . import outbox, stream_log
from .delivery import DeliveryWorker
from .evaluation import Evaluator
from .rules import AlertsConfig

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)
if TYPE_CHECKING:
    from .mqtt import MqttStream
    from .stream_process import StreamProcess

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1
PRUNE_SECONDS = 60.0
POSITION_SECONDS = 0.5  # how often, between batches, the streams' positions are written


class AlertEngine:
    def __init__(self, store, config: AlertsConfig):
        self.store = store
        # The store's tables and connections (storage.py): SQLite's or PostgreSQL's.
        self.db = store.alert_storage()
        conn = self.db.conn
        self.config = config
        self.results: queue.Queue = queue.Queue()
        self.pending = outbox.pending_counts(conn)
        self.dropped: dict[str, int] = {}
        self.evaluation_errors = 0
        self.evaluator = Evaluator(config.rules, outbox.load_states(conn), time.time())
        self.workers: dict[str, DeliveryWorker] = {}
        self._staged: tuple | None = None
        self._staged_tables: tuple | None = None  # (log seq, the batch's rows)
        self._positions: dict[str, stream_log.Position] = {}  # as written in the database
        self._next_positions = 0.0
        self._log_floor = 0  # mb_stream_log holds no row below this seq
        self._next_tick = 0.0
        self._next_prune = 0.0
        self._tick_error_logged = 0.0
        self.streams: dict = {}  # sink name -> its MQTT stream of committed records
        self._start_workers(config)
        self._start_streams(config)

    # -- configuration ------------------------------------------------------------------
    def _start_workers(self, config: AlertsConfig) -> None:
        for name, sink in config.sinks.items():
            if name not in self.workers:
                self.workers[name] = DeliveryWorker(sink, self.db, self.results).start()
        if self.pending:
            log.info(
                "alerts: %d notification(s) pending from before the restart: %s",
                sum(self.pending.values()),
                ", ".join(f"{s} {n}" for s, n in sorted(self.pending.items())),
            )

    def _start_streams(self, config: AlertsConfig) -> None:
        """Start the streams not running, each from its position in the database."""
        wanted = {n: s.stream for n, s in config.sinks.items() if s.stream}
        with self.db.transaction() as conn:
            positions = stream_log.start_positions(conn, wanted)
            backlogs = {
                name: stream_log.backlog(conn, positions[name], tables)[0]
                for name, tables in wanted.items()
                if name not in self.streams
            }
        for name, backlog in backlogs.items():
            sink = config.sinks[name]
            if backlog:
                log.info(
                    "mqtt stream %s: %d record(s) the broker had not acknowledged before the "
                    "restart are sent first",
                    name,
                    backlog,
                )
            stream: MqttStream | StreamProcess
            if sink.stream_process:  # paho's and the JSON's work off the daemon's GIL
                from .stream_process import StreamProcess

                stream = StreamProcess(sink, self.db.location, positions[name], backlog)
            else:
                from .mqtt import MqttStream

                stream = MqttStream(sink, self.db, positions[name], backlog)
            self.streams[name] = stream.start()
            self._positions[name] = positions[name]
        self._chosen = set().union(*wanted.values())

    def reload(self, config: AlertsConfig) -> None:
        """New rules and sinks (SIGHUP). Rules keep their state by name while they watch the
        same thing (the others' are retired by the next tick: evaluation.py); a sink whose
        settings changed is restarted, and one removed stops (its pending rows wait)."""
        stopping = [w for n, w in self.workers.items() if config.sinks.get(n) != w.config]
        for worker in stopping:
            worker.stop()
            del self.workers[worker.config.name]
            stream = self.streams.get(worker.config.name)
            if stream is not None:
                stream.stop()
        if stopping:
            self.tick(force=True)  # the stopped streams' positions, before they restart
        for worker in stopping:
            self.streams.pop(worker.config.name, None)
            self._positions.pop(worker.config.name, None)
        self.config = config
        self.evaluator.configure(config.rules, time.time())  # removed or changed: retired
        self._start_workers(config)
        self._start_streams(config)
        log.info(
            "alerts reloaded: %d rule(s), sinks %s",
            len(config.rules),
            ", ".join(sorted(config.sinks)) or "none",
        )

    # -- the store's hook ---------------------------------------------------------------
    def stage(self, tables: dict[str, list]) -> None:
        """Inside a batch's transaction: evaluate its rows, queue the notifications (on the
        store's connection, in that transaction)."""
        conn = self.db.conn
        try:
            notes, touched = self.evaluator.batch(tables, time.time())
        except Exception:  # a fault of ours never costs the batch
            self.evaluation_errors += 1
            log.exception("alert evaluation failed for a batch; its rows are not evaluated")
            notes, touched = [], {}
        self._write(conn, notes, touched, [], positions=True)
        if self.streams:
            seq = stream_log.append(conn, tables, self._chosen)
            if seq is not None:
                self._staged_tables = (seq, tables)

    def _write(
        self, conn, notes, touched, results, positions: bool = False, retired=((), ())
    ) -> None:
        """``retired``: the retired states' keys, and those of them whose rows go."""
        added = outbox.insert(conn, notes, set(self.workers)) if notes else {}
        moved = {}
        if positions:
            moved = {
                n: s.position for n, s in self.streams.items() if s.position != self._positions[n]
            }
            if moved:
                stream_log.save_positions(conn, moved)
        if retired[1]:
            outbox.delete_states(conn, retired[1])
        if touched:
            outbox.save_states(conn, touched)
        delivered = outbox.mark(conn, results) if results else {}
        dropped = {}
        for sink, n in added.items():
            limit = self.workers[sink].config.max_pending
            over = self.pending.get(sink, 0) - delivered.get(sink, 0) + n - limit
            if over > 0:
                dropped[sink] = outbox.drop_oldest(conn, sink, over)
        self._staged = (touched, added, delivered, dropped, results, moved, retired[0])

    def committed(self) -> None:
        if self._staged is None:
            return
        touched, added, delivered, dropped, _results, moved, retired = self._staged
        self._staged = None
        self._log_retired(retired)
        self.evaluator.adopt(touched)
        self.evaluator.retired(retired)
        self._positions.update(moved)
        for sink in set(added) | set(delivered) | set(dropped):
            self.pending[sink] = (
                self.pending.get(sink, 0)
                + added.get(sink, 0)
                - delivered.get(sink, 0)
                - dropped.get(sink, 0)
            )
        for sink, n in dropped.items():
            self.dropped[sink] = self.dropped.get(sink, 0) + n
            log.error(
                "sink %s: its queue is full (max_pending %d); dropped the %d oldest pending "
                "notification(s), %d so far",
                sink,
                self.workers[sink].config.max_pending,
                n,
                self.dropped[sink],
            )
        for sink in added:
            self.workers[sink].wake.set()
        logged, self._staged_tables = self._staged_tables, None
        if logged is not None:
            for stream in self.streams.values():
                stream.put(*logged)

    def _log_retired(self, keys) -> None:
        """Say which states of removed or changed rules were ended, and how."""
        names = {rule.name for rule in self.evaluator.rules}
        for name, group in keys:
            st = self.evaluator.retiring[(name, group)]
            which = f"alert {name}" + (f" (group {group!r})" if group else "")
            why = "changed what it watches" if name in names else "is no longer configured"
            new = self.evaluator.states.get((name, group))
            if not st.firing:
                log.info("alerts: %s %s; its state is cleared", which, why)
            elif new is not None and new.firing:
                log.info("alerts: %s %s; it was firing, and fires again as it is now", which, why)
            elif st.definition is None:
                log.warning(
                    "alerts: %s %s; it was firing, and is cleared without a resolved "
                    "notification (its state was written before states kept their rule's sinks)",
                    which,
                    why,
                )
            else:
                log.info(
                    "alerts: %s %s; it was firing: resolved (sent to %s)",
                    which,
                    why,
                    ", ".join(s for s in st.definition["notify"] if s in self.workers) or "no sink",
                )

    def discarded(self) -> None:
        """The transaction rolled back: nothing of it happened (outcomes are written later)."""
        if self._staged is not None:
            for result in self._staged[4]:
                self.results.put(result)
        self._staged = None
        self._staged_tables = None

    # -- the daemon's loop --------------------------------------------------------------
    def tick_due(self, late: float = 0.0) -> bool:
        """Whether ``tick`` has work to look for (``late``: and has had for so long)."""
        return time.monotonic() >= self._next_tick + late

    def tick(self, force: bool = False) -> None:
        """What time causes, and the workers' outcomes, in one short transaction."""
        now = time.monotonic()
        if now < self._next_tick and not force:
            return
        self._next_tick = now + TICK_SECONDS
        results = []
        while True:
            try:
                results.append(self.results.get_nowait())
            except queue.Empty:
                break
        wall = time.time()
        ended, *retired = self.evaluator.retire(wall) if self.evaluator.retiring else ([], (), ())
        notes, touched = self.evaluator.tick(wall)
        notes += ended
        prune = now >= self._next_prune
        # The streams' positions (each batch writes them too), and the log rows every
        # stream has passed, at most every POSITION_SECONDS.
        due = force or now >= self._next_positions
        positions = due and any(s.position != self._positions[n] for n, s in self.streams.items())
        floor = min((seq for seq, _done in self._positions.values()), default=0)
        log_prune = due and floor > self._log_floor
        if not (results or notes or touched or prune or positions or log_prune or retired[0]):
            return
        try:
            with self.db.transaction() as conn:
                self._write(conn, notes, touched, results, positions, retired)
                if positions or log_prune:
                    stream_log.prune(conn)
                if prune:
                    outbox.prune(conn)
        except self.db.errors as exc:
            self.discarded()
            if now - self._tick_error_logged >= 30.0:
                self._tick_error_logged = now
                log.error("alerts: cannot write to the outbox now (%s); retrying", exc)
            return
        if prune:
            self._next_prune = now + PRUNE_SECONDS
        if positions or log_prune:
            self._next_positions = now + POSITION_SECONDS
            self._log_floor = floor
        self.committed()

    def stop(self) -> None:
        """Stop the workers, then write what they reported."""
        for worker in self.workers.values():
            worker.request_stop()
        for worker in self.workers.values():
            worker.stop()
        for stream in self.streams.values():
            stream.stop()
        self.tick(force=True)
        self.db.close()

    # -- figures ------------------------------------------------------------------------
    def figures(self) -> dict:
        sinks = {}
        for name, worker in self.workers.items():
            sinks[name] = {
                "type": worker.config.type,
                "pending": self.pending.get(name, 0),
                "delivered": worker.delivered,
                "failures": worker.failures,
                "dropped": self.dropped.get(name, 0),
                "failing": worker.failing,
                "last_error": worker.last_error,
                "last_error_at": worker.last_error_at,
            }
        figures = {
            "rules": len(self.evaluator.rules),
            "firing": len(self.evaluator.firing()),
            "evaluation_errors": self.evaluation_errors,
            "sinks": sinks,
        }
        if self.streams:
            figures["streams"] = {n: s.figures() for n, s in self.streams.items()}
        return figures
