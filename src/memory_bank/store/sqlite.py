"""The SQLite store, writer side: applies batches of messages, one transaction per batch.

Only the writer (daemon or embedded thread) opens this; it is the single connection that
ever writes the database. Reads live in ``reader.py`` on read-only connections.
"""

from __future__ import annotations

import logging
import operator
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .. import id_blocks, wire
from ..files import DaemonLockedError, create_file, file_identity, lock_holders
from ..wire import ROW_ID, ROW_TIMESTAMP, AnomalyRow, Message, MetricRow, PatternOp, SessionOp
from .base import Applied, Applying, StoreGone, StoreRefused, StoreUnavailable
from .schema import COARSE_SECONDS, damaged_database, migrate
from .sql import (
    SqlStore,
    bucket_counts,
    coarser,
    gather,
    metric_aggregates,
    statistics_to_compute,
)

log = logging.getLogger(__name__)

INSERT_EVENTS = (
    "INSERT OR IGNORE INTO events (id, timestamp, event_type, component, message, data) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_ANOMALIES = (
    "INSERT OR IGNORE INTO anomalies (id, timestamp, anomaly_type, severity, description, "
    "pattern_data, current_value, expected_value, deviation) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, abs(?7 - ?8))"
)
INSERT_METRICS = (
    "INSERT OR IGNORE INTO metrics (id, timestamp, metric_name, metric_value, unit, metadata) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

# Session operations are upserts written so that the result does not depend on the order in
# which a CP's start/end and a CSMS's anomaly counts arrive.
SESSION_START = """
INSERT INTO sessions (id, session_id, start_time, status, anomaly_count, started)
VALUES (?3, ?2, ?1, 'ACTIVE', 0, 1)
ON CONFLICT(session_id) DO UPDATE SET
    id = CASE WHEN started OR ?3 IS NULL THEN id ELSE ?3 END,
    start_time = CASE WHEN started THEN min(start_time, excluded.start_time)
                      ELSE excluded.start_time END,
    started = 1
RETURNING stats_auto, end_time
"""
SESSION_ANOMALY = """
INSERT INTO sessions (id, session_id, start_time, status, anomaly_count, started)
VALUES (?3, ?2, ?1, 'ACTIVE', 1, 0)
ON CONFLICT(session_id) DO UPDATE SET
    anomaly_count = coalesce(anomaly_count, 0) + 1,
    start_time = CASE WHEN started THEN start_time
                      ELSE min(start_time, excluded.start_time) END
"""
SESSION_END = """
INSERT INTO sessions (id, session_id, start_time, end_time, status, anomaly_count, started,
                      total_energy, avg_current, max_current, min_current, stats_auto)
VALUES (?8, ?2, ?1, ?1, 'COMPLETED', 0, 0, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT(session_id) DO UPDATE SET
    end_time = CASE WHEN end_time IS NULL THEN excluded.end_time
                    ELSE max(end_time, excluded.end_time) END,
    status = 'COMPLETED',
    total_energy = excluded.total_energy,
    avg_current = excluded.avg_current,
    max_current = excluded.max_current,
    min_current = excluded.min_current,
    stats_auto = excluded.stats_auto
"""
PATTERN_UPSERT = """
INSERT INTO patterns (pattern_type, pattern_data, pattern_key, frequency, last_seen, confidence)
VALUES (?2, ?3, ?4, 1, ?1, ?5)
ON CONFLICT(pattern_type, pattern_key) DO UPDATE SET
    frequency = coalesce(frequency, 0) + 1,
    confidence = CASE WHEN excluded.last_seen >= coalesce(last_seen, 0)
                      THEN excluded.confidence ELSE confidence END,
    last_seen = max(coalesce(last_seen, 0), excluded.last_seen),
    updated_at = CURRENT_TIMESTAMP
"""


RETENTION_TIME_COLUMN = {
    "events": "timestamp",
    "anomalies": "timestamp",
    "metrics": "timestamp",
    "sessions": "start_time",
    "patterns": "last_seen",
}


_SEVERITY = operator.itemgetter(AnomalyRow.SEVERITY)


# While checkpoints keep failing (a full or read-only disk), how often that is logged again.
CHECKPOINT_LOG_SECONDS = 60.0
# The WAL size past which the writer truncates it between batches (daemon.max_wal_bytes).
MAX_WAL_BYTES = 64 << 20
# How long that truncating checkpoint waits for readers to finish (ingest waits meanwhile),
# and how long after readers kept it from finishing it is tried again: first soon (readers
# polling back to back can miss its window once), then twice as long each time up to the
# last (a reader streaming a long export holds its snapshot meanwhile).
TRUNCATE_WAIT_MS = 250
TRUNCATE_FIRST_RETRY_SECONDS = 0.25
TRUNCATE_RETRY_SECONDS = 5.0


class Checkpointer:
    """Copies the WAL into the database from its own connection and thread, every
    ``interval`` seconds (PASSIVE: it never blocks the writer or readers).

    Under sustained ingest a PASSIVE checkpoint never catches up with the writer, so the
    WAL is never started over and grows without bound (SQLite's checkpoint starvation).
    Once the WAL file is past ``max_wal_bytes`` (``due``, asked after each batch) the
    writer, between two batches, runs a TRUNCATE checkpoint (``truncate``): it copies
    the frames the last PASSIVE one left (a fraction of a second of ingest), waits at most
    TRUNCATE_WAIT_MS for readers to finish, and empties the WAL. Done from this thread it
    would wait for the writer's lock, which a busy writer takes again at once."""

    def __init__(self, path: Path, interval: float = 0.5, max_wal_bytes: int = MAX_WAL_BYTES):
        self.path = path
        self.interval = interval
        self.max_wal_bytes = max_wal_bytes
        self._truncate_after = 0.0  # monotonic time before which no TRUNCATE is tried
        self._retry_seconds = TRUNCATE_FIRST_RETRY_SECONDS  # after the next one that fails
        self._stop = threading.Event()
        self._failures = 0  # since the last line logged about them
        self._failing_since: float | None = None
        self._logged_at = 0.0
        self._thread = threading.Thread(target=self._run, name="memorybank-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(os.fspath(self.path), isolation_level=None, timeout=30.0)
        try:
            while not self._stop.wait(self.interval):
                self._checkpoint(conn)
            self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """One PASSIVE checkpoint. Failures are logged when they start, then at most once
        a minute with their count, and once more when checkpoints work again."""
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            now = time.monotonic()
            self._failures += 1
            if self._failing_since is None or now - self._logged_at >= CHECKPOINT_LOG_SECONDS:
                log.warning(
                    "background checkpoint failed %d time(s)%s: %s; retrying every %gs",
                    self._failures,
                    "" if self._failing_since is None else " in the last minute",
                    exc,
                    self.interval,
                )
                self._failing_since = self._failing_since or now
                self._logged_at, self._failures = now, 0
            return
        if self._failing_since is not None:
            log.info(
                "background checkpoints work again (failed for %.0fs)",
                time.monotonic() - self._failing_since,
            )
            self._failing_since, self._failures = None, 0

    def due(self) -> bool:
        """The WAL is past ``max_wal_bytes`` and the wait after a TRUNCATE readers kept
        from finishing (if one did) is over. Asked by the writer after each batch (one
        ``stat``), so the WAL passes the limit by about a batch, where this thread's look
        every half second let it pass by half a second of ingest (12 MiB at full speed)."""
        return self._wal_bytes() > self.max_wal_bytes and time.monotonic() >= self._truncate_after

    def _wal_bytes(self) -> int:
        try:
            return os.path.getsize(f"{self.path}-wal")
        except OSError:
            return 0

    def truncate(self, conn: sqlite3.Connection) -> None:
        """Empty the WAL from the writer's connection, between two batches (the writer
        holds no transaction); readers are waited for at most TRUNCATE_WAIT_MS."""
        (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
        try:
            conn.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:  # the batch is committed: never fail it for this
            busy, reason = True, str(exc)
        else:
            reason = "a reader holds an old snapshot"
        finally:
            conn.execute(f"PRAGMA busy_timeout={timeout}")
        if not busy:
            self._retry_seconds = TRUNCATE_FIRST_RETRY_SECONDS
            return
        self._truncate_after = time.monotonic() + self._retry_seconds
        log.info(
            "the WAL (%d bytes) could not be truncated (%s); trying again in %gs",
            self._wal_bytes(),  # as it was: a TRUNCATE that did not finish leaves its size
            reason,
            self._retry_seconds,
        )
        self._retry_seconds = min(2 * self._retry_seconds, TRUNCATE_RETRY_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class Committing(Applying):
    """A batch whose COMMIT runs on the committer thread (``SqliteStore.start_apply``)."""

    def __init__(self, began: float, finish, wake):
        self.began = began
        self._finish = finish  # (the COMMIT's error or None) -> rows stored, or raises
        self.wake = wake
        self.started = threading.Event()
        self.returned = threading.Event()
        self.returned_at: float | None = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.returned.is_set()

    def result(self) -> int:
        self.returned.wait()
        return self._finish(self.error)

    @property
    def seconds(self) -> float:
        return (self.returned_at or time.perf_counter()) - self.began


class _Committer:
    """The thread batches' COMMITs run on, one at a time, in the order given."""

    def __init__(self, commit):
        self._commit = commit  # () -> the COMMIT's error, or None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="memorybank-commit", daemon=True)
        self._thread.start()

    def submit(self, began: float, finish, wake) -> Committing:
        job = Committing(began, finish, wake)
        self._jobs.put(job)
        # Wait (without the GIL) until the thread has it: it then goes straight into the
        # COMMIT's step, which lets go of the GIL. Left to take the GIL from a caller busy
        # decoding, it would wait for the interpreter's switch interval (5 ms).
        job.started.wait()
        return job

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.started.set()
            try:
                job.error = self._commit()
            except BaseException as exc:  # result() raises it; the thread goes on
                job.error = exc
            job.returned_at = time.perf_counter()
            job.returned.set()
            if job.wake is not None:
                try:
                    job.wake()
                except OSError as exc:  # the loop has gone; result() does not need it
                    log.debug("commit wake-up not delivered: %s", exc)

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()


class _IdsTaken(sqlite3.IntegrityError):
    """A batch row's id is already stored (the transaction was rolled back)."""


def _in_wal_mode(path: Path) -> bool:
    """The database header says WAL (bytes 18 and 19 are 2)."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(20)
    except OSError:
        return False
    return header[18:20] == b"\x02\x02"


def _refuse_if_wal_open_elsewhere(path: Path) -> None:
    """Refuse a database another process has open in WAL mode through another name.

    SQLite names the WAL and its index (-shm) after the path it was given, so a process
    that opened the same file by a hard link or another mount writes a WAL of its own; two
    WALs on one database corrupt it. Every WAL connection holds a lock on the database
    file and one on its -shm: a process locking the first but not our -shm uses another.
    """
    identity = file_identity(path)
    if identity is None or not _in_wal_mode(path):
        return
    me = os.getpid()
    on_db = {p for kind, _, p in lock_holders(identity) if kind == "POSIX" and p != me}
    if not on_db:
        return
    shm = file_identity(f"{path}-shm")
    on_shm = {p for _, _, p in lock_holders(shm)} if shm else set()
    elsewhere = sorted(on_db - on_shm)
    if elsewhere:
        raise DaemonLockedError(
            f"pid {', '.join(map(str, elsewhere))} has {path} open in WAL mode under another "
            "name (a hard link, or another mount of its folder), with a WAL of its own; two "
            "WALs on one database corrupt it: stop that process first"
        )


def _same_entry(a: Path, b: Path) -> bool:
    """The same name in the same folder, reached by two paths (a bind mount)."""
    try:
        return a.name == b.name and os.path.samefile(a.parent, b.parent)
    except OSError:
        return False


class SqliteStore(SqlStore):
    """Owns the database's one write connection: schema, batch apply, maintenance."""

    batch_errors = (
        sqlite3.IntegrityError,
        sqlite3.DataError,
        sqlite3.ProgrammingError,
        sqlite3.InterfaceError,
    )
    unavailable_errors = (sqlite3.Error, StoreGone)
    conn: sqlite3.Connection  # the one write connection, from _open on

    def __init__(
        self,
        path: Path,
        synchronous: str = "FULL",
        max_db_bytes: int | None = None,
        max_wal_bytes: int = MAX_WAL_BYTES,
    ):
        self.path = path
        self.max_wal_bytes = max_wal_bytes
        self.name = str(path)
        self.lost: str | None = None  # what happened to the files, once they are not ours
        self.checkpointer: Checkpointer | None = None
        self._committer: _Committer | None = None  # started by the first start_apply
        _refuse_if_wal_open_elsewhere(path)
        # The file this store writes, held open until close: it tells when the path no
        # longer names it (deleted, replaced), and a new database gets FILE_MODE here.
        try:
            self._db_fd = create_file(path, os.O_RDONLY)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open {path}: {exc.strerror}") from None
        try:
            self._open(synchronous, max_db_bytes)
        except sqlite3.DatabaseError as exc:
            self.close()
            damaged = damaged_database(path, exc)
            if damaged:
                raise StoreRefused(damaged) from None
            raise StoreUnavailable(f"cannot open {path}: {exc}") from None
        except BaseException:
            self.close()
            raise
        # Files SQLite keeps open beside the database; each must stay the one at its path.
        self._beside = {s: file_identity(f"{path}{s}") for s in ("-wal", "-shm")}

    def _open(self, synchronous: str, max_db_bytes: int | None) -> None:
        path = self.path
        self.conn = sqlite3.connect(
            os.fspath(path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged batch survives power loss, at one fsync per batch.
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("PRAGMA foreign_keys=OFF")
        if not self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            # A new database: free pages can then be returned in small incremental steps,
            # so the nightly VACUUM never stops ingest for long (see vacuum_steps).
            self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        try:
            self.old_version = migrate(self.conn)
        except RuntimeError as exc:  # a schema from a newer MemoryBank
            raise StoreRefused(f"{path}: {exc}") from None
        self._check_name()
        self.set_max_db_bytes(max_db_bytes)
        # Checkpoints move off the commit path: the writer's COMMIT no longer copies the
        # WAL into the database now and then (the tail of publish->queryable latency).
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self.checkpointer = Checkpointer(path, max_wal_bytes=self.max_wal_bytes)
        if self.old_version == 0 and self._row_count("events") + self._row_count("sessions"):
            log.info("upgraded an existing seed database in place: %s", path)
        # Id blocks come from the <db>-ids counter; never one below a stored id.
        id_blocks.reserve_id_blocks(path, self.first_free_id_block())

    def _check_name(self) -> None:
        """One database, one name. Its id counter and its publishers' spools hang from the
        path it is served as (recorded in mb_meta); serving it under a second name (a hard
        link) would start a second counter whose blocks collide with the first's."""
        row = self.conn.execute("SELECT value FROM mb_meta WHERE key = 'served_as'").fetchone()
        before = Path(row[0]) if row else None
        if before == self.path or (before is not None and _same_entry(before, self.path)):
            return
        if before is not None:
            if file_identity(before) == file_identity(self.path):
                raise StoreRefused(
                    f"{self.path} is a second name (a hard link) of {before}, which this "
                    f"database is served as; its id counter and publishers' spools are "
                    f"{before}-ids and {before}-spool. Serve it as {before} (memorybank "
                    f"daemon --db {before}), or remove one of the names"
                )
            log.warning(
                "%s was served as %s before (moved or copied); it is served as %s from now on",
                self.path,
                before,
                self.path,
            )
            # Blocks handed out under the old name stay taken under the new one.
            id_blocks.reserve_id_blocks(self.path, id_blocks.next_id_block(before))
        self.conn.execute(
            "INSERT OR REPLACE INTO mb_meta (key, value) VALUES ('served_as', ?)",
            (str(self.path),),
        )

    def set_max_db_bytes(self, max_db_bytes: int | None) -> None:
        """Cap the database file (SQLite's max_page_count); None lifts the cap."""
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        pages = max(1, max_db_bytes // page_size) if max_db_bytes else 0xFFFFFFFE
        self.conn.execute(f"PRAGMA max_page_count = {pages}")

    # -- start-up facts -------------------------------------------------------------
    def _row_count(self, table: str) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def first_free_id_block(self) -> int:
        """The lowest id block no stored row uses (guards against a lost ids file)."""
        top = 0
        for table in ("events", "anomalies", "metrics"):
            top = max(top, self.conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0)
        return (top >> wire.ID_BLOCK_BITS) + 1

    def lease_id_block(self) -> int:
        return id_blocks.lease_id_block(self.path)

    def alert_storage(self):
        """The alerts' tables in this file, written on this connection."""
        from ..alerts.storage import SqliteStorage

        return SqliteStorage(self)

    # -- the batch --------------------------------------------------------------------
    def apply(self, messages: list[Message], watermarks: dict[int, int], rejects=()) -> int:
        """Apply messages (and record refused input) in one transaction. Returns rows stored.

        Messages already applied are skipped; ``watermarks`` is updated in place once the
        transaction has committed. ``rejects`` are (time, publisher, reason, sample) rows.
        """
        staged = self._stage(messages, watermarks, rejects)
        if staged is None:
            return 0
        return self._finish(*staged, watermarks, self._commit_error())

    def start_apply(self, messages, watermarks, rejects=(), wake=None) -> Applying:
        """``apply`` with its COMMIT on the committer thread: the statements run here (a
        thread running them would take the GIL back after every row's step), the COMMIT
        (writing and syncing the WAL, where SQLite lets go of the GIL) there, so the
        caller takes in the next batch meanwhile. ``wake()`` is called from that thread
        once the COMMIT returned; ``result()`` then checks the files and advances
        ``watermarks``."""
        began = time.perf_counter()
        staged = self._stage(messages, watermarks, rejects)
        if staged is None:
            return Applied(0, time.perf_counter() - began)
        if self._committer is None:
            self._committer = _Committer(self._commit_error)
        return self._committer.submit(
            began, lambda error: self._finish(*staged, watermarks, error), wake
        )

    def _stage(self, messages, watermarks, rejects) -> tuple[int, dict[int, int]] | None:
        """BEGIN and the batch's statements, up to its COMMIT: (rows stored, watermarks
        it sets), or None when there is nothing to write."""
        events, anomalies, metrics, operations, applied = gather(messages, watermarks)
        if not applied and not rejects:
            return None
        if self.lost is not None:
            raise StoreGone(self.lost)
        try:
            stored = self._write(events, anomalies, metrics, operations, rejects, applied)
        except _IdsTaken:
            # A row whose id another row already has (replays were skipped above, so it is
            # not this row again): two publishers were handed the same block. Refuse those
            # rows with the reason, keep the rest.
            (events, anomalies, metrics), taken = self._split_taken(
                {"events": events, "anomalies": anomalies, "metrics": metrics}
            )
            stored = self._write(
                events, anomalies, metrics, operations, [*rejects, *taken], applied
            )
        return stored, applied

    def _commit_error(self) -> BaseException | None:
        """COMMIT the staged batch (rolled back if it fails: the error is returned), then
        empty the WAL if it is past its limit (see Checkpointer.due). Runs on the
        committer thread under ``start_apply``: nothing here may touch the caller's state."""
        try:
            self.conn.execute("COMMIT")
        except BaseException as exc:
            try:
                self._rollback()
            except sqlite3.Error as also:
                log.error("rolling back a failed COMMIT: %s", also)
            return exc
        checkpointer = self.checkpointer
        if checkpointer is not None and checkpointer.due():
            try:
                checkpointer.truncate(self.conn)
            except sqlite3.Error as exc:  # the batch is committed: never fail it for this
                log.warning("truncating the WAL: %s", exc)
        return None

    def _finish(
        self, stored: int, applied: dict[int, int], watermarks: dict, error: BaseException | None
    ) -> int:
        """After the COMMIT returned, on the writer's thread: the alerts' hook told, and
        ``watermarks`` advanced if it committed into the file at the path (only that may be
        acknowledged; not into one deleted meanwhile)."""
        hook = self.batch_hook
        if error is not None:
            if hook is not None:
                hook.discarded()
            raise error
        if hook is not None:
            hook.committed()
        self.check_files()
        watermarks.update(applied)
        return stored

    def _write(self, events, anomalies, metrics, operations, rejects, applied) -> int:
        """One batch's statements in one transaction, left open for its COMMIT; raises
        _IdsTaken (rolled back) when a row's id is already stored."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Plain inserts commute with everything, so they go first; the operations then
            # see every metric of the batch (end_session computes statistics from them).
            stored = conn.executemany(INSERT_EVENTS, events).rowcount if events else 0
            stored += conn.executemany(INSERT_ANOMALIES, anomalies).rowcount if anomalies else 0
            stored += conn.executemany(INSERT_METRICS, metrics).rowcount if metrics else 0
            if stored < len(events) + len(anomalies) + len(metrics):
                raise _IdsTaken
            self._roll_up(events, anomalies, metrics)
            refresh = self._sessions_touched_by(metrics)
            for op in operations:
                self._apply_operation(op, refresh)
            stored += len(operations)
            for session_id in refresh:
                self._fill_session_statistics(session_id)
            if rejects:
                self._record_rejects(rejects)
            self._record_watermarks(applied)
            hook = self.batch_hook
            if hook is not None:  # alerts: the outbox rows join this transaction
                hook.stage({"events": events, "anomalies": anomalies, "metrics": metrics})
        except BaseException:
            self._rollback()
            if self.batch_hook is not None:
                self.batch_hook.discarded()
            raise
        return stored

    def _split_taken(self, rows_by_table: dict[str, list]) -> tuple[list[list], list[tuple]]:
        """Each table's rows without those whose id is stored already (or repeated in the
        batch), and a refusal row for each of those."""
        now = time.time()
        kept_by_table, refusals = [], []
        for table, rows in rows_by_table.items():
            ids = [row[ROW_ID] for row in rows]
            stored: set[int] = set()
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                stored.update(
                    r[0]
                    for r in self.conn.execute(
                        f"SELECT id FROM {table} WHERE id IN ({marks})", chunk
                    )
                )
            kept = []
            for row in rows:
                row_id = row[ROW_ID]
                if row_id in stored:
                    refusals.append(
                        (
                            now,
                            row_id >> wire.ID_BLOCK_BITS,
                            f"{table}: id {row_id} is already another row's (two publishers "
                            "handed the same id block?)",
                            wire.sample(row),
                        )
                    )
                else:
                    stored.add(row_id)
                    kept.append(row)
            kept_by_table.append(kept)
        return kept_by_table, refusals

    # -- the files under the database's name ----------------------------------------------
    def _files_changed(self) -> str | None:
        """What happened to the files under the database's name, or None while they are
        the ones this store writes."""
        st = os.fstat(self._db_fd)
        if st.st_nlink == 0:
            return (
                f"{self.path} was deleted; the database it was can be copied from "
                f"/proc/{os.getpid()}/fd/{self._db_fd} until the daemon stops"
            )
        if file_identity(self.path) != (st.st_dev, st.st_ino):
            return f"{self.path} was renamed or replaced; the file written so far lives on"
        for suffix, identity in self._beside.items():
            if identity is not None and file_identity(f"{self.path}{suffix}") != identity:
                return (
                    f"{self.path}{suffix} was deleted or replaced; what was acknowledged is "
                    f"copied from the WAL into {self.path}"
                )
        return None

    def check_files(self) -> None:
        """Raise StoreGone once the database or its WAL at the path is no longer the file
        this store writes. It stays gone: a restart opens what the path names then."""
        if self.lost is None:
            change = self._files_changed()
            if change is None:
                return
            self._keep_what_was_written()
            self.lost = (
                f"{change}. Nothing more is acknowledged: publishers keep their records "
                f"until a daemon serves {self.path} again (restart it to start a new "
                "database there)"
            )
        raise StoreGone(self.lost)

    def _keep_what_was_written(self) -> None:
        """Once the files changed under us: copy the WAL into the database file (which then
        holds every acknowledged record), and keep the id counter past every block a
        known publisher holds, in case it was deleted too."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            top = self.conn.execute("SELECT max(publisher_id) FROM mb_publishers").fetchone()[0]
            id_blocks.reserve_id_blocks(self.path, max(self.first_free_id_block(), (top or 0) + 1))
        except (sqlite3.Error, OSError) as exc:
            log.error("keeping what %s holds: %s", self.path, exc)

    # -- rollups: totals and per-minute aggregates kept with every batch ------------------
    def _roll_up(self, events, anomalies, metrics):
        """Add the batch's rows (every one of them inserted) to mb_counts / mb_minutes /
        mb_metric_minutes / mb_metric_rollups, in the same transaction.

        Counted a column at a time in C (``Counter`` over ``map``), not row by row in
        Python: a batch's rows fall into a few minutes, severities and metric names."""
        conn = self.conn
        counts: Counter = Counter()
        if events:
            counts["events"] = len(events)
        if anomalies:
            counts["anomalies"] = len(anomalies)
            for severity, n in Counter(map(_SEVERITY, anomalies)).items():
                counts["anomalies:" + severity] = n
        if counts:
            conn.executemany(
                "INSERT INTO mb_counts (name, n) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET n = n + excluded.n",
                list(counts.items()),
            )
        for table, rows in (("events", events), ("anomalies", anomalies)):
            if rows:
                conn.executemany(
                    "INSERT INTO mb_minutes (tbl, minute, n) VALUES (?, ?, ?) "
                    "ON CONFLICT(tbl, minute) DO UPDATE SET n = n + excluded.n",
                    [(table, int(m), n) for m, n in bucket_counts(rows, 60).items()],
                )
        if metrics:
            buckets = metric_aggregates(
                metrics, 60, MetricRow.METRIC_NAME, ROW_TIMESTAMP, MetricRow.METRIC_VALUE
            )
            conn.executemany(
                "INSERT INTO mb_metric_minutes (metric_name, minute, n, total, min, max) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(metric_name, minute) DO UPDATE SET "
                "n = n + excluded.n, total = total + excluded.total, "
                "min = min(min, excluded.min), max = max(max, excluded.max)",
                [(name, m, *agg) for (name, m), agg in buckets.items()],
            )
            conn.executemany(
                "INSERT INTO mb_metric_rollups (metric_name, seconds, start, n, total, min, max) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(metric_name, seconds, start) DO UPDATE "
                "SET n = n + excluded.n, total = total + excluded.total, "
                "min = min(min, excluded.min), max = max(max, excluded.max)",
                [
                    (name, COARSE_SECONDS, number * COARSE_SECONDS, *agg)
                    for (name, number), agg in coarser(buckets, COARSE_SECONDS // 60).items()
                ],
            )

    def _recount_minute(self, table: str, minute: int) -> None:
        n = self.conn.execute(
            f"SELECT count(*) FROM {table} WHERE timestamp >= ? AND timestamp < ?",
            (minute * 60, minute * 60 + 60),
        ).fetchone()[0]
        if n:
            self.conn.execute(
                "INSERT OR REPLACE INTO mb_minutes VALUES (?, ?, ?)", (table, minute, n)
            )
        else:
            self.conn.execute(
                "DELETE FROM mb_minutes WHERE tbl = ? AND minute = ?", (table, minute)
            )

    def _recount_metric_minute(self, name: str, minute: int) -> None:
        n, total, low, high = self.conn.execute(
            "SELECT count(*), total(metric_value), min(metric_value), max(metric_value) "
            "FROM metrics WHERE metric_name = ? AND timestamp >= ? AND timestamp < ?",
            (name, minute * 60, minute * 60 + 60),
        ).fetchone()
        if n:
            self.conn.execute(
                "INSERT OR REPLACE INTO mb_metric_minutes VALUES (?, ?, ?, ?, ?, ?)",
                (name, minute, n, total, low, high),
            )
        else:
            self.conn.execute(
                "DELETE FROM mb_metric_minutes WHERE metric_name = ? AND minute = ?",
                (name, minute),
            )

    def _rollups_after_retention(self, table: str, cutoff: float) -> None:
        """Minutes (and 10-minute slices) wholly before the cutoff go; the minute (and the
        slice) holding it is recounted."""
        edge = int(cutoff // 60)
        if table in ("events", "anomalies"):
            self.conn.execute("DELETE FROM mb_minutes WHERE tbl = ? AND minute < ?", (table, edge))
            self._recount_minute(table, edge)
        elif table == "metrics":
            names = [
                r[0]
                for r in self.conn.execute(
                    "SELECT DISTINCT metric_name FROM mb_metric_minutes WHERE minute <= ?", (edge,)
                )
            ]
            self.conn.execute("DELETE FROM mb_metric_minutes WHERE minute < ?", (edge,))
            for name in names:
                self._recount_metric_minute(name, edge)
            # The 10-minute slices: those wholly before the cutoff go, the one holding it is
            # made again from its minutes (recounted just above).
            start = int(cutoff // COARSE_SECONDS) * COARSE_SECONDS
            self.conn.execute(
                "DELETE FROM mb_metric_rollups WHERE seconds = ? AND start <= ?",
                (COARSE_SECONDS, start),
            )
            self.conn.execute(
                "INSERT INTO mb_metric_rollups SELECT metric_name, ?1, ?2, sum(n), sum(total), "
                "min(min), max(max) FROM mb_metric_minutes WHERE minute >= ?2 / 60 "
                "AND minute < (?2 + ?1) / 60 GROUP BY metric_name",
                (COARSE_SECONDS, start),
            )

    def _rollback(self) -> None:
        """Roll back if SQLite has not already (it does so itself on SQLITE_FULL, IOERR...)."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _apply_operation(self, op: list, refresh: set[str]) -> None:
        code, ts = op[wire.OP_CODE], op[wire.OP_TIMESTAMP]
        if code == wire.OP_PATTERN:
            self.conn.execute(
                PATTERN_UPSERT,
                (
                    ts,
                    op[PatternOp.PATTERN_TYPE],
                    op[PatternOp.PATTERN_DATA],
                    op[PatternOp.KEY],
                    op[PatternOp.CONFIDENCE],
                ),
            )
            return
        session_id, row_id = op[SessionOp.SESSION_ID], op[SessionOp.ROW_ID]
        if code == wire.OP_SESSION_START:
            rows = self.conn.execute(SESSION_START, (ts, session_id, row_id)).fetchall()
            if rows and rows[0][0] and rows[0][1] is not None:
                refresh.add(session_id)
        elif code == wire.OP_SESSION_ANOMALY:
            self.conn.execute(SESSION_ANOMALY, (ts, session_id, row_id))
        elif code == wire.OP_SESSION_END:
            energy, avg, mx, mn = op[SessionOp.STATS]
            auto = statistics_to_compute(energy, avg, mx, mn)
            self.conn.execute(SESSION_END, (ts, session_id, energy, avg, mx, mn, auto, row_id))
            if auto:
                refresh.add(session_id)

    def _integral(self, metric_name: str, start: float, end: float) -> float | None:
        """Trapezoidal integral of a metric over time (value x seconds), None under 2 points."""
        return self.conn.execute(
            "SELECT sum((timestamp - prev_t) * (metric_value + prev_v) / 2.0) FROM ("
            " SELECT timestamp, metric_value,"
            "  lag(timestamp) OVER (ORDER BY timestamp) AS prev_t,"
            "  lag(metric_value) OVER (ORDER BY timestamp) AS prev_v"
            " FROM metrics WHERE metric_name = ? AND timestamp BETWEEN ? AND ?"
            ") WHERE prev_t IS NOT NULL",
            (metric_name, start, end),
        ).fetchone()[0]

    # -- maintenance ------------------------------------------------------------------
    def retention_steps(
        self, cutoffs: dict[str, float], chunk_rows: int = 5000
    ) -> Iterator[tuple[str, int]]:
        """Delete rows older than each table's cutoff, one short transaction per chunk.

        Yields (table, rows deleted) after each chunk, so the writer can let ingest run
        between chunks. ``cutoffs`` names the tables to clear (sessions by start_time,
        patterns by last_seen, the others by timestamp).
        """
        for table, cutoff in cutoffs.items():
            column = RETENTION_TIME_COLUMN[table]
            returning = " RETURNING severity" if table == "anomalies" else ""
            while True:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    gone = self.conn.execute(
                        f"DELETE FROM {table} WHERE rowid IN "
                        f"(SELECT rowid FROM {table} WHERE {column} < ? LIMIT ?){returning}",
                        (cutoff, chunk_rows),
                    )
                    if returning:
                        severities: dict[str, int] = {}
                        for (severity,) in gone.fetchall():
                            severities[severity] = severities.get(severity, 0) + 1
                        deleted = sum(severities.values())
                        self.conn.executemany(
                            "UPDATE mb_counts SET n = n - ? WHERE name = ?",
                            [(n, "anomalies:" + sev) for sev, n in severities.items()],
                        )
                    else:
                        deleted = gone.rowcount
                    if table in ("events", "anomalies") and deleted:
                        self.conn.execute(
                            "UPDATE mb_counts SET n = n - ? WHERE name = ?", (deleted, table)
                        )
                    if deleted < chunk_rows:
                        self._rollups_after_retention(table, cutoff)
                    self.conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
                yield table, deleted
                if deleted < chunk_rows:
                    break

    def vacuum_steps(self, pages_per_step: int = 2048) -> Iterator[int]:
        """Return free pages to the file system; yields bytes reclaimed after each step.

        With auto_vacuum=INCREMENTAL (every database this store creates) that is a series
        of short ``incremental_vacuum`` steps. A database made elsewhere (the seed's) is
        switched over once with a full VACUUM, which holds the writer for its duration.
        """
        if self.conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            log.info("converting %s to incremental vacuum (one full VACUUM)", self.path)
            before = self._logical_bytes()
            self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.conn.execute("VACUUM")
            yield before - self._logical_bytes()
        while self.conn.execute("PRAGMA freelist_count").fetchone()[0] > 0:
            before = self._logical_bytes()
            self.conn.execute(f"PRAGMA incremental_vacuum({pages_per_step})").fetchall()
            yield before - self._logical_bytes()
        # The file shrinks at the next checkpoint that copies the whole WAL: the
        # Checkpointer's (PASSIVE, every half second on its own connection; automatic
        # checkpoints are off) does that between batches. A TRUNCATE checkpoint here held
        # the writer ~0.5 s.

    def _logical_bytes(self) -> int:
        """The database's size in pages (WAL included), which VACUUM shrinks at once; the
        file itself shrinks at the next checkpoint."""
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        return pages * self.conn.execute("PRAGMA page_size").fetchone()[0]

    def size_figures(self) -> dict[str, int]:
        sizes = {}
        for key, suffix in (("db_bytes", ""), ("wal_bytes", "-wal")):
            try:
                sizes[key] = os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                sizes[key] = 0
        return sizes

    def close(self) -> None:
        """Close the connections (skipping what a full or read-only store cannot do)."""
        if self._committer is not None:
            self._committer.stop()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        conn = getattr(self, "conn", None)  # none when _open failed before connecting
        if conn is not None:
            try:
                if self.checkpointer is not None:  # opened to the end
                    conn.execute("PRAGMA optimize")
            except sqlite3.Error as exc:
                log.info("PRAGMA optimize skipped at close: %s", exc)
            finally:
                conn.close()
        # Only now: closing a descriptor of the file drops SQLite's locks on it.
        os.close(self._db_fd)
