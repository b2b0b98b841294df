"""Bad input is refused with a reason and kept for inspection; good rows of the same
message are committed; the daemon keeps serving (ARCHITECTURE.md, "Bad input is refused,
not fatal")."""

from __future__ import annotations

import os
import sqlite3
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_bank import MemoryBank, discovery, wire
from memory_bank.control import daemon_stats

PUBLISHER = 9  # a publisher's id is its id block; its rows' ids lie in it
PUB = PUBLISHER << 32


def _push(db_path):
    endpoints = discovery.find_endpoints(discovery.resolve_db_path(db_path))
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoints.data)
    return ctx, push


def _event(n: int, ts: float, message="ok"):
    return [PUB + n, ts, "E", "C", message, None]


def test_bad_messages_are_refused_and_good_rows_kept(db_path, daemon):
    now = time.time()
    bad_rows = [
        [PUB + 2, "not a time", "E", "C", "bad", None],
        [PUB + 3, now + 10 * 86400, "E", "C", "future", None],
        [PUB + 4, 5.0, "E", "C", "1970", None],
        [PUB + 5, now, "E", "C", "x" * 2_000_000, None],
        [PUB + 6, now, 42, "C", "wrong type", None],
        [PUB + 7, now, "E", "C"],
        "not a row",
    ]
    good = [1, PUBLISHER, 1, 0, [_event(1, now, "first")], [], [], []]
    mixed = [
        1,
        PUBLISHER,
        2,
        1,
        [*bad_rows, _event(8, now, "fine")],
        [[PUB + 9, now, "A", "HIGH", "d", None, float("inf"), 1.0]],
        [[PUB + 10, now, "current", float("nan"), "A", None]],
        [[99, now], [1, now, "S1"]],
    ]
    ctx, push = _push(db_path)
    for raw in (
        b"\xff\x00garbage",
        msgpack.packb([2, 1, 1, 0, [], [], [], []]),
        msgpack.packb({"a": 1}),
        msgpack.packb(good),
        msgpack.packb(mixed),
        msgpack.packb([1, PUBLISHER, 3, 2, [_event(11, now)] * 50, [], [], []])[:300],  # truncated
        b"\x91" * 100_000 + b"\xc0",  # nested 100,000 deep
        b"\x00" * (17 * 1024 * 1024),  # over ZMQ_MAXMSGSIZE: ZeroMQ drops the connection
    ):
        push.send(raw)
    push.close(linger=2000)
    ctx.term()
    with MemoryBank(db_path) as memory:
        deadline = time.time() + 20
        while not memory.get_recent_sessions():
            assert time.time() < deadline
            time.sleep(0.05)
        assert sorted(e["message"] for e in memory.get_events()) == ["fine", "first"]
        assert memory.get_anomalies() == [] and memory.get_metrics() == []
        assert memory.get_session("S1")["status"] == "ACTIVE"
    stats = daemon_stats(db_path)
    assert stats["rejected_messages"] == 5  # garbage, version 2, a map, truncated, deep
    assert stats["rejected_records"] == len(bad_rows) + 3  # + anomaly, metric, unknown op
    conn = sqlite3.connect(db_path)
    reasons = [r[0] for r in conn.execute("SELECT reason FROM mb_rejected ORDER BY id")]
    conn.close()
    assert any("wire version 2" in r for r in reasons)
    assert any("outside the accepted window" in r for r in reasons)
    assert any("at most 1000000 characters" in r for r in reasons)
    assert any("unknown operation" in r for r in reasons)
    assert "wire version 2 is not 1" in daemon.log
    assert daemon.proc.poll() is None

    # ... and it goes on serving ordinary publishers.
    with MemoryBank(db_path) as memory:
        memory.log_event("OCPP_BOOT", "CSMS", "after the storm")
        assert memory.get_events()[0]["message"] == "after the storm"


