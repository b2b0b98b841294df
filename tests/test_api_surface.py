"""MemoryBank's write calls take what the Publisher's take, so code can move between them.

A component starts with ``MemoryBank`` (the seed's class) and later imports the lighter
``Publisher`` (or the other way round): the same call must work on both. The seed's
defaults are kept where the seed had its own (``unit=""``).
"""

from __future__ import annotations

import inspect
import time

import pytest

from memory_bank import MemoryBank, Publisher

WRITES = (
    "log_event",
    "record_anomaly",
    "record_metric",
    "start_session",
    "increment_session_anomaly_count",
    "end_session",
    "record_pattern",
)
SEED_DEFAULTS = {("record_metric", "unit"): ""}  # the seed's default; the Publisher's is None


@pytest.mark.parametrize("name", WRITES)
def test_memorybank_writes_take_the_publishers_arguments(name):
    ours = inspect.signature(getattr(MemoryBank, name)).parameters
    theirs = inspect.signature(getattr(Publisher, name)).parameters
    assert [(p.name, p.kind) for p in ours.values()] == [(p.name, p.kind) for p in theirs.values()]
    for param in theirs.values():
        expected = SEED_DEFAULTS.get((name, param.name), param.default)
        assert ours[param.name].default == expected, param.name


def test_memorybank_writes_keep_the_callers_timestamp(db_path):
    then = time.time() - 3600.0
    with MemoryBank(db_path, embedded=True) as memory:
        memory.log_event("E", "C", "an hour ago", timestamp=then)
        memory.record_anomaly("A", "HIGH", timestamp=then)
        memory.record_metric("current", 1.0, "A", timestamp=then)
        memory.start_session("S", timestamp=then)
        memory.end_session("S", timestamp=then + 60.0)
        assert memory.get_events()[0]["timestamp"] == then
        assert memory.get_anomalies()[0]["timestamp"] == then
        assert memory.get_metrics()[0]["timestamp"] == then
        session = memory.get_session("S")
        assert (session["start_time"], session["end_time"]) == (then, then + 60.0)
