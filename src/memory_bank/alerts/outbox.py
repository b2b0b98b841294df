"""The outbox: notifications written in the same transaction as the batch that caused
them, one row per (notification, sink), delivered afterwards in ``seq`` order per sink.

A row is ``pending`` until its sink took it (``delivered``), or until the sink's queue
overflowed (``dropped``: the oldest pending go first; counted and logged). Its ``id`` is
made once, here, so every retry and every daemon restart delivers the same id. Delivered
and dropped rows are kept for ``memorybank alerts`` up to ``KEEP_DONE`` rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from ..jsontext import loads
from .reading import missing_table

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)

if TYPE_CHECKING:  # readers (viewer, alerts command) need no evaluation, nor wire's codec
    from .evaluation import GroupState, Key, Notification

# A read-only query's rows as tuples (``Reader.tuples``).
Query = Callable[[str, tuple], list[tuple]]

KEEP_DONE = 10_000

# SQLite's tables; PostgreSQL's are in store/postgresql_schema.py (schema version 3).
DDL = """
CREATE TABLE IF NOT EXISTS mb_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    sink TEXT NOT NULL,
    rule TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_attempt_at REAL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS mb_outbox_queue ON mb_outbox(sink, status, seq);
CREATE TABLE IF NOT EXISTS mb_alert_state (
    rule TEXT NOT NULL,
    grp TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (rule, grp)
);
"""


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def body_of(note: Notification, nid: str, test: bool = False) -> dict:
    """The JSON every sink carries (the webhook's POST body, the MQTT payload)."""
    rule = note.rule
    body: dict[str, object] = {
        "id": nid,
        "rule": rule.name,
        "state": note.state,
        "at": iso(note.at),
        "when": rule.when,
        "group": {rule.group: note.group} if rule.group else {},
        "summary": f"{rule.name} {note.state}: {note.summary}",
        "table": note.table,
        "record": note.record,
    }
    if test:
        body["test"] = True
    return body


def load_states(conn) -> dict[Key, GroupState]:
    from .evaluation import GroupState

    return {
        (rule, grp): GroupState.from_json(loads(text))
        for rule, grp, text in conn.execute("SELECT rule, grp, state FROM mb_alert_state")
    }


def save_states(conn, touched: dict[Key, GroupState]) -> None:
    conn.executemany(
        "INSERT INTO mb_alert_state (rule, grp, state) VALUES (?, ?, ?) "
        "ON CONFLICT(rule, grp) DO UPDATE SET state = excluded.state",
        [(r, g, st.to_text()) for (r, g), st in touched.items()],
    )


def delete_states(conn, keys: list[Key]) -> None:
    """The states of rules removed, or changed to watch something else (evaluation.py)."""
    conn.executemany("DELETE FROM mb_alert_state WHERE rule = ? AND grp = ?", keys)


def insert(conn, notes: list[Notification], sinks: set[str]) -> dict[str, int]:
    """Queue each notification for each of its rule's sinks that is configured; returns
    rows added per sink."""
    import json  # here, as uuid: the outbox's readers (the viewer's summary) never load them
    import uuid

    rows: list[tuple] = []
    added: dict[str, int] = {}
    for note in notes:
        nid = uuid.uuid4().hex
        text = json.dumps(body_of(note, nid), default=str)
        for sink in note.rule.notify:
            if sink in sinks:
                rows.append((nid, sink, note.rule.name, note.state, note.at, text))
                added[sink] = added.get(sink, 0) + 1
    conn.executemany(
        "INSERT INTO mb_outbox (id, sink, rule, state, at, body) VALUES (?, ?, ?, ?, ?, ?)", rows
    )
    return added


def drop_oldest(conn, sink: str, count: int) -> int:
    """Overflow: the ``count`` oldest pending rows of ``sink`` are given up."""
    return conn.execute(
        "UPDATE mb_outbox SET status = 'dropped' WHERE seq IN (SELECT seq FROM mb_outbox "
        "WHERE sink = ? AND status = 'pending' ORDER BY seq LIMIT ?)",
        (sink, count),
    ).rowcount


def pending_counts(conn) -> dict[str, int]:
    return dict(
        conn.execute("SELECT sink, count(*) FROM mb_outbox WHERE status = 'pending' GROUP BY sink")
    )


def next_pending(conn, sink: str, after: int, limit: int = 100) -> list[tuple]:
    """(seq, body, attempts) of the sink's next pending rows, in order."""
    return conn.execute(
        "SELECT seq, body, attempts FROM mb_outbox WHERE sink = ? AND status = 'pending' "
        "AND seq > ? ORDER BY seq LIMIT ?",
        (sink, after, limit),
    ).fetchall()


def mark(conn, results: list[tuple]) -> dict[str, int]:
    """Write delivery outcomes ((sink, seq, attempts, error or None, at)); returns per sink
    how many pending rows were delivered."""
    delivered: dict[str, int] = {}
    for sink, seq, attempts, error, at in results:
        if error is None:
            n = conn.execute(
                "UPDATE mb_outbox SET status = 'delivered', attempts = ?, delivered_at = ?, "
                "last_attempt_at = ? WHERE seq = ? AND status = 'pending'",
                (attempts, at, at, seq),
            ).rowcount
            delivered[sink] = delivered.get(sink, 0) + n
        else:
            conn.execute(
                "UPDATE mb_outbox SET attempts = ?, last_error = ?, last_attempt_at = ? "
                "WHERE seq = ?",
                (attempts, error, at, seq),
            )
    return delivered


def prune(conn) -> None:
    """Keep the newest KEEP_DONE delivered or dropped rows (history for `alerts`)."""
    conn.execute(
        "DELETE FROM mb_outbox WHERE status != 'pending' AND seq <= "
        "(SELECT max(seq) FROM mb_outbox) - ?",
        (KEEP_DONE,),
    )


def _read(query: Query, sql: str, params: tuple = ()) -> list[tuple]:
    """A read of the alerts' tables: none in a database the daemon never ran alerts on."""
    try:
        return query(sql, params)
    except Exception as exc:
        if missing_table(exc):
            return []
        raise


def recent(query: Query, limit: int = 50, rule: str | None = None) -> list[dict]:
    """The newest notifications, newest first, for `memorybank alerts` (``query``: a
    reader's ``tuples``; a database the daemon never ran alerts on has none)."""
    rows = _read(
        query,
        "SELECT seq, id, sink, rule, state, at, status, attempts, last_error, delivered_at, "
        "body FROM mb_outbox WHERE (CAST(? AS TEXT) IS NULL OR rule = ?) "
        "ORDER BY seq DESC LIMIT ?",
        (rule, rule, limit),
    )
    keys = "seq id sink rule state at status attempts last_error delivered_at body".split()
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        body = loads(item.pop("body"))
        item["summary"] = body.get("summary")
        item["record"] = body.get("record")
        item["severity"] = severity_of(item["record"])
        out.append(item)
    return out


def severity_of(record) -> str | None:
    """An alert's severity: that of the anomaly that caused it (events, metrics and an
    absence with no record carry none)."""
    return record.get("severity") if isinstance(record, dict) else None


def last_seq(query: Query) -> int:
    """The newest outbox row's ``seq`` (0 when there is none, or no outbox yet)."""
    rows = _read(query, "SELECT max(seq) FROM mb_outbox")
    return (rows[0][0] if rows else None) or 0


def written_after(query: Query, seq: int, limit: int) -> list[tuple[int, str, str]]:
    """(seq, id, body) of the outbox rows after ``seq``, in the order they were written
    (a notification has one row per sink, with the same id and body)."""
    return _read(
        query,
        "SELECT seq, id, body FROM mb_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
        (seq, limit),
    )


def firing(query: Query) -> list[dict]:
    """Rules firing now, per group, from the persisted states (viewer, web; ``query``: a
    reader's ``tuples``)."""
    rows = _read(query, "SELECT rule, grp, state FROM mb_alert_state")
    out = []
    for rule, grp, text in rows:
        st = loads(text)
        if st.get("firing"):
            out.append(
                {
                    "rule": rule,
                    "group": grp,
                    "since": st.get("fired_at"),
                    "summary": st.get("summary"),
                    "record": st.get("record"),
                    "severity": severity_of(st.get("record")),
                }
            )
    return sorted(out, key=lambda a: (a["rule"], a["group"]))
