"""What a write call checks and encodes before its row is queued, in the caller's thread.

A value that cannot be stored is refused here, at the call, with the reason: one such
record must never cost the records packed with it in the sender thread.
"""

from __future__ import annotations

import json
import time

import msgpack

# allow_nan=False: NaN and infinities are not JSON (jq, browsers and PostgreSQL's jsonb
# refuse the tokens Python would write), so a record holding one is refused at the call.
_STRICT = json.JSONEncoder(allow_nan=False)
_LENIENT = json.JSONEncoder(default=str, allow_nan=False)
# A pattern's key: its data with sorted keys, so the same data counts as one pattern.
CANONICAL = json.JSONEncoder(default=str, sort_keys=True, separators=(",", ":"), allow_nan=False)


def json_text(value) -> str | None:
    """JSON-encode a data/metadata argument on the caller's side (the seed stores JSON text).

    A pre-built encoder with no ``default`` takes the C encoder's fast path (what
    ``json.dumps(value)`` uses); only a value JSON cannot encode (a datetime, a set...) pays
    for the lenient one. A value that cannot be stored is refused here, with the reason.
    """
    if value is None:
        return None
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
    if "\\ud" in text:  # an escaped surrogate: fine in pairs (emoji), refused alone
        _check_text(json.loads(text), "JSON")
    return text


def check_sendable(*texts) -> None:
    """Refuse at the call a text field the sender could not encode (a lone surrogate, a
    value msgpack cannot pack): one such record must never cost the records around it."""
    try:
        for text in texts:
            if not (text is None or text.isascii()):
                break
        else:
            return  # the common case: ASCII text
    except AttributeError:
        pass
    for text in texts:
        _check_text(text, "text")


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


def timestamp_of(timestamp) -> float:
    return time.time() if timestamp is None else float(timestamp)


def session_text(session_id) -> str:
    text = str(session_id)
    check_sendable(text)
    return text
