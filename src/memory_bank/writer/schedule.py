"""Scheduled maintenance: APScheduler cron jobs that ask the daemon's writer to run it.

Jobs never touch the database themselves: each sends a request over an inproc socket to
the daemon's control loop and waits for the result, so retention and VACUUM run on the
single writer, in bounded steps between batches. A run missed while the daemon was down
(its cron time passed after the last recorded run) runs once at the next start.
"""

from __future__ import annotations

import datetime as dt
import logging

import msgpack
import zmq
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from .. import wire

log = logging.getLogger(__name__)

NEVER = "never"
AFTER_RETENTION = "after-retention"
JOB_TIMEOUT_MS = 6 * 3600 * 1000


def parse_schedule(text: str, key: str, allow_after: bool = False) -> CronTrigger | str:
    """A crontab line ("0 3 * * *"), "never", or (vacuum) "after-retention"."""
    if text == NEVER or (allow_after and text == AFTER_RETENTION):
        return text
    try:
        return CronTrigger.from_crontab(text)
    except ValueError as exc:
        extra = ', "after-retention"' if allow_after else ""
        raise ValueError(
            f"{key}: {text!r} is not a crontab schedule ({exc}); expected five fields "
            f'like "0 3 * * *", or "never"{extra}'
        ) from None


class MaintenanceSchedule:
    """Owns the BackgroundScheduler; ``control_endpoint`` is the daemon's inproc ROUTER."""

    def __init__(self, ctx: zmq.Context, control_endpoint: str):
        self._ctx = ctx
        self._endpoint = control_endpoint
        self._scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600}
        )
        self.retention: CronTrigger | str = NEVER
        self.vacuum: CronTrigger | str = NEVER

    def configure(self, retention_schedule: str, vacuum_schedule: str) -> None:
        """(Re)place the jobs; raises ValueError (with the key) for a bad schedule."""
        retention = parse_schedule(retention_schedule, "maintenance.retention_schedule")
        vacuum = parse_schedule(vacuum_schedule, "maintenance.vacuum_schedule", True)
        self.retention, self.vacuum = retention, vacuum
        self._scheduler.remove_all_jobs()
        then = ["vacuum"] if vacuum == AFTER_RETENTION else []
        if isinstance(retention, CronTrigger):
            self._scheduler.add_job(
                self._run, retention, args=("retention", then), id="retention", name="retention"
            )
        if isinstance(vacuum, CronTrigger):
            self._scheduler.add_job(
                self._run, vacuum, args=("vacuum", []), id="vacuum", name="vacuum"
            )

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=False)

    def missed(self, last_runs: dict[str, float]) -> list[tuple[str, list[str]]]:
        """Jobs whose cron time passed since their last run: (job, follow-ups) to run now."""
        now = dt.datetime.now().astimezone()
        due = []
        for job, trigger in (("retention", self.retention), ("vacuum", self.vacuum)):
            if not isinstance(trigger, CronTrigger):
                continue
            last = dt.datetime.fromtimestamp(last_runs[job]).astimezone()
            fire = trigger.get_next_fire_time(None, last)
            if fire is not None and fire <= now:
                then = ["vacuum"] if job == "retention" and self.vacuum == AFTER_RETENTION else []
                due.append((job, then))
        return due

    def next_runs(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {"retention": None, "vacuum": None}
        for job in self._scheduler.get_jobs():
            if job.next_run_time is not None:
                out[job.id] = job.next_run_time.isoformat(timespec="seconds")
        if self.vacuum == AFTER_RETENTION:
            out["vacuum"] = AFTER_RETENTION
        return out

    def _run(self, job: str, then: list[str]) -> None:
        """In an APScheduler worker thread: ask the writer, wait for the run's result."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self._endpoint)
            sock.send(
                msgpack.packb(wire.maintenance_request(job, 1, trigger="schedule", then=then))
            )
            if not sock.poll(JOB_TIMEOUT_MS):
                log.error("scheduled %s got no answer from the writer", job)
                return
            reply = msgpack.unpackb(sock.recv(), raw=False)
            if not reply.get("ok"):
                log.error("scheduled %s failed: %s", job, reply.get("error"))
        finally:
            sock.close(0)
