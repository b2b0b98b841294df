"""Copy a SQLite database (ours, or the seed's own) into PostgreSQL: batched, resumable,
verified, and run again to catch up with a source that a daemon still writes.

events, anomalies and metrics are append-only and their ids come from per-publisher blocks
of 2**32 (``id >> 32`` names the block); a publisher's rows are committed in its send
order, so within a block the ids a rerun has not seen are (nearly always) above the
highest it copied. Each block's high-water mark is committed with the rows it covers
(``mb_meta``), so a copy killed at any moment resumes after its last batch and never
copies a row twice, and a rerun copies only what is new in every block, whatever the
order in which blocks were written. Then each block is verified: its row count and id
sum in PostgreSQL against the source's over the same id range; a block that differs
(a row committed late below its block's mark: a publisher shared by threads can take
an id and queue it a moment after a later one) is compared id by id, and what is
missing is copied.

sessions and patterns are upserts whose rows change after they are written (a session
ends, a pattern's frequency rises): every run copies them again, updating the rows
an earlier run copied (a row a PostgreSQL daemon made itself, under another id, wins).

The alerts' notifications and rule states travel too (alerts/outbox.py): every mb_outbox
row with its id, status and attempts (a pending notification is delivered by the target's
daemon, with the id it was written with; a rerun inserts what is new and moves a row the
source has since delivered or dropped out of pending, never back), and mb_alert_state
(firing stays firing; a rerun takes the source's newer state). Not while a daemon runs
alerts on the target (it holds their advisory lock): they are then reported missing. The
MQTT stream's log and positions do not travel: its positions count the source's log, so a
streaming sink on the target starts with what the target commits.

The source is read in one snapshot (a WAL read transaction), so a run copies and checks
the database as it was when the run began; the report says per table what the source
holds, what PostgreSQL holds, and what is missing, and ``complete`` only when nothing is.
The seed's databases lack some of our columns (pattern_key, started...): they are
derived as the SQLite store's own upgrade does. The library reports progress through a
callback; the CLI draws the bar and prints the report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import discovery, wire
from .postgresql import (
    PartitionKeeper,
    add_day_counts,
    add_metric_rollups,
    day_counts,
    ensure_schema,
)
from .postgresql_connection import connect, to_datetime
from .schema import pattern_key, read_only_uri
from .sql import TABLE_COLUMNS, metric_aggregates

log = logging.getLogger(__name__)

TABLES = ("events", "anomalies", "metrics", "sessions", "patterns")
# The alerts' tables that travel (the stream's log and positions do not).
ALERT_TABLES = ("mb_outbox", "mb_alert_state")
OUTBOX_COLUMNS = tuple(
    "id sink rule state at body status attempts last_error last_attempt_at delivered_at".split()
)
PARTITIONED_TABLES = ("events", "anomalies", "metrics")
# Columns copied per table (the seed's), and which hold times or JSON.
COLUMNS = {t: tuple(c.strip() for c in TABLE_COLUMNS[t].split(",")) for t in TABLES}
EPOCH_COLUMNS = {"timestamp", "start_time", "end_time", "last_seen"}
TEXT_TIME_COLUMNS = {"created_at", "updated_at"}
JSON_COLUMNS = {"data", "pattern_data", "metadata"}

Progress = Callable[[str, int], None]  # (table, rows just copied)
# An id's place within its block: its low 32 bits.
OFFSET_MASK = (1 << wire.ID_BLOCK_BITS) - 1


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


@dataclass
class TableReport:
    """One table after a run: rows in the source snapshot, rows in PostgreSQL, rows this
    run wrote (new, late or changed), and source rows PostgreSQL still lacks."""

    table: str
    source: int
    target: int
    copied: int
    missing: int


@dataclass
class MigrationReport:
    tables: list[TableReport]
    live: bool  # a daemon (or embedded writer) was writing the source meanwhile
    alerts_busy: bool = False  # a daemon runs the target's alerts: theirs were not copied

    @property
    def complete(self) -> bool:
        """Every row of the source (as of the run's snapshot) is in PostgreSQL."""
        return all(t.missing == 0 for t in self.tables)


@dataclass
class Block:
    """A source id block's rows (in the snapshot): count, id range, and the sum of the
    ids' low 32 bits (which, with the count, tells two id sets apart)."""

    number: int
    rows: int
    first: int
    last: int
    offsets: int

    @property
    def top(self) -> int:
        return ((self.number + 1) << wire.ID_BLOCK_BITS) - 1


class Migration:
    """One SQLite -> PostgreSQL copy. ``run()`` is safe to call again after a crash, and
    again later to catch up with what a daemon committed to the source meanwhile."""

    def __init__(self, source: str | os.PathLike, url: str, batch_rows: int = 10_000):
        self.source = Path(os.path.realpath(os.fspath(source)))
        if not self.source.exists():
            raise FileNotFoundError(f"no SQLite database at {self.source}")
        self.url = url
        self.batch_rows = batch_rows
        self.live = discovery.daemon_running(self.source)
        self.src = sqlite3.connect(read_only_uri(self.source), uri=True, isolation_level=None)
        # One snapshot for the whole run (what is copied, counted and verified agree).
        # Only in WAL mode, where it blocks no writer; a seed database in rollback-journal
        # mode is read statement by statement, as the seed's own process may write it.
        self._snapshot = self.src.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        if self._snapshot:
            self.src.execute("BEGIN")
            self.src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        self.pg = connect(url, application_name="memorybank-migrate")
        ensure_schema(self.pg)
        self.partitions = PartitionKeeper()
        self.partitions.load(self.pg)
        self._blocks: dict[str, list[Block]] = {}

    # -- what the source holds ----------------------------------------------------------
    def _has_table(self, table: str) -> bool:
        return bool(
            self.src.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
        )

    def _source_columns(self, table: str) -> set[str]:
        return {r[1] for r in self.src.execute(f"PRAGMA table_info({table})")}

    def source_counts(self, tables=TABLES) -> dict[str, int]:
        return {
            table: self.src.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            if self._has_table(table)
            else 0
            for table in tables
        }

    def target_counts(self, tables=TABLES) -> dict[str, int]:
        return {t: self.pg.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}

    def _source_blocks(self, table: str) -> list[Block]:
        if table not in self._blocks:
            self._blocks[table] = [
                Block(*row)
                for row in self.src.execute(
                    f"SELECT id >> {wire.ID_BLOCK_BITS}, count(*), min(id), max(id), "
                    f"sum(id & {OFFSET_MASK}) FROM {table} GROUP BY 1 ORDER BY 1"
                )
            ] if self._has_table(table) else []  # fmt: skip
        return self._blocks[table]

    # -- high-water marks, per id block ---------------------------------------------------
    def _mark_key(self, table: str) -> str:
        return f"migrate:{self.source}:{table}"

    def _marks(self, table: str) -> dict[int, int]:
        """Per block, the highest id copied. A copy made before marks were per block left
        one mark per table: every id up to it was copied (or is found by verification)."""
        prefix = self._mark_key(table)
        marks, legacy = {}, None
        for key, value in self.pg.execute(
            "SELECT key, value FROM mb_meta WHERE key = %s OR starts_with(key, %s)",
            (prefix, prefix + ":"),
        ):
            if key == prefix:
                legacy = int(value)
            else:
                marks[int(key.rsplit(":", 1)[1])] = int(value)
        if legacy is not None:
            for block in self._source_blocks(table):
                marks.setdefault(block.number, min(legacy, block.top))
        return marks

    def remaining(self) -> dict[str, int]:
        """Rows a run will go through, per table (what a progress bar counts down): the
        rows above each block's mark, and every session and pattern."""
        out = {}
        for table in TABLES:
            if table not in PARTITIONED_TABLES:
                out[table] = sum(b.rows for b in self._source_blocks(table))
                continue
            marks = self._marks(table)
            out[table] = sum(
                self.src.execute(
                    f"SELECT count(*) FROM {table} WHERE id > ? AND id <= ?",
                    (marks[b.number], b.last),
                ).fetchone()[0]
                if b.number in marks
                else b.rows
                for b in self._source_blocks(table)
            )
        return out

    # -- the run ----------------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> MigrationReport:
        """Copy what is new, verify every block, copy what verification finds missing,
        then sessions and patterns; returns the report."""
        copied: dict[str, int] = {}
        missing: dict[str, int] = {}
        for table in PARTITIONED_TABLES:
            copied[table] = self._copy_new_rows(table, progress)
            found, missing[table] = self._reconcile(table)
            copied[table] += found
        for table in ("sessions", "patterns"):
            copied[table], missing[table] = self._sync(table, progress)
        self._advance_sequences()
        alerts = self._sync_alerts()
        source, target = self.source_counts(), self.target_counts()
        return MigrationReport(
            [TableReport(t, source[t], target[t], copied[t], missing[t]) for t in TABLES] + alerts,
            self.live,
            alerts_busy=any(t.missing for t in alerts),
        )

    def _select(self, table: str) -> str:
        have = self._source_columns(table)
        return ", ".join(c if c in have else "NULL" for c in COLUMNS[table])

    def _copy_new_rows(self, table: str, progress: Progress | None) -> int:
        """Every block's rows above its mark, ``batch_rows`` per transaction (a batch may
        span blocks), each batch committed with the marks it advances."""
        marks = self._marks(table)
        select = self._select(table)
        batch: list[tuple] = []
        advanced: dict[int, int] = {}
        total = 0
        for block in self._source_blocks(table):
            last = marks.get(block.number, (block.number << wire.ID_BLOCK_BITS) - 1)
            while last < block.last:
                rows = self.src.execute(
                    f"SELECT {select} FROM {table} WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                    (last, block.last, self.batch_rows - len(batch)),
                ).fetchall()
                if not rows:
                    break
                batch += rows
                last = advanced[block.number] = rows[-1][0]
                if len(batch) >= self.batch_rows:
                    total += self._commit_batch(table, batch, advanced, progress)
                    batch, advanced = [], {}
        if batch:
            total += self._commit_batch(table, batch, advanced, progress)
        return total

    def _commit_batch(
        self, table: str, rows: list[tuple], marks: dict[int, int], progress: Progress | None
    ) -> int:
        converted = [self._convert(COLUMNS[table], row) for row in rows]
        self.partitions.ensure(
            self.pg, table, {int(row[1].timestamp() // 86400) for row in converted}
        )
        with self.pg.transaction():
            self._write(table, COLUMNS[table], converted)
            if marks:
                with self.pg.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO mb_meta (key, value) VALUES (%s, %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [(f"{self._mark_key(table)}:{b}", str(m)) for b, m in marks.items()],
                    )
        if progress is not None:
            progress(table, len(rows))
        return len(rows)

    # -- verification -----------------------------------------------------------------------
    def _differing_blocks(self, table: str, blocks: list[Block]) -> list[Block]:
        """Blocks whose rows in PostgreSQL (within the source's id range) differ from the
        source's in count or id sum: one query for all blocks."""
        if not blocks:
            return []
        found = {
            number: (rows, offsets)
            for number, rows, offsets in self.pg.execute(
                f"SELECT b.n, count(t.id), coalesce(sum(t.id & {OFFSET_MASK}), 0) "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS b(n, lo, hi) "
                f"LEFT JOIN {table} t ON t.id BETWEEN b.lo AND b.hi GROUP BY b.n",
                (
                    [b.number for b in blocks],
                    [b.first for b in blocks],
                    [b.last for b in blocks],
                ),
            )
        }
        return [b for b in blocks if found.get(b.number) != (b.rows, b.offsets)]

    def _missing_ids(self, table: str, block: Block) -> Iterator[list[int]]:
        """The block's source ids PostgreSQL lacks, a chunk at a time."""
        last = block.first - 1
        while True:
            ids = [
                r[0]
                for r in self.src.execute(
                    f"SELECT id FROM {table} WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                    (last, block.last, self.batch_rows),
                )
            ]
            if not ids:
                return
            present = {
                r[0]
                for r in self.pg.execute(
                    f"SELECT id FROM {table} WHERE id BETWEEN %s AND %s", (ids[0], ids[-1])
                )
            }
            gone = [i for i in ids if i not in present]
            if gone:
                yield gone
            last = ids[-1]

    def _reconcile(self, table: str) -> tuple[int, int]:
        """Verify every block; copy the rows of those that differ that PostgreSQL lacks.
        Returns (rows copied, rows still missing after a second check)."""
        differing = self._differing_blocks(table, self._source_blocks(table))
        copied = 0
        select = self._select(table)
        for block in differing:
            for ids in self._missing_ids(table, block):
                log.info(
                    "%s: block %d lacks %d row(s); copying them", table, block.number, len(ids)
                )
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    rows = self.src.execute(
                        f"SELECT {select} FROM {table} WHERE id IN "
                        f"({', '.join('?' * len(chunk))}) ORDER BY id",
                        chunk,
                    ).fetchall()
                    copied += self._commit_batch(table, rows, {}, None)
        missing = sum(
            len(ids)
            for block in self._differing_blocks(table, differing)
            for ids in self._missing_ids(table, block)
        )
        return copied, missing

    # -- sessions and patterns: copied again every run ---------------------------------------
    def _sync(self, table: str, progress: Progress | None) -> tuple[int, int]:
        """Every row, upserted: new rows are inserted, rows an earlier run copied (same id)
        are updated where they changed. Returns (rows written, source rows missing)."""
        if not self._has_table(table):
            return 0, 0
        columns = COLUMNS[table]
        select = self._select(table)
        if table == "sessions":  # the writer's own columns, where the source has them
            have = self._source_columns(table)
            select += ", " + ("started" if "started" in have else "1")
            select += ", " + ("stats_auto" if "stats_auto" in have else "0")
        last, written = -(2**63), 0
        keys: set = set()
        while True:
            rows = self.src.execute(
                f"SELECT {select} FROM {table} WHERE id > ? ORDER BY id LIMIT ?",
                (last, self.batch_rows),
            ).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            converted = [
                self._convert(columns, row[: len(columns)]) + list(row[len(columns) :])
                for row in rows
            ]
            with self.pg.transaction():
                written += self._upsert(table, columns, converted, keys)
            if progress is not None:
                progress(table, len(rows))
        if table == "sessions":
            present = {r[0] for r in self.pg.execute("SELECT session_id FROM sessions")}
        else:
            present = set(self.pg.execute("SELECT pattern_type, pattern_key FROM patterns"))
        return written, len(keys - present)

    def _upsert(self, table: str, columns: tuple[str, ...], rows: list[list], keys: set) -> int:
        """Insert, or update the row an earlier run copied (same id) if it differs; a row
        of the same key made by a PostgreSQL daemon (another id) is left as it is."""
        names = ", ".join(columns)
        if table == "sessions":
            extra: tuple[str, ...] = ("started", "stats_auto")
            rows = [[*row[:-2], bool(row[-2]), int(row[-1] or 0)] for row in rows]
            keys.update(row[1] for row in rows)
            conflict = "session_id"
        else:
            extra = ("pattern_key",)
            for row in rows:
                row[2] = row[2] if row[2] is not None else "null"
            rows = [[*row, pattern_key(json.loads(row[2]))] for row in rows]
            keys.update((row[1], row[-1]) for row in rows)
            conflict = "pattern_type, pattern_key"
        changed = [c for c in (*columns, *extra) if c not in ("id", "created_at")]
        # What tells a changed row (updated_at alone would: a seed's NULL becomes "now").
        compared = [c for c in changed if c != "updated_at"]
        marks = ", ".join(["%s"] * (len(columns) + len(extra)))
        with self.pg.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} AS t ({names}, {', '.join(extra)}) OVERRIDING SYSTEM "
                f"VALUE VALUES ({marks}) ON CONFLICT ({conflict}) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in changed)
                + f" WHERE t.id = excluded.id AND ({', '.join(f't.{c}' for c in compared)}) "
                f"IS DISTINCT FROM ({', '.join(f'excluded.{c}' for c in compared)})",
                rows,
            )
            return max(cur.rowcount, 0)

    # -- the alerts' notifications and rule states --------------------------------------------
    def _sync_alerts(self) -> list[TableReport]:
        """mb_outbox and mb_alert_state, under the alerts' advisory lock (not beside a
        daemon that runs alerts on the target: its queues and states are its own)."""
        from ..alerts.storage import ALERTS_LOCK

        source = self.source_counts(ALERT_TABLES)
        copied = dict.fromkeys(ALERT_TABLES, 0)
        missing = dict.fromkeys(ALERT_TABLES, 0)
        locked = "SELECT pg_try_advisory_lock(%s)"
        if not self.pg.execute(locked, (ALERTS_LOCK,)).fetchone()[0]:
            missing = source  # copied in the transaction below, or not at all
        else:
            try:
                with self.pg.transaction():
                    copied = {
                        "mb_outbox": self._sync_outbox(),
                        "mb_alert_state": self._sync_states(),
                    }
            finally:
                self.pg.execute("SELECT pg_advisory_unlock(%s)", (ALERTS_LOCK,))
        target = self.target_counts(ALERT_TABLES)
        return [TableReport(t, source[t], target[t], copied[t], missing[t]) for t in ALERT_TABLES]

    def _sync_outbox(self) -> int:
        """Notifications the target lacks (by id and sink), in the source's order; rows the
        target still has pending that the source has since delivered or dropped take the
        source's outcome. Returns the rows written."""
        if not self._has_table("mb_outbox"):
            return 0
        rows = [
            self._convert(OUTBOX_COLUMNS, row)
            for row in self.src.execute(
                f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM mb_outbox ORDER BY seq"
            )
        ]
        present = {
            (nid, sink): status
            for nid, sink, status in self.pg.execute("SELECT id, sink, status FROM mb_outbox")
        }
        new = [row for row in rows if (row[0], row[1]) not in present]
        ended = [
            (*row[6:], *row[:2])
            for row in rows
            if row[6] != "pending" and present.get((row[0], row[1])) == "pending"
        ]
        with self.pg.cursor() as cur:
            cur.executemany(
                f"INSERT INTO mb_outbox ({', '.join(OUTBOX_COLUMNS)}) "
                f"VALUES ({', '.join(['%s'] * len(OUTBOX_COLUMNS))})",
                new,
            )
            cur.executemany(
                "UPDATE mb_outbox SET status = %s, attempts = %s, last_error = %s, "
                "last_attempt_at = %s, delivered_at = %s "
                "WHERE id = %s AND sink = %s AND status = 'pending'",
                ended,
            )
        return len(new) + len(ended)

    def _sync_states(self) -> int:
        """The rules' states, the source's replacing the target's of the same rule and
        group. Returns the rows written."""
        if not self._has_table("mb_alert_state"):
            return 0
        rows = self.src.execute("SELECT rule, grp, state FROM mb_alert_state").fetchall()
        with self.pg.cursor() as cur:
            cur.executemany(
                "INSERT INTO mb_alert_state AS t (rule, grp, state) VALUES (%s, %s, %s) "
                "ON CONFLICT (rule, grp) DO UPDATE SET state = excluded.state "
                "WHERE t.state IS DISTINCT FROM excluded.state",
                rows,
            )
            return max(cur.rowcount, 0)

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
        """COPY rows of a partitioned table, with the summary's per-day counts (and the
        metrics' rollups), in the caller's transaction (so a resumed copy counts each row
        once)."""
        names = ", ".join(columns)
        with self.pg.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        add_day_counts(
            self.pg,
            day_counts(
                rows if table == "events" else (),
                rows if table == "anomalies" else (),
                day_of=lambda row: int(row[1].timestamp() // 86400),
            ),
            "migrate",
        )
        if table == "metrics":
            add_metric_rollups(
                self.pg,
                metric_aggregates([(r[2], r[1].timestamp(), r[3]) for r in rows], 60, 0, 1, 2),
                "migrate",
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
        if self._snapshot:
            self.src.execute("COMMIT")
        self.src.close()
        self.pg.close()
