"""Copy a SQLite database (ours, or the seed's own) into PostgreSQL: batched, resumable.

Each table is read in id order, ``batch_rows`` at a time. A batch and the id it reached
are committed in one PostgreSQL transaction (the mark lives in ``mb_meta``), so a copy
killed at any moment resumes after the last committed batch and never copies a row twice.
The seed's databases lack some of our columns (pattern_key, started...): they are derived
as the SQLite store's own upgrade does. The library reports progress through a callback;
the CLI draws the bar and prints the counts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from .. import wire
from .base import TABLE_COLUMNS
from .postgresql import (
    PartitionKeeper,
    add_day_counts,
    connect,
    day_counts,
    ensure_schema,
    to_datetime,
)
from .schema import pattern_key

log = logging.getLogger(__name__)

TABLES = ("events", "anomalies", "metrics", "sessions", "patterns")
PARTITIONED_TABLES = ("events", "anomalies", "metrics")
# Columns copied per table (the seed's), and which hold times or JSON.
COLUMNS = {t: tuple(c.strip() for c in TABLE_COLUMNS[t].split(",")) for t in TABLES}
EPOCH_COLUMNS = {"timestamp", "start_time", "end_time", "last_seen"}
TEXT_TIME_COLUMNS = {"created_at", "updated_at"}
JSON_COLUMNS = {"data", "pattern_data", "metadata"}

Progress = Callable[[str, int], None]  # (table, rows just copied)


def _sqlite_time(value):
    """SQLite's CURRENT_TIMESTAMP text (UTC), as a datetime PostgreSQL takes."""
    if value is None:
        return dt.datetime.now(dt.UTC)
    if isinstance(value, int | float):
        return to_datetime(value)
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return dt.datetime.now(dt.UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _json_text(value):
    """Valid JSON text for jsonb: text that is not JSON is kept as a JSON string."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    try:
        json.loads(text)
    except ValueError:
        return json.dumps(text)
    if "\\u0000" in text:
        return text.replace("\\u0000", "")
    return text


class Migration:
    """One SQLite -> PostgreSQL copy. ``run()`` is safe to call again after a crash."""

    def __init__(self, source: str | os.PathLike, url: str, batch_rows: int = 10_000):
        self.source = Path(os.path.realpath(os.fspath(source)))
        if not self.source.exists():
            raise FileNotFoundError(f"no SQLite database at {self.source}")
        self.url = url
        self.batch_rows = batch_rows
        self.src = sqlite3.connect(f"file:{quote(os.fspath(self.source))}?mode=ro", uri=True)
        self.pg = connect(url, application_name="memorybank-migrate")
        ensure_schema(self.pg)
        self.partitions = PartitionKeeper()
        self.partitions.load(self.pg)

    def _mark_key(self, table: str) -> str:
        return f"migrate:{self.source}:{table}"

    def _done_through(self, table: str) -> int:
        row = self.pg.execute(
            "SELECT value FROM mb_meta WHERE key = %s", (self._mark_key(table),)
        ).fetchone()
        return int(row[0]) if row else -(2**63)

    def _source_columns(self, table: str) -> set[str]:
        return {r[1] for r in self.src.execute(f"PRAGMA table_info({table})")}

    def source_counts(self) -> dict[str, int]:
        counts = {}
        for table in TABLES:
            exists = self.src.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            counts[table] = (
                self.src.execute(f"SELECT count(*) FROM {table}").fetchone()[0] if exists else 0
            )
        return counts

    def remaining(self) -> dict[str, int]:
        """Rows not yet copied, per table (what a progress bar counts down)."""
        out = {}
        for table, total in self.source_counts().items():
            if not total:
                out[table] = 0
                continue
            out[table] = self.src.execute(
                f"SELECT count(*) FROM {table} WHERE id > ?", (self._done_through(table),)
            ).fetchone()[0]
        return out

    def target_counts(self) -> dict[str, int]:
        return {t: self.pg.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}

    def run(self, progress: Progress | None = None) -> None:
        for table, total in self.source_counts().items():
            if total:
                self._copy_table(table, progress)
        self._advance_sequences()

    def _copy_table(self, table: str, progress: Progress | None) -> None:
        have = self._source_columns(table)
        columns = COLUMNS[table]
        select = ", ".join(c if c in have else "NULL" for c in columns)
        last = self._done_through(table)
        while True:
            rows = self.src.execute(
                f"SELECT {select} FROM {table} WHERE id > ? ORDER BY id LIMIT ?",
                (last, self.batch_rows),
            ).fetchall()
            if not rows:
                return
            converted = [self._convert(columns, row) for row in rows]
            if table in PARTITIONED_TABLES:
                days = {int(row[1].timestamp() // 86400) for row in converted}
                self.partitions.ensure(self.pg, table, days)
            last = rows[-1][0]
            with self.pg.transaction():
                self._write(table, columns, converted)
                self.pg.execute(
                    "INSERT INTO mb_meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (self._mark_key(table), str(last)),
                )
            if progress is not None:
                progress(table, len(rows))

    @staticmethod
    def _convert(columns: tuple[str, ...], row: tuple) -> list:
        out = []
        for name, value in zip(columns, row, strict=True):
            if name in EPOCH_COLUMNS:
                value = to_datetime(value)
            elif name in TEXT_TIME_COLUMNS:
                value = _sqlite_time(value)
            elif name in JSON_COLUMNS:
                value = _json_text(value)
            elif isinstance(value, str) and "\x00" in value:
                value = value.replace("\x00", "")
            out.append(value)
        return out

    def _write(self, table: str, columns: tuple[str, ...], rows: list[list]) -> None:
        names = ", ".join(columns)
        if table in PARTITIONED_TABLES:
            with self.pg.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            # The summary's per-day counts, in the batch's transaction (exact on resume).
            add_day_counts(
                self.pg,
                day_counts(
                    rows if table == "events" else (),
                    rows if table == "anomalies" else (),
                    day_of=lambda row: int(row[1].timestamp() // 86400),
                ),
                "migrate",
            )
            return
        # sessions and patterns may already hold rows a daemon wrote: the existing row wins.
        if table == "sessions":
            extra, conflict = ", started, stats_auto", "(session_id)"
            rows = [[*row, True, 0] for row in rows]
        else:
            extra, conflict = ", pattern_key", "(pattern_type, pattern_key)"
            for row in rows:
                row[2] = row[2] if row[2] is not None else "null"
            rows = [[*row, pattern_key(json.loads(row[2]))] for row in rows]
        marks = ", ".join(["%s"] * (len(columns) + extra.count(",")))
        with self.pg.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} ({names}{extra}) OVERRIDING SYSTEM VALUE "
                f"VALUES ({marks}) ON CONFLICT {conflict} DO NOTHING",
                rows,
            )

    def _advance_sequences(self) -> None:
        """Identity ids continue after the copied ones; id blocks after the copied ids."""
        for table in ("sessions", "patterns"):
            self.pg.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"greatest((SELECT coalesce(max(id), 0) FROM {table}), 1))"
            )
        top = 0
        for table in PARTITIONED_TABLES:
            row = self.pg.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
            top = max(top, row[0])
        first_free = (top >> wire.ID_BLOCK_BITS) + 1
        current = self.pg.execute("SELECT last_value, is_called FROM mb_id_blocks").fetchone()
        next_block = current[0] + 1 if current[1] else current[0]
        if next_block < first_free:
            self.pg.execute("SELECT setval('mb_id_blocks', %s, false)", (first_free,))

    def close(self) -> None:
        self.src.close()
        self.pg.close()
