"""``memorybank status``: the figures of the daemon serving a database, as lines of text.

Click-free, so that the console script can answer ``memorybank status`` without loading
click (cli_fast); the click command echoes the very same lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from . import discovery
from .formatting import record_lines
from .locations import daemon_path

# wire.request(wire.OP_STATS, 1), written out: wire loads dataclasses, a fifth of this
# command's start-up (tests/test_startup.py checks that the two agree).
STATS_REQUEST = {"op": "stats", "rid": 1}
TIMEOUT = 5.0

STATUS_ROWS = [
    ("pid", "pid"),
    ("db", "database"),
    ("uptime_seconds", "uptime (s)"),
    ("received_records", "records received"),
    ("committed_records", "records committed"),
    ("received_per_second", "received / s (10 s)"),
    ("committed_per_second", "committed / s (10 s)"),
    ("queue_depth", "queue depth"),
    ("rejected_records", "records rejected"),
    ("rejected_messages", "messages rejected"),
    ("dropped_by_publishers", "dropped by publishers"),
    ("duplicate_records", "duplicates skipped"),
    ("batches", "batches"),
    ("publishers", "publishers seen"),
    ("store_error", "store error"),
    ("endpoint_problem", "endpoint problem"),
    ("refused_handshakes", "refused handshakes"),
    ("adopted_spools", "spools adopted"),
    ("refused_spools", "spools refused"),
    ("spool_corrupt_bytes", "spool bytes corrupt"),
    ("maintenance_running", "maintenance running"),
    ("maintenance_waiting", "maintenance waiting"),
    ("db_bytes", "database bytes"),
    ("wal_bytes", "WAL bytes"),
    ("data_endpoint", "data endpoint"),
    ("control_endpoint", "control endpoint"),
]


def describe_run(run: dict | None) -> str:
    """One maintenance run (retention or VACUUM) in a line."""
    if not run:
        return "never"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started"]))
    took = (run["finished"] or run["started"]) - run["started"]
    if run["status"] != "ok":
        return f"{when} ({run['trigger']}) FAILED: {run['error']}"
    if run["job"] == "retention":
        what = ", ".join(f"{t} {n}" for t, n in (run["deleted"] or {}).items()) or "nothing"
        what = f"deleted {what}"
    else:
        what = f"reclaimed {run['bytes_reclaimed']} bytes"
    return (
        f"{when} ({run['trigger']}), {took:.1f}s, {what}, "
        f"longest step {run['longest_step_ms']:.0f} ms"
    )


def local_figures(db: str, endpoint: str | None = None, timeout: float = TIMEOUT) -> dict | None:
    """The figures of a daemon on this host serving ``db``, asked on its local ipc socket
    without loading pyzmq (zmtp.py); None when that way is closed (no daemon here, a
    network endpoint only, endpoints it did not record, an unexpected answer)."""
    from .zmtp import NoAnswer, request

    lock = daemon_path(db, endpoint)
    if not discovery.lock_held(lock):
        return None
    endpoints = discovery.recorded_endpoints(discovery.read_info_file(lock))
    if endpoints is None or not endpoints.control.startswith("ipc://"):
        return None
    control = endpoints.control
    import msgpack

    try:
        raw = request(control[len("ipc://") :], msgpack.packb(STATS_REQUEST), timeout)
    except NoAnswer:
        from .control import DaemonUnavailable

        raise DaemonUnavailable(
            f"no answer to 'stats' from {control} within {timeout:g}s"
        ) from None
    reply = msgpack.unpackb(raw, raw=False) if raw is not None else None
    if not isinstance(reply, dict) or reply.get("rid") != 1 or "stats" not in reply:
        return None
    return reply["stats"]


def daemon_figures(db: str, endpoint: str | None = None) -> dict:
    """The figures of the daemon serving ``db``; DaemonUnavailable saying why there are none
    (a daemon waiting for its database says what it waits for)."""
    try:
        figures = local_figures(db, endpoint)
        if figures is None:  # through pyzmq: a network endpoint, or to learn why not
            from .control import daemon_stats

            figures = daemon_stats(db, TIMEOUT, endpoint)
        return figures
    except Exception as exc:
        from .control import DaemonUnavailable

        if not isinstance(exc, DaemonUnavailable):
            raise
        lock = daemon_path(db, endpoint)
        info = discovery.read_info_file(lock) or {}
        reason = str(exc)
        if info.get("store_error") and discovery.lock_held(lock):
            reason = f"the daemon (pid {info.get('pid')}) waits for its database: "
            reason += info["store_error"]
        raise DaemonUnavailable(reason) from None


def status_lines(db: str, output: str, endpoint: str | None = None) -> Iterator[str]:
    """The daemon's figures: a table for people, or one record for scripts."""
    figures = daemon_figures(db, endpoint)
    if output != "table":
        yield from record_lines(figures, output)
        return
    width = max(len(label) for _, label in STATUS_ROWS)
    for key, label in STATUS_ROWS:
        value = figures.get(key)
        yield f"{label:<{width}}  {'-' if value is None else value}"
    if figures.get("alerts"):  # a daemon with alert rules or sinks (loads click)
        from .alerts.command import status_lines as alerts_lines

        yield from alerts_lines(figures["alerts"], width)
    last = figures.get("last_maintenance") or {}
    upcoming = figures.get("next_maintenance") or {}
    for job in ("retention", "vacuum"):
        yield f"{'last ' + job:<{width}}  {describe_run(last.get(job))}"
        yield f"{'next ' + job:<{width}}  {upcoming.get(job) or 'not scheduled'}"
