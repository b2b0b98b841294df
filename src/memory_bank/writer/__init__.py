"""The single writer: what turns received messages into committed rows.

One concern per module:

- ``core``: the Writer — batches messages, commits each batch in one transaction, retries
  while the store cannot write; the front the daemon and the embedded mode drive.
- ``acks``: the acknowledgement book — who waits for which commit, who must resend.
- ``control``: control requests (sync, ping, stats, lease, retention, vacuum), dispatched.
- ``maintenance``: retention and VACUUM runs in bounded steps; ``schedule``: when they run.
- ``spools``: adopting what finished publishers left in their spools.
"""

from .core import Writer, WriterHost, WriterSettings

__all__ = ["Writer", "WriterHost", "WriterSettings"]