def test_non_standard_json_from_any_publisher_is_refused(db_path, daemon):
    """NaN, Infinity and lone surrogate escapes (what Python's json writes unless told not
    to) are refused by the daemon, whoever sent them; standard JSON beside them is kept."""
    now = time.time()
    body = [
        1,
        PUBLISHER,
        1,
        0,
        [
            _event(1, now, "nan")[:5] + ['{"v": NaN}'],
            _event(2, now, "lone")[:5] + ['{"k": "\\ud800"}'],
            _event(3, now, "pair")[:5] + ['{"k": "NaN \\ud83d\\ude00"}'],
        ],
        [[PUB + 4, now, "A", "HIGH", "inf", "[Infinity]", 1.0, None]],
        [[PUB + 5, now, "current", 1.0, "A", '{"v": -Infinity}']],
        [[4, now, "P", '{"x": NaN}', '{"x":NaN}', 1.0]],
    ]
    ctx, push = _push(db_path)
    push.send(msgpack.packb(body))
    push.close(linger=2000)
    ctx.term()
    deadline = time.time() + 20
    while (stats := daemon_stats(db_path))["rejected_records"] < 5 or stats["batches"] < 1:
        assert time.time() < deadline
        time.sleep(0.05)
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT message FROM events").fetchall() == [("pair",)]
    reasons = sorted(r[0] for r in conn.execute("SELECT reason FROM mb_rejected"))
    conn.close()
    assert len(reasons) == 5 and all("is not standard JSON" in r for r in reasons), reasons


def test_nan_in_json_is_refused_at_the_call(tmp_path):
    """The publisher refuses NaN in data with a clear error, as metric values NaN are
    refused: a record is never stored with a token strict JSON readers reject."""
    with MemoryBank(tmp_path / "e.db", embedded=True) as memory:
        for call in (
            lambda: memory.log_event("E", "C", "m", {"v": float("nan")}),
            lambda: memory.record_metric("current", 1.0, "A", {"v": [float("inf")]}),
            lambda: memory.record_anomaly("A", "LOW", "d", {"v": float("-inf")}),
            lambda: memory.record_pattern("P", {"v": float("nan")}),
        ):
            with pytest.raises(ValueError, match="NaN and infinities cannot be stored"):
                call()
        assert memory.get_events() == [] and memory.get_patterns() == []


def test_data_lands_as_the_standard_library_encodes_it(tmp_path):
    """Whichever encoder a call takes (orjson, or the standard library for what orjson
    spells differently or refuses), what lands parses to json.dumps(value, default=str)."""
    import collections
    import dataclasses
    import datetime
    import decimal
    import enum
    import json
    import uuid

    class Level(enum.IntEnum):
        HIGH = 3

    class State(enum.StrEnum):  # as the ocpp library's enums are (str, Enum)
        CHARGING = "Charging"

    class Amps(float):  # as numpy's float64 is
        pass

    @dataclasses.dataclass
    class Reading:
        amps: float

    deep: list = []
    leaf = deep
    for _ in range(300):  # deeper than orjson goes (255)
        leaf.append([])
        leaf = leaf[0]
    values = [
        {"can_id": "0x300", "i": 12345, "none": None, "list": [1.5, "x", True]},
        {"text": "é \U0001f600 \x00 \u2028", "floats": [1e-7, 1e16, -0.0, 0.1]},
        {"at": datetime.datetime(2026, 11, 26, 3, 0, 1), "day": datetime.date(2026, 11, 26)},
        {"big": 2**70, "u64": 2**64 - 1, "low": -(2**63)},
        {1: "int key", None: "null key", 2.5: "float key", False: "bool key"},
        {"set": {1}, "bytes": b"x", "decimal": decimal.Decimal("1.5"), "uuid": uuid.UUID(int=7)},
        {"level": Level.HIGH, "state": State.CHARGING, "amps": Amps(32.5), "tuple": (1, 2)},
        {"reading": Reading(32.5)},
        collections.OrderedDict(b=1, a=2),
        collections.defaultdict(int, n=1),
        deep,
        [None, "a list at the top"],
        "a string",
        7,
    ]
    with MemoryBank(tmp_path / "j.db", embedded=True) as memory:
        for value in values:
            memory.log_event("E", "C", "m", value)
            memory.record_metric("m", 1.0, "A", value)
        stored = [e["data"] for e in reversed(memory.get_events(limit=100))]
        metadata = [m["metadata"] for m in reversed(memory.get_metrics("m", limit=100))]
    expected = [json.loads(json.dumps(value, default=str)) for value in values]
    assert stored == expected and metadata == expected
    with MemoryBank(tmp_path / "j.db", embedded=True) as memory:
        with pytest.raises(ValueError, match="NaN and infinities cannot be stored"):
            memory.log_event("E", "C", "m", {"missing": None, "v": float("nan")})
        with pytest.raises(ValueError, match="lone surrogate"):
            memory.log_event("E", "C", "m", {"k": ("ok", "\ud800")})


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=30)


