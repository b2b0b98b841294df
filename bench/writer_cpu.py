#!/usr/bin/env python3
"""CPU time of the writer's path alone: decode, validate, batch and commit into SQLite.

    python bench/writer_cpu.py                  # 400 messages of 50 records, 5 rounds
    python bench/writer_cpu.py --rounds 11

bench/run.py measures MemoryBank end to end, where sockets, publishers and a loaded machine
move the figures by tens of percent; this runs the Writer in-process on prepared messages
and reports its CPU seconds per record (process time: waiting on the disk is not counted),
the median of several rounds. To compare two checkouts, run it in each, back to back.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from memory_bank import wire
from memory_bank.store import open_store
from memory_bank.writer import Writer, WriterSettings


def one_round(messages: int, rows: int) -> float:
    """CPU microseconds per committed record for ``messages`` messages of ``rows`` records."""
    with tempfile.TemporaryDirectory(prefix="mb-writer-cpu-") as folder:
        return _measure(Path(folder) / "w.db", messages, rows)


def _measure(db: Path, messages: int, rows: int) -> float:
    store = open_store(db)
    writer = Writer(store, WriterSettings(batch_rows=2000, batch_seconds=0.05))
    block = store.lease_id_block()
    raws, n = [], 0
    for seq in range(1, messages + 1):
        events, metrics = [], []
        for i in range(rows):
            n += 1
            row_id = (block << 32) + n
            if i % 2:
                events.append([row_id, time.time(), "E", "c", "m", '{"i": 1}'])
            else:
                metrics.append([row_id, time.time(), "v", 1.5, "V", None])
        raws.append(wire.encode(block, seq, 0, events, [], metrics, []))
    began = time.process_time()
    for raw in raws:
        writer.accept_raw(raw)
        if writer.due():
            writer.tick()
    writer.tick(force=True)
    took = time.process_time() - began
    committed = writer.figures()["committed_records"]
    writer.close()
    if committed != messages * rows:
        raise SystemExit(f"committed {committed} of {messages * rows} records")
    return took * 1e6 / committed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rows", type=int, default=50, help="records per message")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = [one_round(args.messages, args.rows) for _ in range(args.rounds)]
    print(
        f"writer CPU per record (decode, validate, batch, commit; SQLite): "
        f"median {statistics.median(figures):.2f} us over {args.rounds} rounds "
        f"(min {min(figures):.2f}, max {max(figures):.2f})"
    )


if __name__ == "__main__":
    main()
