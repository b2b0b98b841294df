"""The protocol as other versions see it: every control message keeps its bytes on the
socket, and rows keep the column order of their tables.

Publishers and daemons of different releases talk to each other (a publisher is upgraded
with its component, the daemon on its own schedule), so each map wire.py builds must pack
to exactly what earlier releases sent: same keys, same order (msgpack keeps insertion
order), same values. The expected maps below are the literals the builders held before the
protocol moved into wire.py.
"""

from __future__ import annotations

import sqlite3
import threading

import msgpack
import pytest
import zmq

from memory_bank import wire
from memory_bank.control import ControlClient
from memory_bank.store import open_store

RUN = {
    "job": "retention",
    "trigger": "request",
    "started": 1.5,
    "finished": 2.5,
    "status": "ok",
    "deleted": {"events": 3},
    "bytes_reclaimed": None,
    "longest_step_ms": 0.25,
    "error": None,
}
FAILED_RUN = {**RUN, "status": "error", "error": "disk I/O error"}
TOKEN = {"identity": "pk", "token": b"\x01\x02"}

MESSAGES = {
    "publisher sync": (
        wire.sync_request(
            7, 4294967296, 12, wait=1.0, urgent=False, dropped=3, base=10, token=True
        ),
        {
            "op": "sync",
            "rid": 7,
            "pub": 4294967296,
            "seq": 12,
            "wait": 1.0,
            "urgent": False,
            "dropped": 3,
            "base": 10,
            "token": True,
        },
    ),
    "detect's sync": (
        wire.sync_request(2, 5, 1, wait=2.0, urgent=True),
        {"op": "sync", "rid": 2, "pub": 5, "seq": 1, "wait": 2.0, "urgent": True},
    ),
    "ping": (wire.request(wire.OP_PING, 3), {"op": "ping", "rid": 3}),
    "stats": (wire.request(wire.OP_STATS, 3), {"op": "stats", "rid": 3}),
    "lease": (wire.request(wire.OP_LEASE, 3), {"op": "lease", "rid": 3}),
    "retention with days": (
        wire.maintenance_request("retention", 4, days=0.5),
        {"op": "retention", "rid": 4, "days": 0.5},
    ),
    "vacuum": (wire.maintenance_request("vacuum", 4), {"op": "vacuum", "rid": 4}),
    "scheduled retention": (
        wire.maintenance_request("retention", 1, trigger="schedule", then=["vacuum"]),
        {"op": "retention", "rid": 1, "trigger": "schedule", "then": ["vacuum"]},
    ),
    "scheduled vacuum": (
        wire.maintenance_request("vacuum", 1, trigger="schedule", then=[]),
        {"op": "vacuum", "rid": 1, "trigger": "schedule", "then": []},
    ),
    "ack": (
        wire.ack_reply(7, 12, 12, "inst"),
        {"rid": 7, "ok": True, "committed": 12, "instance": "inst"},
    ),
    "ack with a gap": (
        wire.ack_reply(7, 9, 12, "inst", resend_from=10),
        {"rid": 7, "ok": False, "committed": 9, "instance": "inst", "resend_from": 10},
    ),
    "ack with a spool token": (
        wire.with_spool_token(wire.ack_reply(7, 12, 12, "inst"), wire.spool_token("pk", b"\1\2")),
        {"rid": 7, "ok": True, "committed": 12, "instance": "inst", "spool_token": TOKEN},
    ),
    "ack without CURVE": (
        wire.with_spool_token(wire.ack_reply(7, 12, 12, "inst"), None),
        {"rid": 7, "ok": True, "committed": 12, "instance": "inst", "spool_token": None},
    ),
    "ping reply": (
        wire.ping_reply(3, 99, "ev.db", "inst"),
        {"rid": 3, "ok": True, "pid": 99, "db": "ev.db", "instance": "inst"},
    ),
    "stats reply": (
        wire.stats_reply(3, {"received_records": 1}),
        {"rid": 3, "ok": True, "stats": {"received_records": 1}},
    ),
    "lease reply": (
        wire.lease_reply(3, 8, wire.spool_token("pk", b"\1\2")),
        {"rid": 3, "ok": True, "block": 8, "spool_token": TOKEN},
    ),
    "maintenance run": (
        wire.maintenance_run("retention", "request", 1.5, 2.5, None, {"events": 3}, None, 0.25),
        RUN,
    ),
    "maintenance reply": (
        wire.maintenance_reply(4, RUN),
        {"rid": 4, "ok": True, "run": RUN, "error": None},
    ),
    "failed maintenance reply": (
        wire.maintenance_reply(4, FAILED_RUN),
        {"rid": 4, "ok": False, "run": FAILED_RUN, "error": "disk I/O error"},
    ),
    "refusal": (
        wire.error_reply(5, "unknown op 'x'"),
        {"rid": 5, "ok": False, "error": "unknown op 'x'"},
    ),
    "unreadable request": (
        wire.unreadable_reply("request is not a map"),
        {"ok": False, "error": "request is not a map"},
    ),
}