def _shaped_message():
    """Messages near the real shape, so the fuzzer reaches the row checks."""
    field = st.sampled_from(
        [None, True, 0, 1, -1, 2**63, 1.5, float("nan"), float("inf"), 1e300, "", "E", b"b", []]
    ) | st.floats(1e9, 2e9)
    row = st.lists(field, min_size=0, max_size=9)
    rows = st.lists(row, max_size=3) | st.sampled_from([None, 1, "x"])
    return st.tuples(
        st.sampled_from([1, 1, 1, 2, 0, "1"]),
        st.sampled_from([1, 9 << 32, 0, -1, 2**64, "p", None]),
        st.integers(-2, 5),
        st.integers(-2, 5),
        rows,
        rows,
        rows,
        rows,
    ).map(list)


# Hypothesis explores the structure; atheris (below) runs the 100,000 coverage-guided cases.
FUZZ_EXAMPLES = int(os.environ.get("MEMORYBANK_FUZZ_EXAMPLES", "4000"))


def test_atheris_fuzz_100k_cases():
    """tests/fuzz_wire.py: 100,000 coverage-guided inputs through decode-and-validate."""
    import subprocess
    import sys
    from pathlib import Path

    runs = int(os.environ.get("MEMORYBANK_ATHERIS_RUNS", "100000"))
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fuzz_wire.py")), f"-runs={runs}", "-seed=1"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {runs} runs" in result.stderr


def _row(n, **columns):
    """An event with JSON data, column cN set to the value given (c0 the id)."""
    row = _event(n, time.time(), "m")
    row[5] = '{"n": 1}'
    for at, value in columns.items():
        row[int(at[1:])] = value
    return row


@pytest.mark.parametrize(
    "bad, reason",
    [
        (_row(50, c1=float("nan")), "timestamp must be a finite number"),  # min/max miss it
        (_row(50, c2=None), "event_type and component must be text"),
        (_row(50, c4=0), "message and data text or null"),  # falsy, not None
        (_row(50, c4=b"m"), "message and data text or null"),
        (_row(50, c3="x" * 101), "text at most 100 characters"),
        (_row(50, c5='{"v": NaN}'), "data is not standard JSON"),
        (_row(50)[:5], "expected 6 fields"),
        (_row(50, c0=float(PUB + 50)), "id must be a positive integer"),
        (_row(50, c0=True), "id must be a positive integer"),
        ("not a row", "expected 6 fields"),
    ],
)
def test_one_bad_row_among_many_is_refused_alone(bad, reason):
    """A message's rows are checked a column at a time: a bad value anywhere among them
    (one that min, max or a join would let through) still refuses that row alone, with
    its reason, and keeps every other row of the message."""
    limits = wire.Limits(max_text_chars=100)
    rows = [_row(n) for n in range(1, 100)]
    rows.insert(49, bad)
    raw = wire.encode(PUBLISHER, 1, 0, rows, [], [], [])
    msg = wire.decode(raw, wire.Validator(limits))
    assert len(msg.events) == 99
    [(refused_for, refused)] = msg.rejected
    assert reason in refused_for
    assert wire.sample(refused) == repr(bad)  # kept for inspection as it was sent


def test_metric_and_anomaly_values_checked_by_column():
    """Non-finite metric and anomaly values among good ones are refused row by row."""
    now = time.time()
    good = [[PUB + n, now, "current", 1.5, "A", None] for n in range(1, 40)]
    bad = [[PUB + 40, now, "current", float("inf"), "A", None]]
    anomalies = [[PUB + n, now, "A", "HIGH", None, None, 1.0, None] for n in (41, 42)]
    anomalies.append([PUB + 43, now, "A", "HIGH", None, None, None, float("nan")])
    msg = wire.decode(wire.encode(PUBLISHER, 1, 0, [], anomalies, good + bad, []))
    assert len(msg.metrics) == 39 and len(msg.anomalies) == 2
    assert [reason.split(":")[0] for reason, _ in msg.rejected] == ["anomaly", "metric"]
    assert all(type(row) is tuple for row in msg.metrics + msg.anomalies)


