"""`memorybank detect`: read committed rows, run the detectors, publish what they find.

Detection is a component like the CSMS: it reads through the store's read-only reader and
writes through a Publisher, nothing else. Its position and its learned models are kept in
the database as a ``DETECT_CHECKPOINT`` event, written only after every finding before it
is confirmed committed (a flush), so a checkpoint never runs ahead of its findings. After
a crash the detector waits until the daemon has committed what the crashed run had sent
(instance.py), resumes from the newest checkpoint and finds again what came after it;
findings (kind, stream, reading) and pattern recurrences already stored are not published
again, so nothing is reported twice and nothing is lost.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from .. import discovery
from ..publisher import Publisher
from ..store import open_reader
from .cycles import ANOMALY_PREFIX, PATTERN_TYPE, CycleLearner, pattern_key
from .findings import KINDS, Finding, finding_key
from .instance import InstanceLock, wait_for_publisher
from .position import EVENT, METRIC, CommittedRows, Position
from .streams import Settings, StreamDetector

log = logging.getLogger(__name__)

CHECKPOINT_EVENT = "DETECT_CHECKPOINT"
COMPONENT = "detect"
STATE_VERSION = 1
DROPOUT_RECHECK_S = 1.0  # data time between looks at silent streams, at most
STREAM_CACHE = 100_000  # (metric, metadata text) pairs remembered
MAX_STATE_CHARS = 900_000  # under the daemon's default max_text_chars
# A finding found again after a restart starts at most this long before the checkpoint it
# resumes from (a long stuck run, a drift's onset): older ones need no remembering.
DEDUPE_LOOKBACK_S = 86400.0
GC_YOUNG_THRESHOLD = 100_000  # allocations between collections while processing


@dataclass
class DetectSettings:
    """The [detect] table of the configuration."""

    instance: str = "detect"
    sensitivity: float = 1.0
    warmup_readings: int = 240
    metrics: list[str] = field(default_factory=list)  # empty: every metric
    poll_seconds: float = 1.0
    checkpoint_seconds: float = 60.0
    checkpoint_rows: int = 1_000_000
    cycle_min_period_s: float = 2.0
    confirm_timeout: float = 30.0


@dataclass
class Progress:
    readings: int = 0
    events: int = 0
    findings: int = 0
    patterns: int = 0
    skipped_duplicates: int = 0
    late_readings: int = 0
    by_kind: dict = field(default_factory=dict)


def _encode_state(state: dict) -> str:
    raw = json.dumps(state, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 6)).decode()


def _decode_state(text: str) -> dict:
    return json.loads(zlib.decompress(base64.b64decode(text)))


class Detection:
    """One detector instance over one database."""

    def __init__(self, location: str, settings: DetectSettings, endpoint: str | None = None):
        self.location = os.fspath(location)
        self.settings = settings
        self.stream_settings = Settings(settings.sensitivity, settings.warmup_readings)
        self.watched = set(settings.metrics)
        self.reader = open_reader(self.location)
        self.rows = CommittedRows(self.reader)
        self.lock = InstanceLock(self.location, endpoint, settings.instance)
        previous = self.lock.previous_publisher
        self.publisher = Publisher(self.location, endpoint=endpoint, spool_bytes=0)
        self.lock.record_publisher(self.publisher.publisher_id)
        self.position = Position()
        self.clock = 0.0
        self.detectors: dict[str, StreamDetector] = {}
        self.learner = CycleLearner(min_period_s=settings.cycle_min_period_s)
        self.progress = Progress()
        self.checkpoint_seq = 0
        self._stream_of: dict[tuple, StreamDetector | None] = {}  # (metric, metadata text)
        self._reported: set[tuple] = set()
        self._pattern_seen: dict[str, float] = {}
        self._next_dropout_check = 0.0
        if previous is not None:  # it crashed: what it sent must be in before we look
            wait_for_publisher(self.location, endpoint, previous)
        self._resume()

    # -- resume -------------------------------------------------------------------------
    def _resume(self) -> None:
        checkpoint = self._newest_checkpoint()
        since = None
        if checkpoint is not None:
            self.checkpoint_seq = checkpoint["seq"]
            self.position = Position.from_state(checkpoint["position"])
            self.clock = checkpoint["clock"]
            state = checkpoint.get("state")
            if state:
                self._load_models(_decode_state(state))
            since = self.clock - DEDUPE_LOOKBACK_S
            log.info(
                "resuming from checkpoint %d (data time %s)",
                self.checkpoint_seq,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.clock)),
            )
        for row in self.reader.iter_anomalies(since=since, newest_first=False):
            data = row.get("pattern_data")
            if (
                isinstance(data, dict)
                and data.get("instance") == self.settings.instance
                and row["anomaly_type"] in KINDS
            ):
                stream = data.get("stream") or {}
                self._reported.add(finding_key(row["anomaly_type"], stream, row["timestamp"]))
        for row in self.reader.get_patterns(pattern_type=PATTERN_TYPE):
            self._pattern_seen[pattern_key(row["pattern_data"])] = row["last_seen"] or 0.0
        log.info("%d findings of this instance already stored", len(self._reported))

    def _newest_checkpoint(self) -> dict | None:
        for row in self.reader.iter_events(
            limit=50, event_type=CHECKPOINT_EVENT, component=COMPONENT
        ):
            data = row.get("data")
            if (
                isinstance(data, dict)
                and data.get("instance") == self.settings.instance
                and data.get("version") == STATE_VERSION
            ):
                return data
        return None

    def _load_models(self, state: dict) -> None:
        for key, det_state in state.get("streams", {}).items():
            stream = json.loads(key)
            self.detectors[key] = StreamDetector.from_state(stream, self.stream_settings, det_state)
        if "cycles" in state:
            self.learner.load_state(state["cycles"])

    # -- the loop -----------------------------------------------------------------------
    def run(self, once: bool = False, stop: threading.Event | None = None) -> Progress:
        """Process what is committed; with ``once``, then stop, else follow new commits
        until ``stop`` is set."""
        stop = stop or threading.Event()
        last_checkpoint = time.monotonic()
        rows_at_checkpoint = self._rows_done()
        while not stop.is_set():
            with _rare_collections():
                processed = self._process(stop, self.settings.checkpoint_rows)
            if processed:
                p = self.progress
                log.debug(
                    "%d rows read; so far %d readings, %d events, %d findings",
                    processed,
                    p.readings,
                    p.events,
                    p.findings,
                )
            due = (
                time.monotonic() - last_checkpoint >= self.settings.checkpoint_seconds
                or self._rows_done() - rows_at_checkpoint >= self.settings.checkpoint_rows
            )
            if self._rows_done() != rows_at_checkpoint and (due or once):
                if self.checkpoint():
                    last_checkpoint = time.monotonic()
                    rows_at_checkpoint = self._rows_done()
            if once and processed < self.settings.checkpoint_rows:
                break
            if not processed:
                stop.wait(self.settings.poll_seconds)
        if self._rows_done() != rows_at_checkpoint:
            self.checkpoint()
        return self.progress

    def _rows_done(self) -> int:
        return self.progress.readings + self.progress.events

    def _process(self, stop: threading.Event, limit: int) -> int:
        """New rows through the detectors, a batch at a time, until ``limit`` rows or
        ``stop``; returns how many.

        Each batch is taken in two passes with the same outcome as one reading at a time.
        In time order: the data clock, each reading's arrival and the dropouts due (they
        depend on the order of all streams), and what the learner and publisher are to do.
        Then, stream by stream, the values (the costly part, fastest with one stream's
        state in the cache at a time; a stream whose warm-up decision is due is judged up
        to date at once, as its dropouts depend on it). What the passes found is then
        reported and learned from in the order of the rows that found it."""
        marks = self.position.marks
        stream_of = self._stream_of
        clock = self.clock
        next_look = self._next_dropout_check
        count = readings = 0
        for rows, batch_marks in self.rows.batches(self.position):
            waiting: dict[StreamDetector, list[tuple]] = {}  # values to judge, per stream
            later: list[tuple] = []  # (row, step, its finding; None: the row, to learn)
            for row in rows:
                ts, code = row[0], row[1]
                if code == METRIC:
                    if ts > clock:
                        self.clock = clock = ts
                    det: StreamDetector | Literal[False] | None = stream_of.get(
                        (row[3], row[5]), False
                    )
                    if det is False:
                        det = self._stream_for(row[3], row[5])
                    if det is not None:
                        readings += 1
                        arrived = det.arrive(ts)
                        if arrived:
                            queue = waiting.get(det)
                            if queue is None:
                                queue = waiting[det] = []
                            queue.append(row)
                            if arrived == 2:
                                _judge(det, queue, later)
                                queue.clear()
                # The data clock is the data's: this detector's own rows (a checkpoint is
                # stamped when it is written, maybe long after the data) do not move it.
                elif self._learnable(row):
                    later.append((row, 0, None))
                    if ts > clock:
                        self.clock = clock = ts
                if clock >= next_look:
                    next_look = self._check_dropouts(row, later)
            for det, queue in waiting.items():
                _judge(det, queue, later)
            later.sort(key=_row_order)  # stable: the order found within one row is kept
            for row, _, finding in later:
                if finding is None:
                    self._learn(row)
                else:
                    self._report(finding)
            for table, block, last_id in batch_marks:
                marks[table][block] = last_id
            count += len(rows)
            if count >= limit or stop.is_set():
                break
        self._next_dropout_check = next_look
        self.progress.readings += readings
        return count

    def _stream_for(self, name: str, metadata_text: str | None) -> StreamDetector | None:
        """The detector of a reading's stream (None: not watched), remembered by the
        reading's metric and metadata text; the text is parsed only when it names a
        ``cp_id`` or ``connector_id``."""
        if len(self._stream_of) >= STREAM_CACHE:
            self._stream_of.clear()
        det = self._stream_of[name, metadata_text] = self._detector(name, metadata_text)
        return det

    def _detector(self, name: str, metadata_text: str | None) -> StreamDetector | None:
        if self.watched and name not in self.watched:
            return None
        stream = {"metric": name}
        if metadata_text and ("cp_id" in metadata_text or "connector_id" in metadata_text):
            try:
                metadata = json.loads(metadata_text)
            except ValueError:
                metadata = None
            if isinstance(metadata, dict):
                for field_name in ("cp_id", "connector_id"):
                    if metadata.get(field_name) is not None:
                        stream[field_name] = metadata[field_name]
        key = json.dumps(stream, sort_keys=True)
        det = self.detectors.get(key)
        if det is None:
            det = self.detectors[key] = StreamDetector(stream, self.stream_settings)
        return det

    def _check_dropouts(self, row: tuple, later: list) -> float:
        """Find the streams silent past their deadline (to be reported after ``row``'s own
        findings); returns when to look next: at the soonest deadline (reading only moves a
        deadline later), within DROPOUT_RECHECK_S."""
        clock = self.clock
        soonest = clock + DROPOUT_RECHECK_S
        for det in self.detectors.values():
            deadline = det.deadline()
            if clock > deadline:
                finding = det.overdue(clock)
                if finding is not None:
                    later.append((row, 1, finding))
            elif deadline < soonest:
                soonest = deadline
        return soonest

    def _learnable(self, row: tuple) -> bool:
        """Is this event or anomaly row for the learner? Not detection's own rows: its
        checkpoints, and this instance's findings (the learner saw them when found)."""
        if row[1] == EVENT:
            return row[4] != COMPONENT
        data = _json(row[5])
        return not (isinstance(data, dict) and data.get("instance") == self.settings.instance)

    def _learn(self, row: tuple) -> None:
        """The learner's input from an event or anomaly row (``_learnable``)."""
        self.progress.events += 1
        if row[1] == EVENT:
            symbol = self.learner.symbol_of_text(row[3], row[5])
        else:
            symbol = self.learner.symbol(ANOMALY_PREFIX + row[3], _json(row[5]))
        self._observe(row[0], symbol)

    def _observe(self, ts: float, symbol: str) -> None:
        for record in self.learner.observe(ts, symbol):
            if record.timestamp <= self._pattern_seen.get(record.key, 0.0):
                continue  # recorded before a restart
            self._pattern_seen[record.key] = record.timestamp
            self.publisher.record_pattern(
                PATTERN_TYPE, record.data, record.confidence, timestamp=record.timestamp
            )
            self.progress.patterns += 1

    def _report(self, finding: Finding) -> None:
        key = finding.key()
        if key in self._reported:
            self.progress.skipped_duplicates += 1
            return
        self._reported.add(key)
        self.publisher.record_anomaly(
            finding.kind,
            finding.severity,
            finding.description(),
            finding.data(self.settings.instance),
            finding.current_value,
            finding.expected_value,
            timestamp=finding.timestamp,
        )
        self.progress.findings += 1
        self.progress.by_kind[finding.kind] = self.progress.by_kind.get(finding.kind, 0) + 1
        self._observe(
            finding.timestamp,
            self.learner.symbol(
                ANOMALY_PREFIX + finding.kind,
                {"detector": finding.detector, "stream": finding.stream},
            ),
        )

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint(self) -> bool:
        """Once every finding so far is committed, record the position and the models."""
        if not self.publisher.flush(self.settings.confirm_timeout):
            log.warning(
                "the daemon of %s has not confirmed the findings within %gs; "
                "the checkpoint waits (a restart would find them again)",
                discovery.redact_url(self.location),
                self.settings.confirm_timeout,
            )
            return False
        self.checkpoint_seq += 1
        models = {
            "streams": {k: d.to_state() for k, d in self.detectors.items()},
            "cycles": self.learner.to_state(),
        }
        encoded = _encode_state(models)
        state: str | None = encoded
        if len(encoded) > MAX_STATE_CHARS:
            log.warning(
                "the detector's models (%d characters) are too large for a checkpoint; "
                "keeping the position only (streams warm up again after a restart)",
                len(encoded),
            )
            state = None
        self.progress.late_readings = sum(d.late for d in self.detectors.values())
        oldest = self.clock - DEDUPE_LOOKBACK_S  # what a restart from here can find again
        self._reported = {key for key in self._reported if key[-1] >= oldest}
        self.publisher.log_event(
            CHECKPOINT_EVENT,
            COMPONENT,
            f"detect checkpoint {self.checkpoint_seq}: {self.progress.readings} readings, "
            f"{self.progress.findings} findings",
            {
                "instance": self.settings.instance,
                "version": STATE_VERSION,
                "seq": self.checkpoint_seq,
                "clock": self.clock,
                "position": self.position.to_state(),
                "state": state,
            },
        )
        return self.publisher.flush(self.settings.confirm_timeout)

    def close(self) -> None:
        confirmed = self.publisher.close(self.settings.confirm_timeout)
        self.reader.close()
        self.lock.release(clean=confirmed)


def _judge(det: StreamDetector, queue: list[tuple], later: list) -> None:
    """Judge the values of ``queue`` (one stream's arrived readings, in order); what they
    find joins ``later``, each behind the row that found it."""
    judge = det.judge
    for row in queue:
        found = judge(row[0], row[4])
        if found:
            later += [(row, 0, finding) for finding in found]


def _row_order(item: tuple) -> tuple:
    """Rows are handed on in (timestamp, table, id) order: that of what they found."""
    row = item[0]
    return row[0], row[1], row[2], item[1]


@contextmanager
def _rare_collections():
    """The collector's youngest generation less often while rows are processed: every row
    and reading allocates tuples and floats that make no cycles, so a pass every 700
    allocations (Python's default) found nothing and cost about a tenth of the CPU at 349
    streams. The threshold is the process's: it is put back as it was."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], GC_YOUNG_THRESHOLD), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _json(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None
