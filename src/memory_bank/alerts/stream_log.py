"""Where the MQTT stream stands, kept in the database so that a daemon restart (SIGTERM or
SIGKILL) resumes where the broker last acknowledged.

``mb_stream_log`` has one row per committed batch, written in the batch's own transaction:
its ``seq`` is the commit order, and per table the ids of the batch's rows, in the order
the stream sends them (int64, packed). ``mb_stream_position`` has, per streaming sink, the
point up to which the broker acknowledged: every record of the batches before ``seq`` and
the first ``done`` of batch ``seq``. A stream reads back from here (the rows by id) what it
does not hold in memory: what was pending at a restart, and what overflowed its memory
while the broker was away. Log rows every stream has passed are deleted.
"""

from __future__ import annotations

import struct
from array import array
from operator import itemgetter

from .. import wire

TABLES = ("events", "anomalies", "metrics")
ID_CHUNK = 500  # ids per ``IN (...)`` (SQLite's limit on parameters)
END = 1 << 62  # past every seq

# SQLite's tables; PostgreSQL's are in store/postgresql_schema.py (schema version 3).
DDL = """
CREATE TABLE IF NOT EXISTS mb_stream_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    events BLOB,
    anomalies BLOB,
    metrics BLOB
);
CREATE TABLE IF NOT EXISTS mb_stream_position (
    sink TEXT PRIMARY KEY,
    tables TEXT NOT NULL,
    seq INTEGER NOT NULL,
    done INTEGER NOT NULL
);
"""

# (seq, records of batch seq already taken): the position of a stream.
Position = tuple[int, int]


def pack(rows: list) -> bytes:
    """The rows' ids as ``unpack`` reads them (``array("q")``'s bytes): struct in one call,
    about a third cheaper than an array grown from the ids one by one (it runs in every
    batch's transaction)."""
    return struct.pack(f"{len(rows)}q", *map(itemgetter(wire.ROW_ID), rows))


def unpack(blob: bytes | None) -> list[int]:
    if not blob:
        return []
    ids = array("q")
    ids.frombytes(blob)
    return ids.tolist()


def append(conn, tables: dict[str, list], chosen: set[str]) -> int | None:
    """In a batch's transaction: log the ids of its rows in ``chosen`` tables; returns the
    batch's ``seq`` (None when it has none)."""
    blobs = [pack(tables[t]) if t in chosen and tables.get(t) else None for t in TABLES]
    if not any(blobs):
        return None
    return conn.execute(
        "INSERT INTO mb_stream_log (events, anomalies, metrics) VALUES (?, ?, ?) RETURNING seq",
        blobs,
    ).fetchone()[0]


def start_positions(conn, streams: dict[str, tuple[str, ...]]) -> dict[str, Position]:
    """The position of each streaming sink (``streams``: sink -> its tables). A new sink,
    or one whose tables changed, starts after what is logged now (records committed from
    now on); sinks that no longer stream are forgotten, and the log rows no stream needs
    go."""
    (top,) = conn.execute("SELECT coalesce(max(seq), 0) FROM mb_stream_log").fetchone()
    known = {
        sink: (tables, seq, done)
        for sink, tables, seq, done in conn.execute(
            "SELECT sink, tables, seq, done FROM mb_stream_position"
        )
    }
    positions: dict[str, Position] = {}
    for sink, tables in streams.items():
        text = ",".join(tables)
        before = known.get(sink)
        if before is not None and before[0] == text:
            positions[sink] = (before[1], before[2])
            continue
        positions[sink] = (top + 1, 0)
        conn.execute(
            "INSERT INTO mb_stream_position (sink, tables, seq, done) VALUES (?, ?, ?, 0) "
            "ON CONFLICT(sink) DO UPDATE SET tables = excluded.tables, seq = excluded.seq, "
            "done = 0",
            (sink, text, top + 1),
        )
    gone = [(sink,) for sink in known if sink not in streams]
    conn.executemany("DELETE FROM mb_stream_position WHERE sink = ?", gone)
    prune(conn)
    return positions


def save_positions(conn, positions: dict[str, Position]) -> None:
    conn.executemany(
        "UPDATE mb_stream_position SET seq = ?, done = ? WHERE sink = ?",
        [(seq, done, sink) for sink, (seq, done) in positions.items()],
    )


def prune(conn) -> None:
    """Delete the log rows every stream has passed (all of them when none streams)."""
    conn.execute(
        "DELETE FROM mb_stream_log WHERE seq < "
        "(SELECT coalesce(min(seq), ?) FROM mb_stream_position)",
        (END,),
    )


def backlog(conn, position: Position, tables: tuple[str, ...]) -> tuple[int, int]:
    """Records of ``tables`` logged at or after ``position`` (what a restart resends), and
    the last seq they count."""
    lengths = " + ".join(f"coalesce(length({t}), 0)" for t in tables)
    size, top = conn.execute(
        f"SELECT coalesce(sum({lengths}), 0), coalesce(max(seq), 0) FROM mb_stream_log "
        "WHERE seq >= ?",
        (position[0],),
    ).fetchone()
    return max(int(size) // 8 - position[1], 0), int(top)


def read(conn, after: int, before: int | None, limit: int) -> list[tuple[int, dict]]:
    """Log rows ``after`` <= seq < ``before``, in order: (seq, {table: ids})."""
    rows = conn.execute(
        "SELECT seq, events, anomalies, metrics FROM mb_stream_log WHERE seq >= ? AND seq < ? "
        "ORDER BY seq LIMIT ?",
        (after, before if before is not None else END, limit),
    ).fetchall()
    return [(seq, dict(zip(TABLES, map(unpack, blobs), strict=True))) for seq, *blobs in rows]


def rows_by_id(conn, columns: str, table: str, ids: list[int]) -> dict[int, tuple[tuple, str]]:
    """The stored rows of ``ids`` (wire layout, and their created_at: ``columns``, the
    storage's ``row_columns``), by id; ids whose rows are gone (retention) are missing."""
    found: dict[int, tuple[tuple, str]] = {}
    for i in range(0, len(ids), ID_CHUNK):
        chunk = ids[i : i + ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        for *row, created in conn.execute(
            f"SELECT {columns} FROM {table} WHERE id IN ({marks})", chunk
        ):
            found[row[wire.ROW_ID]] = (row, created)
    return found