@settings(
    max_examples=FUZZ_EXAMPLES // 2,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(raw=st.binary(max_size=200) | _values.map(lambda v: msgpack.packb(v, use_bin_type=True)))
def test_fuzz_decode_never_raises_anything_but_wire_error(raw):
    validator = wire.Validator()
    try:
        msg = wire.decode(raw, validator)
    except wire.WireError:
        return
    for row in msg.events + msg.anomalies + msg.metrics + msg.operations:
        assert type(row) is tuple  # decoded straight to the tuples executemany binds


@settings(
    max_examples=FUZZ_EXAMPLES // 2,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(body=_shaped_message())
def test_fuzz_validate_keeps_only_well_typed_rows(body):
    try:
        msg = wire.Validator().validate(body)
    except wire.WireError:
        return
    for row in msg.events:
        assert len(row) == wire.EVENT_FIELDS and type(row[2]) is str and type(row[0]) is int
    for row in msg.metrics:
        assert type(row[3]) in (int, float) and row[3] == row[3]  # no NaN
    kept = msg.row_count + len(msg.rejected)
    assert kept == sum(len(part) if type(part) is list else 1 for part in body[4:8])


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_live_socket(db_path, daemon, seed):
    """Random and near-valid messages on the daemon's real socket; it keeps serving."""
    import random

    rng = random.Random(seed)
    ctx, push = _push(db_path)
    sent = 0
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.3:
            raw = rng.randbytes(rng.randrange(1, 300))
        else:
            body = [
                1,
                PUBLISHER,
                rng.randrange(-2, 50),
                rng.randrange(-2, 50),
                [
                    [
                        rng.choice([PUB + rng.randrange(1, 1 << 20), -1, "x", None]),
                        rng.choice([time.time(), float("nan"), "t", None, 1e300]),
                        rng.choice(["E", 1, None]),
                        "C",
                        None,
                        None,
                    ]
                    for _ in range(rng.randrange(0, 4))
                ],
                [],
                [],
                [[rng.randrange(0, 6), time.time(), "S"]],
            ]
            raw = msgpack.packb(body)
            if kind > 0.9:
                raw = raw[: rng.randrange(1, len(raw) + 1)]
        push.send(raw)
        sent += 1
    push.close(linger=5000)
    ctx.term()
    with MemoryBank(db_path) as memory:
        memory.log_event("OCPP_BOOT", "CSMS", "still here")
        assert memory.get_events(component="CSMS")[0]["message"] == "still here"
    stats = daemon_stats(db_path)
    assert stats["received_messages"] + stats["rejected_messages"] >= 1
    assert daemon.proc.poll() is None


def test_rows_outside_their_publishers_block_and_taken_ids_are_refused(db_path, daemon):
    """A publisher's id is its id block: a row outside it (below it, or in another known
    publisher's block) is refused with the reason, as is a row whose id another row already
    has; a row in a later block (the next one a publisher leases when its own runs out)
    lands. Nothing of this is counted as a duplicate."""
    now = time.time()
    other = 12

    def event(block: int, n: int, message: str) -> list:
        return [(block << 32) + n, now, "E", "C", message, None]

    ctx, push = _push(db_path)
    push.send(msgpack.packb([1, other, 1, 0, [event(other, 1, "other's own")], [], [], []]))
    conn = sqlite3.connect(db_path)
    deadline = time.time() + 20
    while not conn.execute("SELECT count(*) FROM mb_publishers").fetchone()[0]:
        assert time.time() < deadline
        time.sleep(0.05)
    rows = [
        event(PUBLISHER, 1, "own"),
        event(3, 1, "below its block"),
        event(other, 2, "in another publisher's block"),
        event(PUBLISHER + 31, 1, "in a later block"),
    ]
    push.send(msgpack.packb([1, PUBLISHER, 1, 0, rows, [], [], []]))
    push.send(
        msgpack.packb([1, PUBLISHER, 2, 1, [event(PUBLISHER, 1, "its id again")], [], [], []])
    )
    push.close(linger=2000)
    ctx.term()
    deadline = time.time() + 20
    while conn.execute("SELECT count(*) FROM mb_rejected").fetchone()[0] < 3:
        assert time.time() < deadline
        time.sleep(0.05)
    landed = sorted(r[0] for r in conn.execute("SELECT message FROM events"))
    assert landed == ["in a later block", "other's own", "own"]
    reasons = [r[0] for r in conn.execute("SELECT reason FROM mb_rejected ORDER BY id")]
    assert "lies in id block 3, not in one leased to publisher 9" in reasons[0]
    assert f"lies in id block {other}, not in one leased to publisher 9" in reasons[1]
    assert f"id {PUB + 1} is already another row's" in reasons[2]
    stats = daemon_stats(db_path)
    assert stats["rejected_records"] == 3 and stats["duplicate_records"] == 0
