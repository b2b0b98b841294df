"""PostgreSQL maintenance on a connection and a thread of its own, so ingest never waits.

``DETACH PARTITION ... CONCURRENTLY`` waits for every transaction older than it (a psql
session left idle in a transaction makes that forever), DROP and ANALYZE take table
locks, and counting or deleting a day's rows takes time: on the writer's connection any
of them would hold the batch loop. Here each unit of work runs on the worker's own
connection; the writer's maintenance steps only poll it (a step that yields ``None``
means "still waiting, nothing done yet"), and ``status`` can say what it waits for.

A lock the worker cannot get within ``lock_wait_seconds`` fails the run with a reason;
the next run picks up where it stopped (a detach left pending is finalized, a day left
detached is dropped). Two daemons retiring the same day at once take turns under a
session advisory lock per (table, day): the second finds the day gone and counts it done.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any

from .base import StoreUnavailable
from .postgresql_schema import PARTITIONED, ROLLUP_SECONDS, partition_name

log = logging.getLogger(__name__)

# pg_advisory_lock(RETIRE_LOCK, day * 4 + table index): one retirement of a day at a time.
RETIRE_LOCK = 0x6D62_0003
# How long a unit of maintenance may wait for a lock (older transactions, another
# daemon's retirement of the same day) before the run gives up and says why.
LOCK_WAIT_SECONDS = 300.0
# After this long, a unit still running is reported by ``status``.
REPORT_AFTER_SECONDS = 1.0


class MaintenanceWorker:
    """One thread, one connection, one unit of work at a time (in submission order)."""

    def __init__(self, connect: Callable, lock_wait_seconds: float = LOCK_WAIT_SECONDS):
        self._connect = connect  # () -> an autocommit psycopg connection
        self.lock_wait_seconds = lock_wait_seconds
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._conn = None
        # (what, monotonic start, backend pid) of the unit running now, or None.
        self.current: tuple[str, float, int] | None = None
        self._thread = threading.Thread(
            target=self._run, name="memorybank-pg-maintenance", daemon=True
        )
        self._thread.start()

    def submit(self, what: str, fn: Callable, *args) -> Future:
        """Run ``fn(connection, *args)`` on the worker; ``what`` names it in ``status``."""
        future: Future = Future()
        self._queue.put((future, what, fn, args))
        return future

    def _connection(self):
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._connect()
            self._conn.execute(
                "SELECT set_config('lock_timeout', %s, false)",
                (f"{int(self.lock_wait_seconds * 1000)}ms",),
            )
        return self._conn

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            future, what, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                conn = self._connection()
                self.current = (what, time.monotonic(), conn.info.backend_pid)
                future.set_result(fn(conn, *args))
            except BaseException as exc:  # handed to the step that waits for it
                future.set_exception(exc)
            finally:
                self.current = None
        if self._conn is not None:
            self._conn.close()

    def close(self) -> None:
        """Cancel what runs (a pending detach is finished by the next run) and stop."""
        conn = self._conn
        if self.current is not None and conn is not None and not conn.closed:
            try:
                conn.cancel()
            except Exception as exc:  # the server may be gone already
                log.debug("could not cancel the maintenance statement: %s", exc)
        self._queue.put(None)
        self._thread.join(timeout=10)


def wait_for(future: Future) -> Generator[None, None, Any]:
    """Yield None until ``future`` is done; ``yield from`` it returns its result."""
    while not future.done():
        yield None
    return future.result()


def describe_wait(conn, current: tuple[str, float, int] | None) -> str | None:
    """What the worker has been doing for more than a second, and whom it waits for."""
    if current is None:
        return None
    what, started, pid = current
    seconds = time.monotonic() - started
    if seconds < REPORT_AFTER_SECONDS:
        return None
    blockers = conn.execute(
        "SELECT pid, state, application_name, "
        "extract(epoch FROM now() - xact_start)::float8 FROM pg_stat_activity "
        "WHERE pid = ANY(pg_blocking_pids(%s)) ORDER BY pid",
        (pid,),
    ).fetchall()
    text = f"{what} for {seconds:.0f}s"
    if blockers:
        text += ", waiting for " + "; ".join(
            f"pid {p} ({state}{', ' + app if app else ''}, transaction open {age or 0:.0f}s)"
            for p, state, app, age in blockers
        )
    return text


# -- units of work (run on the worker's connection) -----------------------------------
def retire_day(conn, table: str, day: int, wait_seconds: float) -> int:
    """Detach (concurrently) and drop one day of ``table``, with its counts; returns the
    rows it held, 0 when another daemon retired it first."""
    from psycopg import errors as pg_errors

    name = partition_name(table, day)
    key = (RETIRE_LOCK, day * 4 + PARTITIONED.index(table))
    try:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", key)
    except pg_errors.LockNotAvailable:
        raise StoreUnavailable(
            f"{name} is being retired by another daemon, which has not finished within "
            f"{wait_seconds:g}s; the next run retries"
        ) from None
    try:
        state = conn.execute(
            "SELECT c.relispartition, coalesce(i.inhdetachpending, false) FROM pg_class c "
            "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.oid = to_regclass(%s)",
            (name,),
        ).fetchone()
        if state is None:
            return 0  # dropped by another daemon meanwhile: done
        rows = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
        attached, pending = state
        try:
            if attached and not pending:
                try:
                    conn.execute(f"ALTER TABLE {table} DETACH PARTITION {name} CONCURRENTLY")
                except pg_errors.ObjectNotInPrerequisiteState:
                    pending = True  # marked pending meanwhile
            if attached and pending:
                # An earlier detach was cut off between its two steps (or timed out).
                conn.execute(f"ALTER TABLE {table} DETACH PARTITION {name} FINALIZE")
            with conn.transaction():
                conn.execute(f"DROP TABLE {name}")
                conn.execute(
                    "DELETE FROM mb_day_counts WHERE day = %s AND (name = %s OR name LIKE %s)",
                    (day, table, table + ":%"),
                )
        except pg_errors.LockNotAvailable:
            raise StoreUnavailable(
                f"{name} was not retired: transactions older than its detach were still "
                f"open after {wait_seconds:g}s (sessions idle in transaction hold it; see "
                "pg_stat_activity); the next retention run finishes it"
            ) from None
        log.info("retention: dropped %s (%d rows)", name, rows)
        return rows
    finally:
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)


def delete_before(conn, table: str, column: str, cutoff, chunk_rows: int, writer: str) -> int:
    """Delete rows of ``table`` older than ``cutoff`` in chunks of ``chunk_rows`` (one
    transaction each), taking them off the summary's day counts; returns rows deleted."""
    from .postgresql import add_day_counts

    returning = {"events": " RETURNING timestamp", "anomalies": " RETURNING timestamp, "
                 "severity"}.get(table, "")  # fmt: skip
    total = 0
    while True:
        with conn.transaction():
            # ctids repeat across partitions: the time condition keeps the match to rows
            # older than the cutoff.
            cur = conn.execute(
                f"DELETE FROM {table} WHERE {column} < %(cutoff)s AND ctid = ANY(ARRAY("
                f"SELECT ctid FROM {table} WHERE {column} < %(cutoff)s LIMIT %(n)s))"
                f"{returning}",
                {"cutoff": cutoff, "n": chunk_rows},
            )
            deleted = cur.rowcount
            if returning and deleted:  # the day counts lose what was deleted
                gone: Counter = Counter()
                for row in cur.fetchall():
                    day = int(row[0].timestamp() // 86400)
                    gone[table, day] -= 1
                    if table == "anomalies":
                        gone["anomalies:" + row[1], day] -= 1
                add_day_counts(conn, gone, writer)
        total += deleted
        if deleted < chunk_rows:
            if table == "metrics":
                trim_metric_rollups(conn, cutoff.timestamp(), writer)
            return total


def trim_metric_rollups(conn, cutoff: float, writer: str) -> None:
    """After metrics older than ``cutoff`` are gone: their rollup slices go, and each slice
    holding the cutoff is made again from the rows it still has (under ``writer``). A row
    another daemon commits into such a slice meanwhile (one older than retention keeps)
    may be missed there until the next run."""
    with conn.transaction():
        conn.execute("DELETE FROM mb_metric_rollups WHERE start + seconds <= %s", (cutoff,))
        for seconds in ROLLUP_SECONDS:
            start = int(cutoff // seconds) * seconds
            names = [
                r[0]
                for r in conn.execute(
                    "DELETE FROM mb_metric_rollups WHERE seconds = %s AND start = %s "
                    "RETURNING metric_name",
                    (seconds, start),
                )
            ]
            if names:  # by name: the rows are found through the (name, time) index
                conn.execute(
                    "INSERT INTO mb_metric_rollups SELECT metric_name, %(s)s, %(start)s, "
                    "%(writer)s, count(*), sum(metric_value), min(metric_value), "
                    "max(metric_value) FROM metrics WHERE metric_name = ANY(%(names)s) "
                    "AND timestamp >= to_timestamp(%(start)s) "
                    "AND timestamp < to_timestamp(%(start)s + %(s)s) GROUP BY metric_name",
                    {"s": seconds, "start": start, "writer": writer, "names": sorted(set(names))},
                )


def analyze(conn, table: str) -> int:
    conn.execute(f"ANALYZE {table}")
    return 0
