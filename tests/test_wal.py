"""The SQLite WAL stays bounded under sustained ingest while readers poll (the daemon's
checkpoint thread truncates it once past daemon.max_wal_bytes)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

from memory_bank import Publisher
from memory_bank.store import open_reader

LIMIT = 1 << 20  # daemon.max_wal_bytes: its smallest accepted value


def _size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def test_wal_stays_bounded_while_a_reader_polls_during_ingest(db_path, start_daemon, tmp_path):
    cfg = tmp_path / "memorybank.toml"
    cfg.write_text(f"[daemon]\nmax_wal_bytes = {LIMIT}\n")
    start_daemon(db_path, "--config", str(cfg))
    stop = threading.Event()
    wal = f"{db_path}-wal"
    wal_sizes = []  # at each poll

    def poll() -> None:  # the viewer's --follow / the dashboard: queries between pauses
        reader = open_reader(db_path)
        while not stop.is_set():
            reader.get_dashboard_summary()
            reader.get_events(limit=50)
            wal_sizes.append(_size(wal))
            stop.wait(0.02)
        reader.close()

    poller = threading.Thread(target=poll)
    poller.start()
    pub = Publisher(db_path, close_timeout=60)
    try:
        # Until 24 times the limit is written: an unbounded WAL holds at least as much as
        # the database (before the fix it grew without end under sustained ingest).
        i = 0
        while _size(db_path) + _size(wal) < 24 * LIMIT:
            for _ in range(5000):
                pub.log_event("CAN_RX", "CP", "Current reading: 32A", {"i": i, "pad": "x" * 100})
                i += 1
            assert pub.flush(60)
    finally:
        stop.set()
        poller.join()
        pub.close()
    assert len(wal_sizes) > 10  # the reader kept reading during ingest
    largest = max(wal_sizes)
    assert largest < 12 * LIMIT, f"the WAL reached {largest:,} bytes ({_size(db_path):,} in db)"


def test_a_reader_holding_a_snapshot_delays_the_truncation_and_ingest_goes_on(
    db_path, start_daemon, tmp_path
):
    """A reader in a long read transaction (a streaming export) keeps the WAL from being
    emptied: ingest goes on meanwhile, every record is committed, and once the reader lets
    go the writer's retries (sooner first, then backing off) empty the WAL again."""
    cfg = tmp_path / "memorybank.toml"
    cfg.write_text(f"[daemon]\nmax_wal_bytes = {LIMIT}\n")
    start_daemon(db_path, "--config", str(cfg))
    wal = f"{db_path}-wal"
    sent = 0

    def publish(pub: Publisher, n: int) -> None:
        nonlocal sent
        for _ in range(n):
            pub.log_event("CAN_RX", "CP", "Current reading: 32A", {"i": sent, "pad": "x" * 100})
            sent += 1
        assert pub.flush(60)

    with Publisher(db_path, close_timeout=60) as pub:
        publish(pub, 100)
        export = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
        export.execute("BEGIN")
        export.execute("SELECT count(*) FROM events").fetchone()  # holds this snapshot
        while _size(wal) < 4 * LIMIT:
            publish(pub, 2000)
        assert _size(wal) >= 4 * LIMIT  # it could not be emptied under the export
        export.execute("COMMIT")
        export.close()
        deadline = time.monotonic() + 30
        while _size(wal) > LIMIT and time.monotonic() < deadline:
            publish(pub, 200)  # the writer tries again after a batch, once its wait is over
        assert _size(wal) <= LIMIT, f"the WAL stayed at {_size(wal):,} bytes"
    reader = open_reader(db_path)
    try:
        assert reader.get_dashboard_summary()["total_events"] == sent
    finally:
        reader.close()
