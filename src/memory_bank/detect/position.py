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
table), then streams each such block's new rows in id order and merges the streams by
timestamp, so the detectors see one timeline whatever the publishers' delivery order.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from operator import itemgetter

from ..store import Reader
from ..wire import ID_BLOCK_BITS

TABLES = ("metrics", "events", "anomalies")
METRIC, EVENT, ANOMALY = 0, 1, 2
# The columns read per table: id, time, then what the detectors need (JSON as text).
_COLUMNS = {
    "metrics": ("metric_name", "metric_value", "metadata"),
    "events": ("event_type", "component", "data"),
    "anomalies": ("anomaly_type", "severity", "pattern_data"),
}
_JSON = {"metadata", "data", "pattern_data"}


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

    def copy(self) -> Position:
        return Position(self.marks)


class CommittedRows:
    """New committed rows of the three tables past a Position, as one timeline.

    Rows are tuples ``(timestamp, table_code, id, a, b, json_text)``. Reads go through the
    store's reader connection (read-only) with tuples instead of dicts, and JSON columns
    as text (the detectors cache their parse).
    """

    def __init__(self, reader: Reader, chunk_rows: int = 5000):
        self.reader = reader
        self.chunk_rows = chunk_rows
        self.postgres = reader.placeholder == "%s"
        self._sql = {t: self._select(t) for t in TABLES}

    def _select(self, table: str) -> str:
        p = self.reader.placeholder
        cols = []
        for name in _COLUMNS[table]:
            cols.append(f"{name}::text" if self.postgres and name in _JSON else name)
        when = "extract(epoch FROM timestamp)::float8" if self.postgres else "timestamp"
        return (
            f"SELECT id, {when}, {', '.join(cols)} FROM {table} "
            f"WHERE id > {p} AND id <= {p} ORDER BY id LIMIT {p}"
        )

    def _query(self, sql: str, params) -> list[tuple]:
        conn = self.reader._conn()
        if self.postgres:
            from psycopg.rows import tuple_row

            with conn.cursor(row_factory=tuple_row) as cur:
                cur.execute(sql, params)
                return cur.fetchall()  # autocommit: each query sees the newest commits
        cur = conn.cursor()
        cur.row_factory = None
        return cur.execute(sql, params).fetchall()

    def _next_id(self, table: str, after: int) -> int | None:
        p = self.reader.placeholder
        rows = self._query(f"SELECT min(id) FROM {table} WHERE id > {p}", (after,))
        return rows[0][0] if rows else None

    def blocks_with_news(self, position: Position, table: str) -> list[int]:
        """Blocks holding rows past their mark: a skip-scan, two seeks per block at most."""
        marks = position.marks[table]
        found = []
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

    def _block_rows(self, table: str, code: int, block: int, start: int) -> Iterator[tuple]:
        end = ((block + 1) << ID_BLOCK_BITS) - 1
        sql = self._sql[table]
        after = start
        while True:
            rows = self._query(sql, (after, end, self.chunk_rows))
            for row in rows:
                yield (row[1], code, row[0], row[2], row[3], row[4])
            if len(rows) < self.chunk_rows:
                return
            after = rows[-1][0]

    def timeline(self, position: Position) -> Iterator[tuple]:
        """Every row past ``position``, merged by timestamp across blocks and tables.

        The caller advances the position with ``advance`` for each row it has processed,
        so stopping part-way (a checkpoint, a signal) loses nothing.
        """
        streams = []
        for code, table in enumerate(TABLES):
            marks = position.marks[table]
            for block in self.blocks_with_news(position, table):
                start = marks.get(block, block << ID_BLOCK_BITS)
                streams.append(self._block_rows(table, code, block, start))
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=itemgetter(0))


def advance(position: Position, row: tuple) -> None:
    """Mark ``row`` processed (rows of a block come in id order, so this only grows)."""
    position.marks[TABLES[row[1]]][row[2] >> ID_BLOCK_BITS] = row[2]
