"""The write half that CSMS, charge point and charger code import: fire-and-forget, never blocks.

A call builds its row, takes an id from the publisher's leased id block, appends the row to
an in-memory queue and returns (microseconds). A sender thread does everything else:

- packs queued rows into numbered messages of many rows;
- keeps each message until the daemon acknowledges its commit: in memory up to
  ``memory_bytes``, then in a disk spool up to ``spool_bytes``; past both, ``overflow``
  says whether the newest rows or the oldest messages go, and every dropped record is
  counted and logged once per interval;
- sends them (PUSH), asks for acknowledgements (DEALER), and replays from the first
  unacknowledged message when the daemon asks for it, restarts, or stops answering.

A publisher that exits normally waits (bounded) for its last acknowledgement; what is
still unacknowledged then is left in its spool, which the daemon applies when it can.
Imports nothing heavy: standard library, pyzmq, msgpack, and this package's wire module.

One room per part: ``publisher.py`` (the Publisher: write calls, id lease, the caller's
queue), ``records.py`` (what a call checks and encodes), ``sender.py`` (the sender thread:
packing, sending, acknowledgements, replay), ``outbox.py`` (memory and spool, spill and
drop), ``drops.py`` (what was given up, by reason), ``transport.py`` (the Transport
protocol and ZeroMQ's; embedded.EmbeddedWriter is the other).
"""

from .outbox import DURABILITY_MODES, OVERFLOW_POLICIES
from .publisher import Publisher
from .transport import Transport, ZmqTransport

__all__ = ["Publisher", "Transport", "ZmqTransport", "OVERFLOW_POLICIES", "DURABILITY_MODES"]
