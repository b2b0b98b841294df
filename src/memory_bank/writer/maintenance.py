"""Maintenance runs: retention and VACUUM, one bounded step at a time between batches.

The writer takes a step whenever it has time, so ingest keeps flowing while a run goes on;
runs come from the schedule (``schedule``), from a catch-up at start (a run missed while the
daemon was down) and from control requests. Each run is recorded in the store.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import wire
from ..store.base import Store
from .acks import Reply

if TYPE_CHECKING:
    from .schedule import MaintenanceSchedule

log = logging.getLogger(__name__)

JOBS = wire.MAINTENANCE_JOBS
# How long each table's rows are kept by default, in days (None keeps them forever).
DEFAULT_RETENTION_DAYS: dict[str, float | None] = {
    "events": 7,
    "anomalies": 7,
    "metrics": 7,
    "sessions": None,
    "patterns": None,
}
DEFAULT_CHUNK_ROWS = 5000
# How often a maintenance step whose work runs elsewhere (a PostgreSQL detach on its own
# connection) is asked whether it is done.
POLL_SECONDS = 0.05


@dataclass
class MaintenanceTask:
    """A retention or vacuum run in progress, advanced one bounded step at a time."""

    job: str
    trigger: str  # "schedule", "catch-up" (missed while down) or "request"
    reply: Reply | None
    rid: object
    days: float | None
    then: tuple[str, ...] = ()
    steps: Iterator[tuple[str, int] | int | None] | None = None
    started: float = 0.0
    deleted: dict = field(default_factory=dict)
    reclaimed: int = 0
    longest_step: float = 0.0


class MaintenanceRunner:
    """Queues runs and advances the first one a step at a time.

    ``before_run`` is called as a run starts (the writer commits what it received first);
    ``retention_days`` and ``chunk_rows`` are the policy (``Writer.configure`` sets them).
    """

    def __init__(self, store: Store, before_run: Callable[[], None]):
        self.store = store
        self._before_run = before_run
        self.retention_days: dict[str, float | None] = dict(DEFAULT_RETENTION_DAYS)
        self.chunk_rows = DEFAULT_CHUNK_ROWS
        self.last_runs: dict[str, dict] = {}
        self._tasks: deque[MaintenanceTask] = deque()
        self._paused_until = 0.0

    def start(
        self,
        job: str,
        trigger: str,
        reply: Reply | None = None,
        rid: object = None,
        days: float | None = None,
        then: tuple[str, ...] = (),
    ) -> None:
        """Queue a retention or vacuum run; ``reply`` gets its result when it is done."""
        if job not in JOBS:
            raise ValueError(f"unknown maintenance job {job!r}; expected retention or vacuum")
        if days is not None and days < 0:
            raise ValueError("days must not be negative")
        self._tasks.append(MaintenanceTask(job, trigger, reply, rid, days, then))

    def start_missed(self, schedule: MaintenanceSchedule) -> None:
        """Queue the runs whose scheduled time passed while no writer ran."""
        for job, then in schedule.missed({j: self.store.last_run(j) for j in JOBS}):
            log.info("the %s run due while the daemon was down runs now", job)
            self.start(job, "catch-up", then=tuple(then))

    @property
    def running(self) -> str | None:
        """The job of the run in progress (or next to start), if any."""
        return self._tasks[0].job if self._tasks else None

    def seconds_to_next_step(self, now: float) -> float | None:
        """How long until a run can take its next step (None: no run queued)."""
        return self._paused_until - now if self._tasks else None

    def step(self) -> None:
        """Run one bounded step of the current run (a chunk of deletes, a few thousand
        pages of incremental vacuum)."""
        if not self._tasks or time.monotonic() < self._paused_until:
            return
        task = self._tasks[0]
        if task.steps is None:
            self._before_run()
            task.started = time.time()
            if task.job == "retention":
                task.steps = self.store.retention_steps(
                    self._retention_cutoffs(task.days), self.chunk_rows
                )
            else:
                task.steps = self.store.vacuum_steps()
        began = time.perf_counter()
        step: tuple[str, int] | int | None
        try:
            step = next(task.steps)
        except StopIteration:
            self._finish(task, None)
            return
        except self.store.unavailable_errors as exc:
            self._finish(task, exc)
            return
        finally:
            task.longest_step = max(task.longest_step, time.perf_counter() - began)
        if step is None:  # its work runs elsewhere and is not done: look again shortly
            self._paused_until = time.monotonic() + POLL_SECONDS
            return
        if isinstance(step, tuple):  # retention: rows deleted from a table
            table, rows = step
            task.deleted[table] = task.deleted.get(table, 0) + rows
        else:  # vacuum: bytes given back
            task.reclaimed += step

    def run(self, job: str, trigger: str = "request", days: float | None = None) -> dict:
        """Run ``job`` to the end now (embedded mode); returns the run's record."""
        box: dict = {}
        self.start(job, trigger, box.update, None, days)
        while "run" not in box:
            self.step()
            time.sleep(max(0.0, self._paused_until - time.monotonic()))
        return box["run"]

    def _retention_cutoffs(self, days: float | None) -> dict[str, float]:
        now = time.time()
        if days is not None:  # the seed's clear_old_data(days): events, anomalies, metrics
            return {t: now - days * 86400 for t in ("events", "anomalies", "metrics")}
        return {t: now - d * 86400 for t, d in self.retention_days.items() if d is not None}

    def _finish(self, task: MaintenanceTask, error: BaseException | None) -> None:
        self._tasks.popleft()
        run = wire.maintenance_run(
            task.job,
            task.trigger,
            task.started,
            time.time(),
            None if error is None else str(error),
            task.deleted if task.job == "retention" else None,
            task.reclaimed if task.job == "vacuum" else None,
            round(task.longest_step * 1000, 3),
        )
        try:
            self.store.record_maintenance(run)
        except self.store.unavailable_errors as exc:
            log.error("could not record the %s run: %s", task.job, exc)
        self.last_runs[task.job] = run
        if error is None:
            log.info(
                "%s (%s) done in %.1fs: %s; longest step %.1f ms",
                task.job,
                task.trigger,
                run["finished"] - run["started"],
                task.deleted if task.job == "retention" else f"{task.reclaimed} bytes",
                run["longest_step_ms"],
            )
        else:
            log.error("%s (%s) failed: %s", task.job, task.trigger, error)
        if task.reply is not None:
            task.reply(wire.maintenance_reply(task.rid, run))
        if error is None:
            for follow in task.then:
                self.start(follow, task.trigger)

    # -- figures ---------------------------------------------------------------------------
    def waiting(self) -> str | None:
        """What the run in progress waits for in the store, if anything."""
        if not self._tasks:
            return None
        try:
            return self.store.maintenance_waiting()
        except self.store.unavailable_errors as exc:
            log.debug("maintenance state unavailable: %s", exc)
            return None

    def recent_runs(self, read_store: bool = True) -> dict[str, dict]:
        """The last run of each job (read back from the store after a restart, when
        ``read_store``)."""
        if not self.last_runs and read_store:
            try:
                for run in reversed(self.store.maintenance_runs(limit=20)):
                    self.last_runs[run["job"]] = run
            except self.store.unavailable_errors as exc:
                log.debug("maintenance history unavailable: %s", exc)
        return dict(self.last_runs)
