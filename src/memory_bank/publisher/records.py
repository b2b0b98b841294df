"""What a write call checks and encodes before its row is queued, in the caller's thread.

A value that cannot be stored is refused here, at the call, with the reason: one such
record must never cost the records packed with it in the sender thread.
"""

from __future__ import annotations

import json

import msgpack

try:  # a hard dependency on CPython (pyproject.toml); elsewhere the standard library alone
    import orjson
except ImportError:  # pragma: no cover - exercised where no wheel exists
    orjson = None  # type: ignore[assignment]

# allow_nan=False: NaN and infinities are not JSON (jq, browsers and PostgreSQL's jsonb
# refuse the tokens Python would write), so a record holding one is refused at the call.
# Compact and UTF-8, as orjson writes: the text is the same whichever encoder wrote it.
_STRICT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_LENIENT = json.JSONEncoder(default=str, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# A pattern's key: its data with sorted keys, so the same data counts as one pattern. Always
# the standard library's text (ASCII, its float spelling): the key of a pattern recorded by
# an earlier version must stay the same.
CANONICAL = json.JSONEncoder(default=str, sort_keys=True, separators=(",", ":"), allow_nan=False)
# Keys already made, by the data's text (pattern_texts): at most _KEYS_HELD of them, of texts
# up to _KEY_TEXT_CHARS long; the whole cache is dropped when full.
_KEYS: dict[str, str] = {}
_KEYS_HELD = 4096
_KEY_TEXT_CHARS = 2048

if orjson is not None:
    _fast_dumps = orjson.dumps
    # orjson spells datetimes and dataclasses its own way; handed to ``_not_native``, they
    # go to the standard library (default=str) as before.
    _FAST_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
else:  # pragma: no cover
    _fast_dumps = None
    _FAST_OPTIONS = 0


def _not_native(value):
    raise TypeError  # orjson gives up on the value: the standard library encodes it


def checked_json(data, first, second=None, third=None) -> str | None:
    """Refuse at the call a text field (``first``, ``second``, ``third``; None for none) the
    sender could not encode (a lone surrogate, a value msgpack cannot pack), then return
    ``data`` JSON-encoded (None stays None): the seed stores data and metadata as JSON text.

    Both in one function, whose common case (ASCII text, data orjson encodes) calls no other
    Python function: every write call takes it, and a Python call is about 2% of a write
    call's instructions (callgrind).

    A bad text field must never cost the records packed with it in the sender thread. For the
    JSON: orjson first (a fifth of the standard library's cost); a value it does not encode
    the way the standard library does (a datetime, a set, an int past 64 bits, nesting past
    255, a lone surrogate...) is encoded by the standard library, with ``default=str`` for
    what JSON has no type for. One difference remains: a plain Enum member (no str or int
    mixin) is stored as its value, where ``default=str`` stored its name. A value that
    cannot be stored is refused here, with the reason.
    """
    try:
        plain = (
            first.isascii()
            and (second is None or second.isascii())
            and (third is None or third.isascii())
        )
    except AttributeError:
        plain = False
    if not plain:
        for text in (first, second, third):
            _check_text(text, "text")
    if data is None:
        return None
    if _fast_dumps is not None:
        try:
            text = _fast_dumps(data, _not_native, _FAST_OPTIONS).decode()
        except TypeError:
            pass
        else:
            if "null" in text:  # orjson writes NaN and infinities as null: refuse them
                _stdlib_text(data)
            return text
    return _stdlib_text(data)


def pattern_texts(data, pattern_type) -> tuple[str, str]:
    """``data``'s text (checked_json) and its key: CANONICAL's text of the same data.

    A key is made once per text and then looked up. That is exact where the text says all
    the key depends on: data orjson writes by itself (str keys; str, int, float, bool, None,
    lists and dicts, and what orjson writes as one of those) is keyed as the text read back
    would be, which is CANONICAL's key of the data itself, except for a plain Enum member
    (no str or int mixin), keyed by its value as its text is stored, where CANONICAL wrote
    its name. Data the standard library writes (a datetime, an int key, a big int...) is
    keyed from the data each time, as before. Why: the standard library's encoder is cold
    in the caches by the time a pattern (a rare call) comes, and took 40-50 us of the call on
    the lab's VM, the publish call's p99 in the benchmark mix; a lookup takes well under
    one."""
    text = checked_json(data, pattern_type)
    if text is None:
        return "null", "null"  # as the seed: json.dumps(None)
    key = _KEYS.get(text)
    if key is not None:
        return text, key
    try:
        if _fast_dumps is None:
            raise TypeError
        _fast_dumps(data, _not_native, _FAST_OPTIONS)
    except TypeError:  # the standard library wrote the text: key the data itself
        return text, CANONICAL.encode(data)
    key = CANONICAL.encode(json.loads(text))
    if len(text) <= _KEY_TEXT_CHARS:
        if len(_KEYS) >= _KEYS_HELD:
            _KEYS.clear()
        _KEYS[text] = key
    return text, key


def _stdlib_text(value) -> str:
    try:
        try:
            text = _STRICT.encode(value)
        except TypeError:
            text = _LENIENT.encode(value)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        raise ValueError(
            "NaN and infinities cannot be stored in data, metadata or pattern_data: they are "
            "not JSON (use None for a missing value)"
        ) from None
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate (pairs are fine: emoji)
            _check_text(json.loads(text), "JSON")
    return text


def _check_text(value, what: str) -> None:
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what} {value[max(exc.start - 20, 0) : exc.end + 20]!r} holds a lone "
                f"surrogate at position {exc.start} and cannot be stored as UTF-8 (decode "
                "bytes with errors='replace', not 'surrogateescape')"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, what)
            _check_text(item, what)
    elif isinstance(value, list):
        for item in value:
            _check_text(item, what)
    elif value is not None and what == "text":
        try:
            msgpack.packb(value)
        except Exception as exc:  # msgpack raises several unrelated types
            raise TypeError(f"{value!r} cannot be sent: {exc}") from None


def session_text(session_id) -> str:
    text = str(session_id)
    checked_json(None, text)
    return text
