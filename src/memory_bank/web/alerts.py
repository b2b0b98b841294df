"""The notifications the live stream carries, followed in the daemon's outbox.

The daemon writes each notification to its outbox (``mb_outbox``) in the transaction
that caused it: the batch's, or a transaction of its own for what time alone causes
(an absence, a resolve_after, a repeat). So the web process reads them there, by
``seq``, rather than from the daemon's tail (which carries only events and anomalies,
and only batches that hold some): one indexed read a poll for every browser, nothing
missed when the tail drops a message, and a daemon on another host (PostgreSQL) is
followed as well as a local one.
"""

from __future__ import annotations

import json

from ..alerts import outbox
from ..alerts.reading import reader_query

READ_ROWS = 1000  # outbox rows read a poll: a burst beyond it comes over the next polls
REMEMBERED = 4096  # notification ids kept to show each once (it has a row per sink)


class AlertFollower:
    """The notifications written to the outbox since the last look, once each, as the
    sinks receive them (the webhook's body) with their ``severity``. Blocking: the live
    feed runs ``poll`` in a thread, one poll at a time."""

    def __init__(self, reader):
        self.query = reader_query(reader)
        self.after: int | None = None  # the last outbox row seen; None: not yet placed
        self.shown: dict[str, None] = {}  # ids in the order seen (an ordered set)

    def poll(self) -> list[dict]:
        """What was written since the last poll (the first poll places the follower after
        what is already there, and returns nothing)."""
        if self.after is None:
            self.after = outbox.last_seq(self.query)
            return []
        rows = outbox.written_after(self.query, self.after, READ_ROWS)
        notes = []
        for seq, nid, body in rows:
            self.after = seq
            if nid in self.shown:
                continue  # the same notification for another sink
            self.shown[nid] = None
            if len(self.shown) > REMEMBERED:
                del self.shown[next(iter(self.shown))]
            note = json.loads(body)
            note["severity"] = outbox.severity_of(note.get("record"))
            notes.append(note)
        return notes
