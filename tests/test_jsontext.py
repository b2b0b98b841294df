"""jsontext reads and writes JSON exactly as json does (it stands in for json on the hot
commands' paths, which must print what they printed with json)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_bank import jsontext

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _same_value(a, b) -> bool:
    """Equal, NaN equal to NaN, and of the same types throughout."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same_value, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_value(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=150, deadline=None)
@given(VALUES, st.sampled_from([{}, {"indent": 1}, {"ensure_ascii": False}]))
def test_loads_reads_what_json_reads(value, style):
    text = json.dumps(value, **style)
    assert _same_value(jsontext.loads(text), json.loads(text))


@settings(max_examples=150, deadline=None)
@given(VALUES)
def test_dumps_compact_writes_what_json_writes(value):
    assert jsontext.dumps_compact(value) == json.dumps(value, separators=(",", ":"), default=str)


@pytest.mark.parametrize(
    "text",
    [
        ' \n{"a": [1, 2.50, -0, 1E5, 1e400, "\\u00e9\\/x"]}\t\r',
        '"caf\u00e9"',
        "NaN",
        "[Infinity, -Infinity]",
        '{"k": 1, "k": 2}',
        "123456789012345678901234567890",
    ],
)
def test_loads_reads_the_corners_as_json_does(text):
    assert _same_value(jsontext.loads(text), json.loads(text))


@pytest.mark.parametrize(
    "text", ["", "   ", "{", "[1,]", '{"a": 1} x', "\ufeff{}", "nul", '"\x01"', "{'a': 1}"]
)
def test_loads_refuses_what_json_refuses_with_its_error(text):
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        jsontext.loads(text)
    assert str(got.value) == str(expected.value)


def test_dumps_compact_shows_other_values_as_json_does():
    import datetime as dt

    value = {"when": dt.date(2026, 11, 26), 3: float("nan"), None: (1, 2), "s": {1}}
    assert jsontext.dumps_compact(value) == json.dumps(value, separators=(",", ":"), default=str)
    circular: list = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        jsontext.dumps_compact(circular)
