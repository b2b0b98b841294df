"""The store interface (huey's BaseStorage is the model): what each method promises.

``Store`` is the writer's side, used by one writer process or thread at a time per
endpoint; ``Reader`` answers the seed's queries. SQLite and PostgreSQL implement both;
what they share is written once in ``sql.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)
if TYPE_CHECKING:  # readers never load msgpack
    from typing import ClassVar

    from ..wire import Message

__all__ = [
    "Applied",
    "Applying",
    "InvalidDatabase",
    "Reader",
    "Store",
    "StoreGone",
    "StoreRefused",
    "StoreUnavailable",
    "TABLE_RECHECK_SECONDS",
]

# A table a reader did not find (an older database's missing rollups) is looked for again
# this long after, not once per connection: a daemon may upgrade the database under a reader
# that stays open for days, such as the dashboard's.
TABLE_RECHECK_SECONDS = 5.0


class Store:
    """The writer's side of one database."""

    #: Errors that say the batch's own records are wrong: the writer then applies its
    #: messages one by one and refuses only the bad ones.
    batch_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Errors that say the store cannot write now (disk full, server down): the writer
    #: keeps the batch, stops reading and retries with backoff.
    unavailable_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: A password-free name of the database, for logs, ``ping`` and ``status``.
    name: str = ""
    #: How many times ``batch_rows`` a due batch may grow to while more records are
    #: already waiting (a backlog): where each batch pays round trips and a commit wait,
    #: a backlog is then taken in fewer of them. 1: batches stay at ``batch_rows``.
    batch_growth: int = 1
    #: Alerts' hook into each batch (alerts/engine.py's AlertEngine): ``stage({"events":
    #: rows, "anomalies": rows, "metrics": rows})`` inside the batch's transaction (on the
    #: store's connection, through its ``alert_storage()``) right before COMMIT, then
    #: ``committed()`` after it or ``discarded()`` after a rollback. None: no alerts.
    batch_hook = None

    def load_watermarks(self) -> dict[int, int]:
        """Per publisher, the last message sequence whose rows are committed."""
        raise NotImplementedError

    def lease_id_block(self) -> int:
        """A block number never handed out before, durably (ids are block << 32 + n)."""
        raise NotImplementedError

    def apply(self, messages: list[Message], watermarks: dict[int, int], rejects=()) -> int:
        """Apply messages and refused-input rows in one transaction; returns rows stored.

        A message at or below its publisher's watermark is skipped (applied once);
        ``watermarks`` is updated in place only after the commit.
        """
        raise NotImplementedError

    def start_apply(
        self,
        messages: list[Message],
        watermarks: dict[int, int],
        rejects=(),
        wake: Callable[[], None] | None = None,
    ) -> Applying:
        """Start applying as ``apply`` does; returns the batch on its way (``Applying``). A
        store that makes a batch durable on a thread of its own (SQLite's COMMIT) returns
        before that is done and calls ``wake()`` from that thread once it is; ``result()``
        then finishes the batch on the caller's thread (``watermarks`` advance there, never
        before). Nothing else may use the store until ``result()`` was called. The default
        applies at once."""
        began = time.perf_counter()
        stored = self.apply(messages, watermarks, rejects)
        return Applied(stored, time.perf_counter() - began)

    def retention_steps(
        self, cutoffs: dict[str, float], chunk_rows: int = 5000
    ) -> Iterator[tuple[str, int] | None]:
        """Remove rows older than each table's cutoff in short steps; yields (table, rows)
        after each, so ingest runs between steps. A step may yield None instead: work
        running elsewhere (another connection) is not finished; ask again shortly."""
        raise NotImplementedError

    def vacuum_steps(self) -> Iterator[int | None]:
        """The store's housekeeping after retention, in steps; yields bytes reclaimed
        (or None, as retention_steps does)."""
        raise NotImplementedError

    def maintenance_waiting(self) -> str | None:
        """What a running maintenance step has been waiting for, if long enough to tell
        (``status`` shows it), else None."""
        return None

    def record_maintenance(self, run: dict) -> None:
        """Keep what a maintenance run did (shown by ``status``)."""
        raise NotImplementedError

    def maintenance_runs(self, limit: int = 20) -> list[dict]:
        """The newest maintenance runs, newest first."""
        raise NotImplementedError

    def last_run(self, job: str) -> float:
        """When ``job`` last finished well (or when scheduled maintenance began)."""
        raise NotImplementedError

    def set_max_db_bytes(self, max_db_bytes: int | None) -> None:
        """Cap the database's size where the store can (None lifts the cap)."""

    def check_files(self) -> None:
        """Raise StoreGone when the files the store writes are no longer the database its
        location names (a SQLite file deleted or replaced); a server has none to check."""

    def size_figures(self) -> dict[str, int]:
        """Sizes ``status`` shows (bytes)."""
        return {}

    def close(self) -> None:
        """Release the connection(s); nothing is pending after ``apply`` returned."""


