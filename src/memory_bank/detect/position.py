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
MIN_CHUNK, MAX_CHUNK = 500, 20_000  # rows fetched per query and block


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

    Rows are tuples ``(timestamp, table_code, id, a, b, json_text)``, made so by the query
    itself (no Python work per row), through the store's read-only reader connection, with
    JSON columns as text (the detectors cache their parse). Tuples compare by timestamp,
    then table and id, so the merge needs no key function.
    """

    def __init__(self, reader: Reader, rows_in_memory: int = 60_000):
        self.reader = reader
        self.rows_in_memory = rows_in_memory  # fetched, not yet merged: shared by the blocks
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

    def _block_rows(self, table: str, block: int, start: int, chunk: int) -> Iterator[tuple]:
        end = ((block + 1) << ID_BLOCK_BITS) - 1
        sql = self._sql[table]
        after = start
        while True:
            rows = self._query(sql, (after, end, chunk))
            yield from rows
            if len(rows) < chunk:
                return
            after = rows[-1][2]

    def timeline(self, position: Position) -> Iterator[tuple]:
        """Every row past ``position``, merged by timestamp across blocks and tables.

        The caller marks each row it has processed in ``position`` (rows of a block come in
        id order, so a block's mark only grows), so stopping part-way loses nothing.
        """
        news = [(t, b) for t in TABLES for b in self.blocks_with_news(position, t)]
        # Each block holds one chunk while the merge runs: memory is bounded by the total.
        chunk = min(MAX_CHUNK, max(MIN_CHUNK, self.rows_in_memory // max(len(news), 1)))
        streams = []
        for table, block in news:
            start = position.marks[table].get(block, block << ID_BLOCK_BITS)
            streams.append(self._block_rows(table, block, start, chunk))
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams)
