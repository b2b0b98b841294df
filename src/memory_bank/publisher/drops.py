"""The records a publisher gave up, by reason: counted, and never silent.

The caller's queue, the outbox and the sender each give records up for their own reasons;
they count them here, where each reason is logged at most once per DROP_LOG_SECONDS with
the count since its last line.
"""

from __future__ import annotations

import logging
import time

from .. import sockets

log = logging.getLogger(__package__)  # one logger for the publisher, as before it was a package

# Why a record was dropped (Publisher.dropped_by_reason).
DROP_REASONS = {
    "overflow": "memory and spool full, or the spool cannot be written",
    "unencodable": "msgpack cannot pack the record",
    "oversized": "the record packs to more than the daemon's message limit "
    f"({sockets.DAEMON_MAXMSGSIZE // 2**20} MiB)",
    "unspooled": "not confirmed at close and the spool could not take it",
}
DROP_LOG_SECONDS = 10.0


class Drops:
    """Records given up: ``total`` and ``by_reason`` (a reason of DROP_REASONS -> records).

    ``bounds`` is the outbox whose limits and overflow policy an overflow line names;
    ``location`` the database the publisher writes to (None for a named endpoint).
    """

    def __init__(self, publisher_id: int, bounds, location=None):
        self.publisher_id = publisher_id
        self.bounds = bounds
        self.location = location
        self.total = 0
        self.by_reason: dict[str, int] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (when, count then)

    def count(self, records: int, reason: str = "overflow", detail: str = "") -> None:
        """Count dropped records by reason; log each reason at most once per 10 s with the
        count since its last line (never silent)."""
        self.total += records
        self.by_reason[reason] = self.by_reason.get(reason, 0) + records
        now = time.monotonic()
        logged_at, logged = self._logged.get(reason, (-DROP_LOG_SECONDS, 0))
        if now - logged_at < DROP_LOG_SECONDS:
            return
        total = self.by_reason[reason]
        self._logged[reason] = (now, total)
        if reason == "overflow":
            log.error(
                "publisher %d: buffers full (memory %d bytes, spool %d bytes, policy %s): "
                "dropped %d record(s) since the last report, %d in all; is the daemon of %s "
                "running?",
                self.publisher_id,
                self.bounds.memory_bytes,
                self.bounds.spool_bytes,
                self.bounds.overflow,
                total - logged,
                self.total,
                self.location or "this endpoint",
            )
        else:
            log.error(
                "publisher %d: refused %d record(s) since the last report (%s: %s%s); "
                "%d dropped in all",
                self.publisher_id,
                total - logged,
                reason,
                DROP_REASONS.get(reason, reason),
                f"; last: {detail}" if detail else "",
                self.total,
            )
