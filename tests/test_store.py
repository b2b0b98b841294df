"""The writer's side of the store on both stores: what their shared SQL (store/sql.py) keeps
alike — watermarks (a message applied once), refused input kept and trimmed, and the
maintenance runs ``status`` shows."""

from __future__ import annotations

import time

import pytest

from memory_bank import wire
from memory_bank.store import open_reader, open_store
from memory_bank.store.schema import REJECTED_KEEP
from memory_bank.store.sqlite import SqliteStore


def _message(publisher: int, seq: int, *texts: str) -> wire.Message:
    msg = wire.Message(publisher_id=publisher, seq=seq)
    base = (publisher << wire.ID_BLOCK_BITS) + seq * 100
    msg.events = [[base + i, time.time(), "E", "C", text, None] for i, text in enumerate(texts)]
    return msg


def test_a_message_is_applied_once_and_its_watermark_outlives_the_store(location):
    store = open_store(location)
    try:
        marks: dict[int, int] = {}
        assert store.apply([_message(1, 1, "a")], marks) == 1
        assert marks == {1: 1}
        # A replay of seq 1 beside seq 2, and another publisher's first message.
        stored = store.apply([_message(1, 1, "a"), _message(1, 2, "b"), _message(2, 1, "c")], marks)
        assert stored == 2
        assert marks == {1: 2, 2: 1}
        assert store.apply([_message(1, 2, "b")], marks) == 0
    finally:
        store.close()
    store = open_store(location)
    try:
        assert store.load_watermarks() == {1: 2, 2: 1}
    finally:
        store.close()
    reader = open_reader(location)
    try:
        assert sorted(e["message"] for e in reader.get_events()) == ["a", "b", "c"]
    finally:
        reader.close()


def test_refused_input_is_kept_newest_first_up_to_its_limit(location):
    store = open_store(location)
    try:
        now = time.time()
        rejects = [(now, 7, "bad", f"sample {i}") for i in range(REJECTED_KEEP + 5)]
        assert store.apply([], {}, rejects) == 0
        rows = store.conn.execute(
            "SELECT publisher_id, reason, sample FROM mb_rejected ORDER BY id"
        ).fetchall()
    finally:
        store.close()
    assert len(rows) == REJECTED_KEEP
    assert tuple(rows[0]) == (7, "bad", "sample 5")
    assert tuple(rows[-1]) == (7, "bad", f"sample {REJECTED_KEEP + 4}")


def test_maintenance_runs_read_back_as_recorded(location):
    store = open_store(location)
    try:
        began = store.last_run("vacuum")  # no run yet: since maintenance began
        assert began == pytest.approx(time.time(), abs=600)
        ok = {
            "job": "retention",
            "trigger": "schedule",
            "started": 1_790_000_000.25,
            "finished": 1_790_000_002.5,
            "status": "ok",
            "deleted": {"events": 3, "metrics": 0},
            "bytes_reclaimed": None,
            "longest_step_ms": 12.5,
            "error": None,
        }
        failed = {
            **ok,
            "trigger": "request",
            "started": 1_790_000_100.0,
            "finished": 1_790_000_101.0,
            "status": "error",
            "deleted": None,
            "error": "disk full",
        }
        store.record_maintenance(ok)
        store.record_maintenance(failed)
        assert store.maintenance_runs() == [failed, ok]
        assert store.maintenance_runs(limit=1) == [failed]
        assert store.last_run("retention") == ok["started"]  # the failed run does not count
        assert store.last_run("vacuum") == began
    finally:
        store.close()


def _wait_for(condition, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout:g}s"
        time.sleep(0.05)


def test_vacuum_shrinks_the_file_with_no_batch_after_it(tmp_path):
    """SQLite's automatic checkpoints are off (they sat on the commit path): the store's own
    background checkpoints copy the vacuumed database back and shrink the file, though
    nothing commits after the vacuum."""
    path = tmp_path / "ev.db"
    store = SqliteStore(path)
    try:
        msg = wire.Message(publisher_id=1, seq=1)
        old = time.time() - 10 * 86400
        msg.events = [
            [(1 << wire.ID_BLOCK_BITS) + i, old + i * 1e-3, "E", "C", "x" * 200, None]
            for i in range(20_000)
        ]
        store.apply([msg], {})
        _wait_for(lambda: path.stat().st_size > 4_000_000, "the WAL was copied into the file")
        full = path.stat().st_size
        steps = store.retention_steps({"events": time.time() - 86400})
        assert sum(deleted for _, deleted in steps) == 20_000
        assert sum(store.vacuum_steps()) > full // 2
        _wait_for(lambda: path.stat().st_size < full // 4, "the file shrank")
    finally:
        store.close()