@pytest.mark.parametrize("name", MESSAGES)
def test_control_messages_keep_their_bytes(name):
    built, before = MESSAGES[name]
    assert msgpack.packb(built) == msgpack.packb(before)


def test_replies_read_back_as_sent():
    ack = wire.Ack.parse(
        wire.with_spool_token(
            wire.ack_reply(7, 9, 12, "inst", resend_from=10), wire.spool_token("pk", b"\1")
        )
    )
    assert (ack.rid, ack.committed, ack.instance, ack.resend) == (7, 9, "inst", True)
    assert ack.has_token and ack.token == ("pk", b"\1")
    plain = wire.Ack.parse(wire.ack_reply(7, 12, 12, "inst"))
    assert not plain.resend and not plain.has_token and plain.token is None
    lease = wire.Lease.parse(wire.lease_reply(3, 8, None))
    assert (lease.block, lease.token, lease.error) == (8, None, None)
    refused = wire.Lease.parse(wire.error_reply(3, "cannot lease ids now: locked"))
    assert refused.block is None and refused.error == "cannot lease ids now: locked"
    sync = wire.SyncRequest.parse(msgpack.unpackb(msgpack.packb(MESSAGES["detect's sync"][0])))
    assert (sync.publisher_id, sync.seq, sync.urgent) == (5, 1, True)
    assert sync.dropped is None and sync.base is None and not sync.token
    job = wire.MaintenanceRequest.parse(MESSAGES["scheduled retention"][0])
    assert (job.job, job.days, job.trigger, job.then) == (
        "retention",
        None,
        "schedule",
        ("vacuum",),
    )


def test_control_client_numbers_requests_in_place():
    """ControlClient sends a constructor's map with its own rid, in the rid's place."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://control")
    client = ControlClient("inproc://control", ctx)
    got = {}

    def answer():
        for _ in range(2):
            identity, raw = router.recv_multipart()
            got.setdefault("raw", []).append(raw)
            request = msgpack.unpackb(raw)
            router.send_multipart([identity, msgpack.packb(wire.stats_reply(request["rid"], {}))])

    server = threading.Thread(target=answer)
    server.start()
    try:
        client.send(wire.maintenance_request("retention", 0, days=1.5))
        client.request(wire.OP_STATS)
    finally:
        server.join(10)
        client.close()
        router.close(0)
        ctx.term()
    assert got["raw"] == [
        msgpack.packb({"op": "retention", "rid": 1, "days": 1.5}),
        msgpack.packb({"op": "stats", "rid": 2}),
    ]


def test_row_layouts_are_their_tables_column_order(tmp_path):
    """The writer binds rows positionally: wire's columns are the tables' leading columns."""
    store = open_store(str(tmp_path / "ev.db"))
    store.close()
    conn = sqlite3.connect(tmp_path / "ev.db")
    try:
        for kind, columns in wire.ROW_COLUMNS.items():
            table = [r[1] for r in conn.execute(f"PRAGMA table_info({kind})")]
            assert tuple(table[: len(columns)]) == columns
    finally:
        conn.close()
    event = [1, 2.0, "E", "C", "m", None]
    anomaly = [2, 2.0, "T", "HIGH", "d", "{}", 1.0, None]
    events, anomalies = wire.decode_tail(wire.encode_tail([event], [anomaly]))
    assert events == [wire.row_dict("events", event)]
    assert anomalies[0]["severity"] == anomaly[wire.AnomalyRow.SEVERITY] == "HIGH"
    assert anomalies[0]["expected_value"] is None


@pytest.mark.parametrize("events, anomalies", [(0, 0), (3, 30), (30, 2), (2000, 160)])
def test_a_tail_messages_newest_rows_are_read_as_the_whole_would_be(events, anomalies):
    """The live page is sent a batch's newest rows: skipping to them gives the same rows,
    and the same counts, as reading the whole message."""
    rows = (
        [[i, 1.5, "E", "C", f"m{i}", f'{{"i": {i}}}'] for i in range(events)],
        [[i, 2.5, "T", "HIGH", f"d{i}", None, float(i), None] for i in range(anomalies)],
    )
    raw = wire.encode_tail(*rows)
    newest_events, event_count, newest_anomalies, anomaly_count = wire.tail_newest(raw, 25)
    all_events, all_anomalies = wire.tail_rows(raw)
    assert (event_count, anomaly_count) == (events, anomalies)
    assert newest_events == all_events[-25:] == rows[0][-25:]
    assert newest_anomalies == all_anomalies[-25:] == rows[1][-25:]
    with pytest.raises(ValueError):
        wire.tail_newest(msgpack.packb([[], [], []]), 25)
