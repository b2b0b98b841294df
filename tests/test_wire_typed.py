"""The daemon reads a message of the usual shape with msgspec's typed decoder
(``wire.Validator.typed_body``) and any other with msgpack and the Validator's checks:
either way the same rows are kept, and the same refused, for the same reasons."""

from __future__ import annotations

import sys
import time

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_bank import wire

PUBLISHER = 9
PUB = PUBLISHER << 32
LIMITS = wire.Limits(max_text_chars=20)


def _generic(raw: bytes, validator: wire.Validator) -> wire.Message:
    """The message as msgpack and the Validator's checks alone read it."""
    return validator.validate(msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=False))


def _outcome(read, raw: bytes, validator: wire.Validator) -> str:
    """What reading ``raw`` gives, NaNs included (they compare unequal to themselves)."""
    try:
        return repr(read(raw, validator))
    except wire.WireError as exc:
        return f"WireError: {exc}"


def _usual_message(now: float) -> bytes:
    events = [
        [PUB + n, now, "CAN_RX", "CP", "Current reading: 32A", '{"i": 1}'] for n in range(1, 50)
    ]
    anomalies = [[PUB + 60, now, "LIMIT", "HIGH", None, None, 100.0, 32]]
    metrics = [
        [PUB + 61, now, "current", 32.5, "A", None],
        [PUB + 62, now, "current", 32, None, "{}"],
    ]
    operations = [
        [wire.OP_SESSION_START, now, "S1", PUB + 63],
        [wire.OP_SESSION_END, now, "S1", None, 1.5, 2, None, PUB + 64],
        [wire.OP_PATTERN, now, "P", "{}", "{}", 0.9],
    ]
    return wire.encode(PUBLISHER, 1, 0, events, anomalies, metrics, operations)


def test_the_usual_message_is_read_by_the_typed_decoder():
    raw = _usual_message(time.time())
    validator = wire.Validator()
    assert validator.typed_body(raw) is not None
    msg = wire.decode(raw, validator)
    assert repr(msg) == repr(_generic(raw, validator))
    assert not msg.rejected and (len(msg.events), len(msg.operations)) == (49, 3)
    assert type(msg.metrics[1][wire.MetricRow.METRIC_VALUE]) is int  # kept as sent
    assert all(type(row) is tuple for row in msg.events + msg.metrics + msg.operations)


def test_without_msgspec_every_message_is_read_the_generic_way(monkeypatch):
    monkeypatch.setitem(sys.modules, "msgspec", None)  # import msgspec raises ImportError
    raw = _usual_message(time.time())
    validator = wire.Validator()  # (a Validator makes its typed decoder when made)
    assert validator.typed_body(raw) is None
    assert repr(wire.decode(raw, validator)) == repr(_generic(raw, validator))


def test_a_record_past_a_stale_time_bound_is_still_accepted():
    """The typed decoder's upper time bound is fixed when it is made (at most a minute
    old): a record between it and the window's end now is read the generic way, kept."""
    now = time.time()
    validator = wire.Validator()
    stale = now + validator.limits.max_future_seconds - 30
    validator._typed_max_time = stale  # (its decoders are made with this bound)
    validator._decoders.clear()
    raw = wire.encode(PUBLISHER, 1, 0, [[PUB + 1, stale + 10, "E", "C", None, None]], [], [], [])
    assert validator.typed_body(raw) is None
    msg = wire.decode(raw, validator)
    assert len(msg.events) == 1 and not msg.rejected


def test_publishers_past_the_decoders_made_a_minute_are_read_the_generic_way(monkeypatch):
    """Typed decoders are made for at most TYPED_DECODERS publishers until they are made
    again: messages naming ever new publishers then cost what the generic way costs, and
    every message is still read."""
    monkeypatch.setattr(wire, "TYPED_DECODERS", 2)
    validator = wire.Validator()
    now = time.time()
    for publisher, typed in ((PUBLISHER, True), (PUBLISHER + 1, True), (PUBLISHER + 2, False)):
        event = [(publisher << 32) + 1, now, "E", "C", None, None]
        raw = wire.encode(publisher, 1, 0, [event], [], [], [])
        assert (validator.typed_body(raw) is not None) is typed
        assert len(wire.decode(raw, validator).events) == 1
    validator._typed_max_time -= wire.TYPED_BOUND_SECONDS + 1  # a minute later
    assert validator.typed_body(raw) is not None


