#!/usr/bin/env python3
"""CPU time of the writer's path alone, beside the ceiling's, in one process.

    python bench/writer_cpu.py                  # 200,000 records, 390 a message, 5 rounds
    python bench/writer_cpu.py --rounds 11 --phases
    python bench/writer_cpu.py --slices         # where the writer's CPU beyond the ceiling goes

bench/run.py measures MemoryBank end to end, where sockets, publishers and a loaded machine
move the figures by tens of percent; this runs the Writer in-process on prepared messages
(the benchmark's workload mix, bench/workload.py, from four publishers, about as many
records a message as the publishers of bench/run.py send) and, alternating with it in the
same rounds, the ceiling of bench/run.py (the store's own statements on the same records,
2,000 per transaction). Each side's figure is the CPU time of the thread doing the work
(``time.thread_time``: the checkpoint thread and waits for the disk are left out), the
median over rounds, each on a new database; the ratio is what the daemon's "CPU per
record against the ceiling's" is made of, minus ZeroMQ and the loop. ``--phases`` also
times decoding and validating alone (no store). ``--slices`` takes the gap apart, each step
one more piece of the daemon's work on the same records, in the same rounds: the ceiling's
statements on the writer's own batches (four publishers' id blocks, so rows go into four
places of each table's rowid tree, not one), then ``SqliteStore.apply`` on them (counters,
rollups, sessions, watermarks), then the Writer fed decoded messages (its batching, and
freeing each batch's rows), then the Writer fed the wire messages (decoding and validating).
To compare two checkouts, run each in turn, alternating, in the same minutes.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import BATCH_ROWS, _apply_raw  # noqa: E402
from workload import arriving_parts, raw_batches  # noqa: E402

from memory_bank import wire  # noqa: E402
from memory_bank.store import sql  # noqa: E402
from memory_bank.store.sqlite import SqliteStore  # noqa: E402
from memory_bank.writer import Writer, WriterSettings  # noqa: E402

PUBLISHERS = 4


def messages(records: int, per_message: int) -> list[bytes]:
    """The workload's records as the wire messages of PUBLISHERS publishers (each with its
    own id block), interleaved as they arrive at the daemon."""
    parts = arriving_parts(records, PUBLISHERS, per_message)
    return [wire.encode(pub, seq, 0, *part) for pub, seq, part in parts]


def writer_round(folder: Path, raws: list[bytes], decoded: bool = False) -> float:
    """Thread CPU seconds of a Writer taking every message and committing them; with
    ``decoded``, messages decoded before the clock starts (each one let go once taken, so
    that freeing the rows is still counted)."""
    writer = Writer(SqliteStore(folder / "writer.db"), WriterSettings(batch_rows=BATCH_ROWS))
    take, feed = writer.accept_raw, iter(raws)
    if decoded:
        validator = wire.Validator()
        take, feed = writer.accept, _popped([wire.decode(raw, validator) for raw in reversed(raws)])
    try:
        began = time.thread_time()
        for item in feed:
            take(item)
            if writer.due():
                writer.tick()
        writer.tick(force=True)
        took = time.thread_time() - began
        figures = writer.figures()
    finally:
        writer.close()
    if figures["rejected_records"] or figures["committed_records"] != figures["received_records"]:
        raise SystemExit(f"not every record committed: {figures}")
    return took


def _popped(items: list) -> Iterator:
    """``items`` from the last, each let go by the list as it is handed out."""
    while items:
        yield items.pop()


def ceiling_round(folder: Path, records: int, batches: list | None = None) -> float:
    """Thread CPU seconds of bench/run.py's ceiling on the same records (one id block), or
    of its statements on ``batches`` given as (events, anomalies, metrics, operations)."""
    db = folder / "ceiling.db"
    batches = batches or list(raw_batches(records, 1 << wire.ID_BLOCK_BITS, BATCH_ROWS))
    store = SqliteStore(db)  # the schema, pragmas and checkpoint thread
    conn = sqlite3.connect(db, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    try:
        began = time.thread_time()
        for batch in batches:
            _apply_raw(conn, *batch)
            if store.checkpointer.due():
                store.checkpointer.truncate(conn)
        return time.thread_time() - began
    finally:
        conn.close()
        store.close()


def writer_batches(raws: list[bytes]) -> list[list[wire.Message]]:
    """The messages decoded and grouped as the Writer commits them (a batch closes once it
    holds BATCH_ROWS rows)."""
    validator = wire.Validator()
    groups: list[list[wire.Message]] = [[]]
    rows = 0
    for raw in raws:
        msg = wire.decode(raw, validator)
        groups[-1].append(msg)
        rows += msg.row_count
        if rows >= BATCH_ROWS:
            groups.append([])
            rows = 0
    return [group for group in groups if group]


def store_round(folder: Path, groups: list[list[wire.Message]]) -> float:
    """Thread CPU seconds of SqliteStore.apply on the Writer's batches."""
    store = SqliteStore(folder / "store.db")
    watermarks: dict[int, int] = {}
    try:
        began = time.thread_time()
        for group in groups:
            store.apply(group, watermarks)
        return time.thread_time() - began
    finally:
        store.close()


