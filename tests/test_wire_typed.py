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
    validator._typed = wire._typed_decoder(validator.limits, stale)
    validator._typed_max_time = stale
    raw = wire.encode(PUBLISHER, 1, 0, [[PUB + 1, stale + 10, "E", "C", None, None]], [], [], [])
    assert validator.typed_body(raw) is None
    msg = wire.decode(raw, validator)
    assert len(msg.events) == 1 and not msg.rejected


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
    validator = wire.Validator(LIMITS)
    assert _outcome(wire.decode, raw, validator) == _outcome(_generic_raw, raw, validator)


def _generic_raw(raw: bytes, validator: wire.Validator) -> wire.Message:
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=False)
    except Exception as exc:
        raise wire.WireError(f"not a msgpack message: {type(exc).__name__}: {exc}") from None
    return validator.validate(body)
