"""``json.loads`` of a text and the compact ``json.dumps`` the viewer shows, without
importing json, for the commands people type most (``memory-viewer --summary``,
``memorybank status``).

Importing json loads ``re`` (with enum and functools) and compiles its patterns: a fifth of
those commands' start-up, while the work itself is done by json's C accelerator, ``_json``,
which needs no pattern. These two functions call that accelerator as json does (the same
scanner and encoder, so the same values and the same text); anything they do not take
(a text with an error in it, a value json refuses, an interpreter without ``_json``) is
handed to json itself, which then answers, or raises, as ever. tests/test_jsontext.py
checks both against json.
"""

from __future__ import annotations

try:
    import _json
except ImportError:  # (PyPy, say): json's own functions, below
    _json = None  # type: ignore[assignment]

WHITESPACE = " \t\n\r"  # json.decoder.WHITESPACE's characters
CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Decoder:
    """The attributes _json's scanner reads from a ``json.JSONDecoder()``: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = CONSTANTS.__getitem__


# (typeshed types the scanner's context as a scanner; the scanner reads the attributes above)
_scan = _json.make_scanner(_Decoder) if _json is not None else None  # type: ignore[arg-type]


def loads(text: str):
    """``json.loads(text)``."""
    if _scan is not None:
        start = len(text) - len(text.lstrip(WHITESPACE))
        try:
            value, end = _scan(text, start)
        except (StopIteration, ValueError):
            pass  # json says what is wrong
        else:
            if not text[end:].strip(WHITESPACE):
                return value
    import json

    return json.loads(text)


def dumps_compact(value) -> str:
    """``json.dumps(value, separators=(",", ":"), default=str)``."""
    if _json is not None:
        try:
            encode = _json.make_encoder(
                {}, str, _json.encode_basestring_ascii, None, ":", ",", False, False, True
            )
            return "".join(encode(value, 0))
        except Exception:
            pass  # json raises its own error (or, on another interpreter, encodes it)
    import json

    return json.dumps(value, separators=(",", ":"), default=str)
