"""The acknowledgement book: who waits for which of their messages to be committed, and
which publishers were told to resend.

A publisher keeps every message until it is acknowledged (committed means kept); it asks
with a sync request how far the writer has committed its messages, and may wait for it.
The answer carries the writer's ``instance``: when it changes, the publisher replays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import wire

Reply = Callable[[dict], None]

# The longest a sync request may wait for its commit.
MAX_WAIT_SECONDS = 600.0


@dataclass
class Waiter:
    """A publisher waiting until its messages up to ``seq`` are committed."""

    publisher_id: int
    seq: int
    deadline: float
    urgent: bool  # commit now rather than at the end of the batch window
    rid: object
    reply: Reply


class AckBook:
    """Acknowledgements owed to publishers, answered from ``watermarks``: per publisher,
    the last message committed (the writer's own map, which the store advances as it
    commits)."""

    def __init__(self, watermarks: dict[int, int], instance: str):
        self.watermarks = watermarks
        self.instance = instance
        self.waiters: list[Waiter] = []
        # Per publisher, the message it must resend from (one arrived ahead of its turn).
        self.resend_from: dict[int, int] = {}
        # Per publisher, the message at or below which it sends nothing again (its sync
        # requests say so): after a new database, what it replays carries an older base.
        self.settled: dict[int, int] = {}
        # Per publisher, how many records it had to drop (its sync requests say so).
        self.dropped: dict[int, int] = {}

    def committed_seq(self, publisher_id: int) -> int:
        return self.watermarks.get(publisher_id, 0)

    def body(self, rid: object, pub: int, seq: int) -> dict:
        """The answer to a sync request for ``pub``'s messages up to ``seq``."""
        return wire.ack_reply(
            rid, self.committed_seq(pub), seq, self.instance, self.resend_from.get(pub)
        )

    def wait(
        self, pub: int, seq: int, wait: float, urgent: bool, rid: object, reply: Reply
    ) -> None:
        """Answer now when there is nothing to wait for, else once ``seq`` is committed,
        the publisher must resend, or ``wait`` seconds have passed."""
        wait = min(wait, MAX_WAIT_SECONDS)
        if self.committed_seq(pub) >= seq or pub in self.resend_from or wait <= 0:
            reply(self.body(rid, pub, seq))
        else:
            self.waiters.append(Waiter(pub, seq, time.monotonic() + wait, urgent, rid, reply))

    def settle(self, pub: int, base: int) -> None:
        self.settled[pub] = max(self.settled.get(pub, 0), base)

    def ask_resend(self, pub: int, from_seq: int) -> None:
        """``pub`` must resend from ``from_seq``: those waiting on it are told at once."""
        self.resend_from[pub] = from_seq
        self.answer(pub)

    def resumed(self, pub: int) -> None:
        """``pub``'s next message arrived in order: no resend is asked of it any more."""
        self.resend_from.pop(pub, None)

    def urgently_awaited(self, pending_seq: dict[int, int]) -> bool:
        """Whether someone waits urgently for a message that is in the pending batch."""
        return any(w.urgent and pending_seq.get(w.publisher_id, 0) >= w.seq for w in self.waiters)

    def next_deadline(self) -> float | None:
        return min((w.deadline for w in self.waiters), default=None)

    def answer(self, only_publisher: int | None = None) -> None:
        """Answer every waiter whose commit came, whose deadline passed or who must resend."""
        now = time.monotonic()
        still = []
        for w in self.waiters:
            if only_publisher is not None and w.publisher_id != only_publisher:
                still.append(w)
                continue
            if (
                self.committed_seq(w.publisher_id) >= w.seq
                or now >= w.deadline
                or w.publisher_id in self.resend_from
            ):
                w.reply(self.body(w.rid, w.publisher_id, w.seq))
            else:
                still.append(w)
        self.waiters = still

    def release_all(self) -> None:
        """Answer everyone still waiting with what is committed (the writer stops)."""
        for w in self.waiters:
            w.reply(self.body(w.rid, w.publisher_id, w.seq))
        self.waiters = []