SLICES = (
    ("ceiling", "the ceiling (one publisher's id block)"),
    ("raw4", "+ four publishers' id blocks (the same statements on the Writer's batches)"),
    ("store", "+ the store's bookkeeping (SqliteStore.apply: counters, rollups, watermarks)"),
    ("batching", "+ the Writer's batching and freeing the rows (messages decoded beforehand)"),
    ("writer", "+ decoding and validating (the Writer on the wire messages)"),
)


def slices_round(folder: Path, raws: list[bytes], records: int) -> dict[str, float]:
    """One round of each step of SLICES, each on a new database (a folder of its own)."""
    groups = writer_batches(raws)
    batches = [sql.gather(group, {})[:4] for group in groups]
    own = {key: folder / key for key, _ in SLICES}
    for path in own.values():
        path.mkdir()
    return {
        "ceiling": ceiling_round(own["ceiling"], records),
        "raw4": ceiling_round(own["raw4"], records, batches),
        "store": store_round(own["store"], groups),
        "batching": writer_round(own["batching"], raws, decoded=True),
        "writer": writer_round(own["writer"], raws),
    }


def decode_round(raws: list[bytes]) -> float:
    """Thread CPU seconds of decoding and validating every message (no store)."""
    validator = wire.Validator()
    began = time.thread_time()
    for raw in raws:
        wire.decode(raw, validator)
    return time.thread_time() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--per-message", type=int, default=390, help="records a message")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--phases", action="store_true", help="also decode+validate alone")
    parser.add_argument("--slices", action="store_true", help="the gap taken apart, a step a time")
    args = parser.parse_args()
    raws = messages(args.records, args.per_message)
    records = args.records // PUBLISHERS * PUBLISHERS
    if args.slices:
        print_slices(raws, records, args.rounds)
        return
    figures: dict[str, list[float]] = {"writer": [], "ceiling": [], "decode": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="mb-writer-cpu-") as folder:
            figures["ceiling"].append(ceiling_round(Path(folder), records))
            figures["writer"].append(writer_round(Path(folder), raws))
        if args.phases:
            figures["decode"].append(decode_round(raws))
    us = {k: statistics.median(v) * 1e6 / records for k, v in figures.items() if v}
    print(
        f"{records:,} records, {len(raws)} messages, median of {args.rounds} rounds, "
        f"thread CPU per record: writer {us['writer']:.2f} us, ceiling {us['ceiling']:.2f} us "
        f"({us['writer'] / us['ceiling']:.2f}x)"
        + (f"; decode+validate alone {us['decode']:.2f} us" if "decode" in us else "")
    )


def print_slices(raws: list[bytes], records: int, rounds: int) -> None:
    """Each step's thread CPU per record (median over rounds) and what it adds."""
    figures: dict[str, list[float]] = {key: [] for key, _ in SLICES}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="mb-writer-slices-") as folder:
            for key, seconds in slices_round(Path(folder), raws, records).items():
                figures[key].append(seconds)
    us = {key: statistics.median(v) * 1e6 / records for key, v in figures.items()}
    print(f"{records:,} records, {len(raws)} messages, thread CPU per record, median of {rounds}")
    previous = 0.0
    for key, label in SLICES:
        print(
            f"{us[key]:6.2f} us ({us[key] / us['ceiling']:.2f}x)  {us[key] - previous:+6.2f} us  "
            + label
        )
        previous = us[key]


if __name__ == "__main__":
    main()