class Applying:
    """A batch on its way into the store (``Store.start_apply``)."""

    def done(self) -> bool:
        """Its COMMIT has returned: ``result()`` will not wait."""
        raise NotImplementedError

    def result(self) -> int:
        """Wait for its COMMIT, finish it on the caller's thread (once) and return the rows
        stored, or raise what ``apply`` would."""
        raise NotImplementedError

    @property
    def seconds(self) -> float:
        """From its first statement to its COMMIT's return (or now)."""
        raise NotImplementedError


class Applied(Applying):
    """A batch ``Store.start_apply`` applied in the caller's thread: nothing to wait for."""

    def __init__(self, stored: int, seconds: float):
        self.stored = stored
        self._seconds = seconds

    def done(self) -> bool:
        return True

    def result(self) -> int:
        return self.stored

    @property
    def seconds(self) -> float:
        return self._seconds


class Reader:
    """The seed's read queries, with its arguments and return shapes: rows as dicts in the
    seed's column order, times as epoch seconds, JSON columns decoded. Safe to share
    between threads (each thread reads on a connection of its own)."""

    def check(self) -> Reader:
        """Open this thread's connection now, so that a location holding no MemoryBank
        database (InvalidDatabase) or a server that cannot be reached (StoreUnavailable)
        fails here rather than at the first query."""
        raise NotImplementedError

    #: The driver's parameter marker in SQL given to ``tuples`` ("?" or "%s").
    placeholder = "?"

    def tuples(self, sql: str, params=()) -> list[tuple]:
        """A read-only query's rows as plain tuples, each seeing the newest commits: for
        readers of many rows that write their own SQL (detection's committed-row reader)."""
        raise NotImplementedError

    # -- bounded reads, for pages that must answer in time (the web dashboard) ----------
    def metric_statistics(
        self, names, since: float, until: float, scan_budget: int | None = None
    ) -> tuple[dict[str, dict], float, float]:
        """get_metric_statistics for several metrics over [since, until) in one pass, and
        the window the figures cover (a store with rollups may leave out dense partial
        minutes at the ends beyond ``scan_budget`` rows)."""
        raise NotImplementedError

    def count_up_to(self, table: str, since, until, up_to: int) -> int:
        """Rows of ``table`` in the window, counted no further than ``up_to``."""
        raise NotImplementedError

    def anomaly_slices(self, since: float, until: float, slices: int, up_to: int) -> list[dict]:
        """The window cut into ``slices``; per slice holding anomalies ``{slice, count,
        anomaly}``: its count (up to ``up_to``) and its most severe anomaly."""
        raise NotImplementedError

    def get_events(self, event_type=None, component=None, since=None, limit=100, until=None):
        """The seed's get_events: newest first; a None filter is no filter, a negative or
        None ``limit`` no limit."""
        raise NotImplementedError

    def get_anomalies(self, anomaly_type=None, severity=None, since=None, limit=100, until=None):
        """The seed's get_anomalies: newest first, filtered as get_events."""
        raise NotImplementedError

    def get_metrics(self, metric_name=None, since=None, limit=1000, until=None) -> list[dict]:
        """The seed's get_metrics: newest first, filtered as get_events."""
        raise NotImplementedError

    def iter_events(
        self, limit=None, since=None, until=None, event_type=None, component=None, newest_first=True
    ) -> Iterator[dict]:
        """Events with filters, streamed (never all in memory)."""
        raise NotImplementedError

    def iter_anomalies(
        self,
        limit=None,
        since=None,
        until=None,
        anomaly_type=None,
        severity=None,
        newest_first=True,
    ) -> Iterator[dict]:
        """Anomalies with filters, streamed."""
        raise NotImplementedError

    def iter_metrics(
        self, limit=None, since=None, until=None, metric_name=None, newest_first=True
    ) -> Iterator[dict]:
        """Metrics with filters, streamed."""
        raise NotImplementedError

    def get_anomaly_count(self, anomaly_type=None, severity=None, since=None) -> int:
        """How many anomalies match the filters."""
        raise NotImplementedError

    def get_session(self, session_id: str) -> dict | None:
        """One session by its id, or None."""
        raise NotImplementedError

    def get_recent_sessions(self, limit=10) -> list[dict]:
        """The sessions that started last, newest first."""
        raise NotImplementedError

    def get_metric_statistics(self, metric_name, since=None, until=None) -> dict:
        """{'min', 'max', 'avg', 'count'} of a metric in a time window."""
        raise NotImplementedError

    def get_patterns(self, pattern_type=None, min_frequency=1) -> list[dict]:
        """Patterns seen at least ``min_frequency`` times, most frequent first."""
        raise NotImplementedError

    def get_dashboard_summary(self) -> dict:
        """The seed's summary dict: its keys in its order (totals, the last hour, anomalies
        by severity, active sessions, the time it was made)."""
        raise NotImplementedError

    def iter_table(
        self, table: str, since=None, until=None, newest_first: bool = False
    ) -> Iterator[dict]:
        """Every row of a table in time order, streamed (exports); ValueError for a table
        that is not one of the seed's five."""
        raise NotImplementedError

    def count(self, table: str, since=None, until=None) -> int:
        """How many rows of a table lie in the time window."""
        raise NotImplementedError

    def metric_buckets(self, metric_name: str, since: float, until: float, buckets: int):
        """The metric's avg/min/max over equal time slices, computed in the database."""
        raise NotImplementedError

    def estimate_metric_rows(self, metric_name: str, since: float, until: float) -> int | None:
        """About how many rows of the metric lie in the window (an upper bound, read
        cheaply), or None where the store cannot tell without counting them."""
        return None

    def rollup_seconds(self) -> tuple[int, ...]:
        """The slices (seconds, finest first) of the metric rollups the writer keeps here:
        metric_buckets answers from one when its buckets are made of them, whole."""
        return ()

    def metric_names(self) -> list[str]:
        """The names of the recorded metrics, sorted."""
        raise NotImplementedError

    def close(self) -> None:
        """Close this thread's connection."""


class StoreUnavailable(ConnectionError):
    """The database cannot be reached now (server down, refused, wrong address)."""


class InvalidDatabase(ValueError):
    """The location holds no MemoryBank database: a file that is not SQLite, another
    application's database, or one that cannot be opened."""


class StoreGone(StoreUnavailable):
    """The files the writer writes are no longer the database at its path (deleted,
    renamed or replaced): nothing more is acknowledged until an operator acts."""


class StoreRefused(RuntimeError):
    """A database the writer will not serve as it is (corrupt, a second name of a database
    served under another, a schema from a newer MemoryBank): restarting does not help
    until an operator acts."""