def _mostly(good: list, bad: list):
    """A value of ``good`` four times in five, else one of ``bad``: most messages then
    take the typed decoder, and a bad value lands among good ones now and then."""
    return st.sampled_from(good * (4 * len(bad) // len(good) + 1) + bad)


def _messages():
    """Messages of the usual shape with values at and across each check's edges."""
    now = time.time()
    end = now + wire.DEFAULT_LIMITS.max_future_seconds
    low = wire.DEFAULT_LIMITS.min_timestamp
    ids_good = [PUB + 1, PUB + 2, PUB + 7, PUB + 9]
    ids = _mostly(
        ids_good,
        [PUB, PUB + (1 << 32), 0, -1, 2**63, 2**64 - 1, True, 1.0],
    )
    times_good = [now, now - 5.0, int(now), end - 60.0, low, int(low)]
    times = _mostly(
        times_good,
        [end + 60.0, low - 1.0, int(low) - 1, float("nan"), float("inf"), "t", None],
    )
    text = ["E", "", "x" * 20, "é" * 20, "NaN is text here"]
    bad_text = ["x" * 21, b"b", 0, None]
    json = [None, '{"a": 1}', "[]"]
    bad_json = ['{"a": NaN}', '"\\ud800"', "Infinity", 1.5, "x" * 21]
    real = [1.5, 32, -0.0, 1e308]
    bad_real = [float("nan"), float("-inf"), True, "1", None]
    pools = {
        "text": (text, bad_text),
        "opt_text": ([*text, None], bad_text[:-1]),
        "json": (json, bad_json),
        "real": (real, bad_real),
        "opt_real": ([*real, None], bad_real[:-1]),
    }

    def rows(kind: wire.RowKind):
        """Rows of ``kind``: most all good, some with a bad value here and there, a few
        of another width or no row at all."""
        names = ["id", "time"]
        for i in range(2, kind.width):
            fits = [n for n in ("text", "opt_text", "real", "opt_real") if i in getattr(kind, n)]
            names.append("json" if i == wire.ROW_JSON else fits[0])
        good = st.tuples(
            *(
                st.sampled_from(
                    ids_good if n == "id" else times_good if n == "time" else pools[n][0]
                )
                for n in names
            )
        ).map(list)
        mixed = st.tuples(
            *(ids if n == "id" else times if n == "time" else _mostly(*pools[n]) for n in names)
        ).map(list)
        odd = mixed.map(lambda r: r[:-1]) | st.just("not a row")
        return st.lists(_mostly([0], [1, 2]).flatmap(lambda n: (good, mixed, odd)[n]), max_size=6)

    code = _mostly(list(wire.OP_NAMES), [9, "x"])
    cell = st.one_of(ids, times, _mostly(*pools["text"]), _mostly(*pools["real"]))
    operation = st.tuples(code, st.lists(cell, max_size=7)).map(lambda op: [op[0], *op[1]])
    return st.tuples(
        _mostly([1], [2]),
        _mostly([PUBLISHER], [0, 2**64 - 1]),
        st.integers(1, 3),
        st.integers(0, 1),
        rows(wire.EVENT_KIND),
        rows(wire.ANOMALY_KIND),
        rows(wire.METRIC_KIND),
        st.lists(operation, max_size=3),
    ).map(lambda body: msgpack.packb(list(body), use_bin_type=True))


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(raw=_messages())
def test_typed_and_generic_reading_keep_and_refuse_the_same_rows(raw):
    validator = wire.Validator(LIMITS)  # the messages are longer: texts are measured
    assert _outcome(wire.decode, raw, validator) == _outcome(_generic_raw, raw, validator)


# Texts up to 200 characters: LIMITS' 20 made "x" * 21 too long, and a message of at most
# 200 bytes (most of these) is read by a typed decoder that does not measure its texts.
SHORT = wire.Limits(max_text_chars=200)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(raw=_messages())
def test_texts_are_not_measured_in_a_message_shorter_than_the_limit(raw):
    validator = wire.Validator(SHORT)
    assert _outcome(wire.decode, raw, validator) == _outcome(_generic_raw, raw, validator)


def test_a_message_longer_than_the_text_limit_has_its_texts_measured():
    """One text takes all of the limit, as characters of two bytes each: the message is
    longer than the limit in bytes, so its texts are measured, and one more is refused."""
    limits = wire.Limits(max_text_chars=100)
    validator = wire.Validator(limits)
    now = time.time()
    for length, refused in ((100, 0), (101, 1)):
        event = [PUB + 1, now, "é" * length, "C", None, None]
        raw = wire.encode(PUBLISHER, 1, 0, [event], [], [], [])
        assert len(raw) > limits.max_text_chars
        assert (validator.typed_body(raw) is None) is bool(refused)
        msg = wire.decode(raw, validator)
        assert (len(msg.events), len(msg.rejected)) == (1 - refused, refused)


def test_a_message_names_its_publisher_in_its_first_bytes():
    """The typed decoder is picked by the publisher id read from a message's first bytes,
    however msgpack packs it (and the decoder checks it again)."""
    for publisher in (1, 127, 128, 255, 256, 65535, 65536, 2**31 - 1):
        raw = wire.encode(publisher, 1, 0, [], [], [], [])
        assert wire._publisher_of(raw) == publisher
    for no_publisher in (0, wire.MAX_ID_BLOCK + 1, 2**64 - 1):  # refused the generic way
        assert wire._publisher_of(wire.encode(no_publisher, 1, 0, [], [], [], [])) is None
    assert wire._publisher_of(msgpack.packb([1, 2])) is None
    assert wire._publisher_of(b"") is None


def test_rows_outside_the_publishers_first_block_are_read_the_generic_way():
    """An id in a later block no publisher holds is kept (the generic way: a publisher
    that used up its block leases the next), one in another publisher's block refused."""
    now = time.time()
    validator = wire.Validator(known_publishers={PUBLISHER: 1, PUBLISHER + 2: 1})
    later, taken = (PUBLISHER + 1) << 32, (PUBLISHER + 2) << 32
    for row_id, kept in ((PUB + 5, True), (later + 5, True), (taken + 5, False), (PUB, True)):
        raw = wire.encode(PUBLISHER, 1, 0, [[row_id, now, "E", "C", None, None]], [], [], [])
        assert (validator.typed_body(raw) is not None) is (row_id == PUB + 5)
        assert len(wire.decode(raw, validator).events) == kept


def _generic_raw(raw: bytes, validator: wire.Validator) -> wire.Message:
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=False)
    except Exception as exc:
        raise wire.WireError(f"not a msgpack message: {type(exc).__name__}: {exc}") from None
    return validator.validate(body)
