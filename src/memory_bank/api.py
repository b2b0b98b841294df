"""MemoryBank: the seed's class, every documented method, on top of publisher + reads.

Writes go through a Publisher (fire-and-forget, ids at once); reads open the database
read-only after a sync barrier, so an instance always reads its own writes. Each write
method takes exactly what the Publisher's of the same name takes (tests/test_api_surface.py
holds them to it), ``timestamp=`` included; only the seed's defaults and its handling of
empty data differ.
"""

from __future__ import annotations

import logging
import os

from . import control, discovery
from .export import write_export
from .locations import DEFAULT_DATABASE
from .publisher import Publisher
from .store import open_reader
from .timeutil import to_timestamp

log = logging.getLogger(__name__)


def _seed_json(value):
    """The seed stored a data/metadata/pattern_data argument only when it was truthy; an
    empty dict or list came back as None, so it does here. Other falsy values (0, False,
    "") the seed lost; they are kept."""
    if isinstance(value, dict | list | tuple) and not value:
        return None
    return value


def _filter(value):
    """The seed filtered on a text argument only when it was truthy: "" means any."""
    return value or None


class MemoryBank:
    """Persistent memory of events, anomalies, sessions, metrics and patterns.

    ``MemoryBank(db_path)`` writes through the daemon that serves ``db_path``
    (start one with ``memorybank daemon --db PATH``). ``db_path`` may be a
    ``postgresql://`` URL; ``endpoint`` then picks one of its daemons. ``embedded=True``
    runs the writer in a thread of this process instead, for one-process scripts and tests.
    Other keyword arguments go to its Publisher (``durability="disk"``, ``overflow``,
    ``memory_bytes``, ``spool_bytes``, ``spool_mode``, ``handle_sigterm``...).
    """

    def __init__(
        self,
        db_path: str | os.PathLike = DEFAULT_DATABASE,
        *,
        embedded: bool = False,
        endpoint: str | None = None,
        sync_timeout: float = 10.0,
        **publisher_options,
    ):
        self.db_path = os.fspath(db_path)
        self._location = discovery.location_key(self.db_path, endpoint)
        self._endpoint = endpoint
        self.sync_timeout = sync_timeout
        self._embedded = None
        self._warned_unsynced = False
        if embedded:
            from .embedded import EmbeddedWriter

            self._embedded = EmbeddedWriter(self.db_path)
            self._publisher = Publisher(self.db_path, transport=self._embedded, **publisher_options)
        else:
            self._publisher = Publisher(self.db_path, endpoint=endpoint, **publisher_options)
        self._reader = open_reader(self.db_path)

    @property
    def publisher(self) -> Publisher:
        return self._publisher

    # -- read-your-writes -------------------------------------------------------------
    def _sync(self) -> None:
        """Wait until this instance's writes are committed (free when none are pending)."""
        if not self._publisher.unflushed:
            return
        if self._embedded is None and not self._daemon_reachable():
            if not self._warned_unsynced:
                self._warned_unsynced = True
                log.warning(
                    "no daemon serves %s: reads miss this process's unsent writes; start one "
                    "with 'memorybank daemon --db %s'",
                    self._display,
                    self._display,
                )
            return
        if not self._publisher.flush(self.sync_timeout):
            log.warning(
                "the daemon of %s did not confirm pending writes within %gs; reading without them",
                self._display,
                self.sync_timeout,
            )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write made so far is committed; False if not within ``timeout``."""
        return self._publisher.flush(self.sync_timeout if timeout is None else timeout)

    # -- events -----------------------------------------------------------------------
    def log_event(
        self, event_type: str, component: str, message: str = "", data=None, *, timestamp=None
    ) -> int:
        """Record a system event; returns its id at once. ``timestamp`` (seconds since the
        epoch) is when it happened, if not now."""
        return self._publisher.log_event(
            event_type, component, message, _seed_json(data), timestamp=timestamp
        )

    def get_events(self, event_type=None, component=None, since=None, limit: int = 100):
        """Most recent first; a negative or None ``limit`` means no limit."""
        self._sync()
        return self._reader.get_events(
            _filter(event_type), _filter(component), to_timestamp(since), limit
        )

    # -- anomalies --------------------------------------------------------------------
    def record_anomaly(
        self,
        anomaly_type: str,
        severity: str,
        description: str = "",
        pattern_data=None,
        current_value=None,
        expected_value=None,
        *,
        timestamp=None,
    ) -> int:
        """Record an anomaly (deviation = |current - expected|); returns its id at once."""
        return self._publisher.record_anomaly(
            anomaly_type,
            severity,
            description,
            _seed_json(pattern_data),
            current_value,
            expected_value,
            timestamp=timestamp,
        )

    def get_anomalies(self, anomaly_type=None, severity=None, since=None, limit: int = 100):
        self._sync()
        return self._reader.get_anomalies(
            _filter(anomaly_type), _filter(severity), to_timestamp(since), limit
        )

    def get_anomaly_count(self, since=None, anomaly_type=None, severity=None) -> int:
        """Number of anomalies, optionally since a time and of one type or severity.

        A text first argument is taken as the anomaly type.
        """
        if isinstance(since, str) and anomaly_type is None:
            since, anomaly_type = None, since
        self._sync()
        return self._reader.get_anomaly_count(
            _filter(anomaly_type), _filter(severity), to_timestamp(since)
        )

    # -- sessions ---------------------------------------------------------------------
    def start_session(self, session_id: str, *, timestamp=None) -> int:
        """Start a session; returns its row's id at once.

        Starting a session that exists keeps the earlier record and its id (the seed
        raised IntegrityError); the id returned then is one no row has.
        """
        return self._publisher.start_session(session_id, timestamp=timestamp)

    def increment_session_anomaly_count(self, session_id: str, *, timestamp=None) -> None:
        """Count an anomaly against a session (counts even if it arrives before the start)."""
        self._publisher.increment_session_anomaly_count(session_id, timestamp=timestamp)

    def end_session(
        self,
        session_id: str,
        total_energy=None,
        avg_current=None,
        max_current=None,
        min_current=None,
        *,
        timestamp=None,
    ) -> None:
        """End a session; statistics not given are computed from the session's metrics."""
        self._publisher.end_session(
            session_id, total_energy, avg_current, max_current, min_current, timestamp=timestamp
        )

    def get_session(self, session_id: str) -> dict | None:
        self._sync()
        return self._reader.get_session(session_id)

    def get_recent_sessions(self, limit: int = 10) -> list[dict]:
        self._sync()
        return self._reader.get_recent_sessions(limit)

    # -- metrics ----------------------------------------------------------------------
    def record_metric(
        self, metric_name: str, metric_value: float, unit="", metadata=None, *, timestamp=None
    ) -> int:
        """Record a measurement; returns its id at once (the seed returned None)."""
        return self._publisher.record_metric(
            metric_name, metric_value, unit, _seed_json(metadata), timestamp=timestamp
        )

    def get_metrics(self, metric_name=None, since=None, limit: int = 1000) -> list[dict]:
        self._sync()
        return self._reader.get_metrics(metric_name, to_timestamp(since), limit)

    def get_metric_statistics(self, metric_name: str, since=None) -> dict:
        """{'min', 'max', 'avg', 'count'} of a metric; 0 for each when no row matches (the
        seed's ``row['min_value'] or 0``)."""
        self._sync()
        stats = self._reader.get_metric_statistics(metric_name, to_timestamp(since))
        return {key: stats[key] or 0 for key in ("min", "max", "avg", "count")}

    # -- patterns ---------------------------------------------------------------------
    def record_pattern(
        self, pattern_type: str, pattern_data, confidence: float = 1.0, *, timestamp=None
    ) -> None:
        """Record a pattern; the same type and data (key order aside) raises its frequency."""
        self._publisher.record_pattern(pattern_type, pattern_data, confidence, timestamp=timestamp)

    def get_patterns(self, pattern_type=None, min_frequency: int = 1) -> list[dict]:
        self._sync()
        return self._reader.get_patterns(_filter(pattern_type), min_frequency)

    def forecast_anomaly(self, within_s: float = 60.0) -> dict:
        """The probability of an anomaly within ``within_s`` seconds and when the next one
        is due, from the learned cycles that include one (``memorybank detect``)."""
        from .detect.cycles import PATTERN_TYPE
        from .detect.forecast import forecast

        self._sync()
        return forecast(self._reader.get_patterns(pattern_type=PATTERN_TYPE), within_s)

    # -- analytics and data management --------------------------------------------------
    def get_dashboard_summary(self) -> dict:
        self._sync()
        return self._reader.get_dashboard_summary()

    def export_to_json(self, filepath, since=None) -> dict[str, int]:
        """Write the seed's export (events, anomalies, sessions, patterns, summary; and
        metrics) to a JSON file, every row, streamed; returns the rows written per table.

        ``since`` bounds events, anomalies and metrics; sessions and patterns are written
        whole, as the seed wrote them.
        """
        self._sync()
        with open(filepath, "w", encoding="utf-8") as out:
            return write_export(self._reader, out, since=to_timestamp(since))

    def clear_old_data(self, days: float = 7) -> dict[str, int]:
        """Delete events, anomalies and metrics older than ``days``, through the writer.

        Returns rows deleted per table. Sessions and patterns are kept, as in the seed.
        """
        self.flush()
        if self._embedded is None:
            return control.clear_old_data(self.db_path, days, self._endpoint)
        run = self._embedded.call(
            lambda writer: writer.run_maintenance("retention", days=days), timeout=3600
        )
        return control.deleted_by_retention({"run": run})

    def _daemon_reachable(self) -> bool:
        """A local daemon holds the lock; one named by endpoint may be on another host."""
        return self._endpoint is not None or discovery.daemon_running(self._location)

    def close(self) -> None:
        """Hand pending writes over (bounded wait), then release everything."""
        self._publisher.close()
        self._reader.close()
        if self._embedded is not None:
            self._embedded.shutdown()
            self._embedded = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        mode = "embedded" if self._embedded is not None else "daemon"
        return f"MemoryBank({self._display!r}, {mode})"

    @property
    def _display(self) -> str:
        return discovery.redact_url(self.db_path)
