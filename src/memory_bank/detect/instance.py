"""One detector per instance name and database, and the hand-over from a run that crashed.

The instance lock is a file next to the database's other lock files, held with ``flock``
while a run lasts. It also holds the id of the run's publisher until the run ends cleanly
(everything it sent confirmed). A run killed with SIGKILL leaves its id there; its
publisher kept no spool, so what it had sent is either already in the daemon (received,
to be committed within a batch) or lost (found again after the restart). The next run waits
until the daemon has committed everything of that publisher it will ever commit before it
reads which findings are stored: otherwise a finding still in the daemon would be found
again, not seen as stored, and stored twice.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from .. import discovery, wire
from ..control import ControlClient, DaemonUnavailable, locate_control

log = logging.getLogger(__name__)

SETTLE_S = 1.0  # nothing more of the previous run committed for this long: it is all in
SETTLE_LIMIT_S = 600.0  # a daemon that does not answer for this long is not waited for


class DetectorBusy(RuntimeError):
    """Another `memorybank detect` with the same instance name serves this database."""


class InstanceLock:
    """The lock of one instance name on one database, and the id of its run's publisher."""

    def __init__(self, location: str, endpoint: str | None, instance: str):
        key = discovery.location_key(location, endpoint)
        self.path = Path(key).with_name(f"{Path(key).name}-detect-{instance}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DetectorBusy(
                f"another 'memorybank detect' (instance {instance!r}) already reads "
                f"{discovery.redact_url(location)}; stop it, or give this one another "
                "instance name ([detect] instance)"
            ) from None
        self._fd: int | None = fd
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        #: the publisher of the previous run, if it did not end cleanly
        self.previous_publisher = int(text) if text.isdigit() else None

    def record_publisher(self, publisher_id: int) -> None:
        """This run's publisher, kept until ``release(clean=True)``."""
        fd = self._fd
        assert fd is not None, "record_publisher after release"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{publisher_id}\n".encode(), 0)

    def release(self, clean: bool) -> None:
        """Unlock; ``clean``: everything this run sent is confirmed (nothing to wait for)."""
        if self._fd is None:
            return
        if clean:
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


def wait_for_publisher(location: str, endpoint: str | None, publisher_id: int) -> None:
    """Return once the daemon has committed all it received from ``publisher_id``: nothing
    more of it committed for SETTLE_S, and no store error holding rows back. With no daemon
    serving the database, nothing of it can still arrive."""
    try:
        client = ControlClient(locate_control(location, endpoint))
    except DaemonUnavailable:
        return
    shown = discovery.redact_url(location)
    log.info(
        "waiting until the daemon of %s has committed what the previous run sent (publisher %d)",
        shown,
        publisher_id,
    )
    deadline = time.monotonic() + SETTLE_LIMIT_S
    committed = 0
    try:
        while time.monotonic() < deadline:
            try:
                # Urgent: rows of it already received are committed now, not after a batch.
                reply = client.send(
                    wire.sync_request(0, publisher_id, committed + 1, wait=SETTLE_S, urgent=True),
                    timeout=SETTLE_S + 5.0,
                )
                if reply.get("ok"):
                    committed = int(reply["committed"])
                    continue
                if client.request(wire.OP_STATS)["stats"].get("store_error") is None:
                    return
            except DaemonUnavailable:
                pass
            log.info("the daemon of %s is not done yet; waiting", shown)
            time.sleep(SETTLE_S)
        log.warning(
            "the daemon of %s did not confirm the previous run's records within %gs; "
            "a finding it commits later may be stored twice",
            shown,
            SETTLE_LIMIT_S,
        )
    finally:
        client.close()
