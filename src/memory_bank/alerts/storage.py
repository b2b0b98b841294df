"""Where the alerts' tables live: what differs between the SQLite and the PostgreSQL store.

outbox.py and stream_log.py write their SQL once, with ``?`` placeholders and types both
databases take. A store's ``alert_storage()`` gives the engine what is its own: the
connection of the batch's transaction (PostgreSQL's translates the placeholders), a
transaction of the engine's own between batches, read-only connections for the delivery
workers and the streams, the errors its driver raises, and how a stored row reads back in
the wire's layout (times as epoch seconds, JSON as text).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager

from ..lazylog import lazy_logger
from .reading import pg_sql

log = lazy_logger(__name__)


class PgConnection:
    """A psycopg connection as outbox.py and stream_log.py use sqlite3's: ``execute``
    (a cursor: rowcount, fetchone, iteration), ``executemany``, ``?`` placeholders.
    ``conn`` is a callable giving the connection: the store's current one (the store may
    have replaced it after a loss), or a reader's own."""

    def __init__(self, conn):
        self._conn = conn

    def execute(self, sql: str, params=()):
        return self._conn().execute(pg_sql(sql), params)

    def executemany(self, sql: str, rows) -> None:
        if rows:
            with self._conn().cursor() as cur:
                cur.executemany(pg_sql(sql), rows)

    def close(self) -> None:
        self._conn().close()


class SqliteReaders:
    """Read-only connections to the SQLite file (the delivery workers', the streams'): all
    a stream needs, also in a process of its own (stream_process.py)."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path):
        self.path = path
        self.location = str(path)

    def open_reader(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30.0)

    def row_columns(self, table: str) -> str:
        from .. import wire

        return ", ".join(wire.ROW_COLUMNS[table]) + ", created_at"


class SqliteStorage(SqliteReaders):
    """The tables in the daemon's SQLite file, written on the store's connection."""

    def __init__(self, store):
        from . import outbox, stream_log

        super().__init__(store.path)
        self.store = store
        conn = store.conn
        conn.executescript(outbox.DDL)
        conn.executescript(stream_log.DDL)

    @property
    def conn(self) -> sqlite3.Connection:
        return self.store.conn

    @contextmanager
    def transaction(self):
        conn = self.store.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise

    def close(self) -> None:
        pass


# The PostgreSQL columns read back as the wire's layout (and created_at as SQLite's text).
_PG_COLUMN = {
    "timestamp": "extract(epoch FROM timestamp)::float8",
    "data": "data::text",
    "metadata": "metadata::text",
    "pattern_data": "pattern_data::text",
}
ALERTS_LOCK = 0x6D62_0003  # pg_advisory_lock key: the one daemon that runs the alerts
LOCK_CHECK_SECONDS = 5.0  # how often, between batches, the lock's connection is checked


class PostgresReaders:
    """Read-only (autocommit) connections to the PostgreSQL database, as SqliteReaders."""

    def __init__(self, url: str):
        from ..store.postgresql import PostgresStore
        from ..store.postgresql_connection import connect

        self.url = self.location = url
        self.errors = PostgresStore.unavailable_errors
        self._connect = connect

    def open_reader(self) -> PgConnection:
        raw = self._connect(self.url, application_name="memorybank-alerts")
        return PgConnection(lambda: raw)

    def row_columns(self, table: str) -> str:
        from .. import wire

        columns = [_PG_COLUMN.get(c, c) for c in wire.ROW_COLUMNS[table]]
        columns.append("to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')")
        return ", ".join(columns)


def readers(location: str) -> SqliteReaders | PostgresReaders:
    """The read-only side of a store, by its location (a path or a postgresql:// URL)."""
    from ..locations import is_url

    return PostgresReaders(location) if is_url(location) else SqliteReaders(location)


class PostgresStorage(PostgresReaders):
    """The tables in the PostgreSQL database (schema version 3 makes them), written on the
    store's connection. One daemon per database runs the alerts: it holds an advisory lock
    on a connection of its own (taken again when that connection is lost, as when the
    server restarts), and a second daemon with rules refuses to start."""

    def __init__(self, store):
        from .rules import RuleError

        super().__init__(store.url)
        self.store = store
        self.errors = store.unavailable_errors
        # The batch's and the engine's statements: on the store's connection as it is (a
        # lost one fails the transaction; ``transaction`` reconnects before the next).
        self.conn = PgConnection(lambda: store.conn)
        self._lock = None
        self._lock_checked = time.monotonic()
        self._lost_logged = float("-inf")
        if not self._take_lock():
            self.close()
            raise RuleError(
                f"another daemon runs the alerts of {store.name}; one daemon per PostgreSQL "
                "database evaluates rules and feeds sinks"
            )

    def _take_lock(self) -> bool:
        """Hold the alerts' lock on a new connection; False when another daemon holds it."""
        self._held = False
        if self._lock is not None:
            self._lock.close()
        self._lock = self._connect(self.url, application_name="memorybank-alerts-lock")
        query = "SELECT pg_try_advisory_lock(%s)"
        self._held = self._lock.execute(query, (ALERTS_LOCK,)).fetchone()[0]
        return self._held

    def _keep_lock(self) -> None:
        """Every LOCK_CHECK_SECONDS: take the lock again when its connection was lost, and
        say so, loudly (each minute), when another daemon took it meanwhile."""
        now = time.monotonic()
        if now < self._lock_checked + LOCK_CHECK_SECONDS:
            return
        self._lock_checked = now
        try:
            if self._held:
                self._lock.execute("SELECT 1")
                return
        except self.errors:
            log.warning("alerts: the connection holding the alerts' lock was lost; taking it again")
        try:
            if self._take_lock():
                log.info("alerts: the alerts' lock of %s is held again", self.store.name)
                return
        except self.errors:
            return  # the server is still away: next time
        if now < self._lost_logged + 60.0:
            return
        self._lost_logged = now
        log.error(
            "alerts: another daemon took the alerts' lock of %s while this one's connection "
            "was lost: both now run alerts (notifications may be sent twice); stop one",
            self.store.name,
        )

    @contextmanager
    def transaction(self):
        self._keep_lock()
        self.store._connect()  # after a lost connection: a new one, or StoreUnavailable
        with self.store.conn.transaction():
            yield self.conn

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
