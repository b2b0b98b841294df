"""Reading committed rows in commit order, from a position that survives restarts.

Ids are not a global commit order: each publisher leases a block of 2**32 ids
(discovery.py), so a publisher that started early but delivers late (its spool adopted an
hour later) commits ids far below ids already read. Within one block, though, ids commit in
increasing order: a publisher numbers its messages, the writer applies them strictly in
sequence (writer.Writer.accept) and a message's rows commit in one transaction; within one
table a message split for size keeps its rows' order (publisher._store_message). So the
position is a high-water mark *per block and table*: it only moves forward in commit order
and never skips a late row.

Every poll finds the blocks with rows past their mark (two index seeks per block and
table), then reads each such block's new rows in id order, a chunk at a time, and hands
them on in batches sorted by timestamp, so the detectors see one timeline whatever the
publishers' delivery order. A batch holds every fetched row up to the earliest time any
block may still have rows before; the position moves once a whole batch is processed.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator
from operator import itemgetter

from ..store import Reader
from ..wire import ID_BLOCK_BITS

TABLES = ("metrics", "events", "anomalies")
METRIC, EVENT, ANOMALY = 0, 1, 2
# The columns read per table after time, table code and id: what the detectors need.
_COLUMNS = {
    "metrics": ("metric_name", "metric_value", "metadata"),
    "events": ("event_type", "component", "data"),
    "anomalies": ("anomaly_type", "severity", "pattern_data"),
}
_JSON = {"metadata", "data", "pattern_data"}
MIN_CHUNK, MAX_CHUNK = 200, 20_000  # rows fetched per query and block


class Position:
    """Per table, per id block: the highest id processed."""

    def __init__(self, marks: dict[str, dict[int, int]] | None = None):
        self.marks: dict[str, dict[int, int]] = {t: dict((marks or {}).get(t, {})) for t in TABLES}

    def to_state(self) -> dict:
        """Compact: block -> offset inside the block, as text keys (JSON)."""
        mask = (1 << ID_BLOCK_BITS) - 1
        return {
            t: {str(b): m & mask for b, m in blocks.items()} for t, blocks in self.marks.items()
        }

    @classmethod
    def from_state(cls, state: dict) -> Position:
        return cls(
            {
                t: {int(b): (int(b) << ID_BLOCK_BITS) + off for b, off in blocks.items()}
                for t, blocks in state.items()
                if t in TABLES
            }
        )


class CommittedRows:
    """New committed rows of the three tables past a Position, as one timeline.

    Rows are tuples ``(timestamp, table_code, id, a, b, json_text)``, made so by the query
    itself (no Python work per row), through the store's read-only reader connection, with
    JSON columns as text (the detectors cache their parse). A batch is in timestamp, then
    table and id order.
    """

    def __init__(self, reader: Reader, rows_in_memory: int = 60_000):
        self.reader = reader
        self.rows_in_memory = rows_in_memory  # fetched, not yet handed on: all blocks share it
        self.postgres = reader.placeholder == "%s"
        self._sql = {t: self._select(t, code) for code, t in enumerate(TABLES)}

    def _select(self, table: str, code: int) -> str:
        p = self.reader.placeholder
        cols = []
        for name in _COLUMNS[table]:
            cols.append(f"{name}::text" if self.postgres and name in _JSON else name)
        when = "extract(epoch FROM timestamp)::float8" if self.postgres else "timestamp"
        return (
            f"SELECT {when}, {code}, id, {', '.join(cols)} FROM {table} "
            f"WHERE id > {p} AND id <= {p} ORDER BY id LIMIT {p}"
        )

    def _query(self, sql: str, params) -> list[tuple]:
        return self.reader.tuples(sql, params)

    def _next_id(self, table: str, after: int) -> int | None:
        p = self.reader.placeholder
        rows = self._query(f"SELECT min(id) FROM {table} WHERE id > {p}", (after,))
        return rows[0][0] if rows else None

    def blocks_with_news(self, position: Position, table: str) -> list[int]:
        """Blocks holding rows past their mark: a skip-scan, two seeks per block at most."""
        marks = position.marks[table]
        found: list[int] = []
        after = 0
        while True:
            first = self._next_id(table, after)
            if first is None:
                return found
            block = first >> ID_BLOCK_BITS
            mark = marks.get(block, block << ID_BLOCK_BITS)
            if first > mark:
                found.append(block)
                after = ((block + 1) << ID_BLOCK_BITS) - 1  # on to the next block
            else:
                after = mark  # rows up to the mark are done: look past it

    def batches(self, position: Position) -> Iterator[tuple[list[tuple], list[tuple]]]:
        """Every row past ``position`` as ``(rows, marks)`` batches: ``rows`` sorted by
        timestamp across blocks and tables, ``marks`` the ``(table, block, id)`` the
        position may move to once all of ``rows`` are processed (so stopping between
        batches loses nothing)."""
        news = [(t, b) for t in TABLES for b in self.blocks_with_news(position, t)]
        # Each block holds at most one and a half chunks: memory is bounded by the total.
        chunk = min(MAX_CHUNK, max(MIN_CHUNK, self.rows_in_memory // max(len(news), 1)))
        blocks = [_Block(t, b, position.marks[t].get(b, b << ID_BLOCK_BITS)) for t, b in news]
        while True:
            for block in blocks:
                # Topped up before it runs short, so that no block's end makes the next
                # batch small: each batch is about half of what all blocks hold.
                if len(block.rows) < chunk // 2 and not block.done:
                    more = self._query(self._sql[block.table], (block.after, block.end, chunk))
                    block.done = len(more) < chunk
                    if more:
                        block.rows += more
                        block.after = more[-1][2]
            blocks = [b for b in blocks if b.rows or not b.done]
            if not blocks:
                return
            # Rows after the end of a block's chunk may still come from that block.
            horizon = min((b.rows[-1][0] for b in blocks if not b.done), default=math.inf)
            rows: list[tuple] = []
            marks = []
            for block in blocks:
                taken = block.rows
                if taken and taken[-1][0] > horizon:
                    cut = bisect_right(taken, horizon, key=_TIME)
                    taken, block.rows = taken[:cut], taken[cut:]
                else:
                    block.rows = []
                if taken:
                    rows += taken
                    marks.append((block.table, block.number, taken[-1][2]))
            # Sorted on the timestamp alone (a float compare, not a tuple's): the sort is
            # stable and blocks come in (table, block) order, so ties keep (table, id) order.
            rows.sort(key=_TIME)
            yield rows, marks


_TIME = itemgetter(0)


class _Block:
    """One block's rows of one table: what is fetched and not yet handed on."""

    __slots__ = ("table", "number", "after", "end", "rows", "done")

    def __init__(self, table: str, number: int, after: int):
        self.table, self.number, self.after = table, number, after
        self.end = ((number + 1) << ID_BLOCK_BITS) - 1
        self.rows: list[tuple] = []
        self.done = False
