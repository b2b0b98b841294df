"""The record kinds and their msgpack form: the only module that knows the wire layout.

A message from a publisher is one msgpack array::

    [WIRE_VERSION, publisher_id, message_seq, base, events, anomalies, metrics, operations]

``message_seq`` counts a publisher's messages from 1 with no gaps; ``base`` says that the
publisher will never send any message numbered ``base`` or below again (acknowledged, or
given up when its buffers overflowed), so the daemon can tell a gap it must wait for (a
message lost in transit, which the publisher replays) from one it may skip.

Rows are msgpack arrays, never maps, laid out in the column order of their table so the
writer hands them to ``executemany`` as they arrive. JSON columns (``data``, ``metadata``,
``pattern_data``) are encoded by the publisher. Operations (sessions and patterns) keep
their call order; the writer applies them after the plain inserts of the same message.

Imports nothing but the standard library and msgpack: publishers load this module.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import sys
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

WIRE_VERSION = 1


# -- rows: the column order of their tables (the writer binds them positionally) ---------
# Elsewhere a row is read by these names, never by a number: ``row[AnomalyRow.SEVERITY]``,
# or ``row_dict(kind, row)`` for a map. The JSON column (data, pattern_data, metadata)
# holds text the publisher encoded, at the same position in every kind.
class EventRow:
    ID, TIMESTAMP, EVENT_TYPE, COMPONENT, MESSAGE, DATA = range(6)
    COLUMNS = ("id", "timestamp", "event_type", "component", "message", "data")


class AnomalyRow:
    ID, TIMESTAMP, ANOMALY_TYPE, SEVERITY, DESCRIPTION, PATTERN_DATA = range(6)
    CURRENT_VALUE, EXPECTED_VALUE = 6, 7
    COLUMNS = (
        "id",
        "timestamp",
        "anomaly_type",
        "severity",
        "description",
        "pattern_data",
        "current_value",
        "expected_value",
    )


class MetricRow:
    ID, TIMESTAMP, METRIC_NAME, METRIC_VALUE, UNIT, METADATA = range(6)
    COLUMNS = ("id", "timestamp", "metric_name", "metric_value", "unit", "metadata")


ROW_ID, ROW_TIMESTAMP, ROW_JSON = 0, 1, 5  # the same in every kind of plain row
# A kind is the name of its table.
ROW_COLUMNS = {
    "events": EventRow.COLUMNS,
    "anomalies": AnomalyRow.COLUMNS,
    "metrics": MetricRow.COLUMNS,
}
EVENT_FIELDS = len(EventRow.COLUMNS)
ANOMALY_FIELDS = len(AnomalyRow.COLUMNS)
METRIC_FIELDS = len(MetricRow.COLUMNS)


def row_dict(kind: str, row) -> dict:
    """A row of ``kind`` (its table: events, anomalies or metrics) keyed by column."""
    return dict(zip(ROW_COLUMNS[kind], row, strict=False))


# Operations: [op_code, timestamp, ...]
OP_SESSION_START = 1  # [1, ts, session_id, row_id]
OP_SESSION_ANOMALY = 2  # [2, ts, session_id, row_id]
OP_SESSION_END = 3  # [3, ts, session_id, total_energy, avg_current, max_current, min_current,
#                      row_id]
OP_PATTERN = 4  # [4, ts, pattern_type, pattern_json, pattern_key, confidence]
OP_CODE, OP_TIMESTAMP = 0, 1


class SessionOp:
    """Positions in a session operation (start, anomaly count, end); its row id is last."""

    SESSION_ID = 2
    STATS = slice(3, 7)  # an end's total_energy, avg_current, max_current, min_current
    ROW_ID = -1


class PatternOp:
    PATTERN_TYPE, PATTERN_DATA, KEY, CONFIDENCE = 2, 3, 4, 5


# A session operation's row_id is the id the session's row takes if the operation creates it;
# a start also gives its id to a row that an earlier anomaly count or end created, so the
# row's id is the one start_session returned. Publishers before row ids sent none: the
# validator appends None to their session operations, and the store picks the id.

OP_NAMES = {
    OP_SESSION_START: "session_start",
    OP_SESSION_ANOMALY: "session_anomaly",
    OP_SESSION_END: "session_end",
    OP_PATTERN: "pattern",
}

# Identifiers: a publisher leases a block of 2**32 ids; block 0 is left to rows written
# before MemoryBank owned the database (the seed's AUTOINCREMENT ids).
ID_BLOCK_BITS = 32
MAX_ID_BLOCK = (1 << (63 - ID_BLOCK_BITS)) - 1


class WireError(ValueError):
    """A message that cannot be read at all (bad msgpack, wrong header, unknown version)."""


@dataclass(frozen=True)
class Limits:
    """What the daemon accepts; anything outside is refused with a reason."""

    max_text_chars: int = 1_000_000  # any one text field, JSON columns included
    min_timestamp: float = 946684800.0  # 2000-01-01: older is a clock or unit error
    max_future_seconds: float = 86400.0  # how far past the daemon's clock a record may be


DEFAULT_LIMITS = Limits()


@dataclass
class Message:
    """One decoded, validated message: rows ready for the store, and what was refused."""

    publisher_id: int
    seq: int
    base: int = 0
    events: list = field(default_factory=list)
    anomalies: list = field(default_factory=list)
    metrics: list = field(default_factory=list)
    operations: list = field(default_factory=list)
    rejected: list = field(default_factory=list)  # (reason, row) pairs

    @property
    def row_count(self) -> int:
        return len(self.events) + len(self.anomalies) + len(self.metrics) + len(self.operations)


def encode(publisher_id: int, seq: int, base: int, events, anomalies, metrics, operations) -> bytes:
    """Pack one message for the wire."""
    return msgpack.packb(
        [WIRE_VERSION, publisher_id, seq, base, events, anomalies, metrics, operations],
        use_bin_type=True,
    )


def decode(raw: bytes, validator: Validator | None = None) -> Message:
    """Unpack and validate a message; raises WireError when no part of it can be used.

    Arrays come out as tuples (``use_list=False``): a row is then the very tuple
    ``executemany`` binds, one allocation where a list takes two, and the garbage collector
    stops tracking it at its first pass (it holds no containers). A message of the usual
    shape is read by the validator's typed decoder (``Validator.typed_body``); any other
    goes through msgpack and the checks that give each refused row its reason."""
    validator = validator or Validator()
    body = validator.typed_body(raw)
    if body is not None:
        return validator.validate(body, typed=True)
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"not a msgpack message: {type(exc).__name__}: {exc}") from None
    return validator.validate(body)


def sample(value) -> str:
    """A refused value as it is kept for inspection (mb_rejected): its repr, msgpack arrays
    written as lists whether they were decoded as tuples or not, at most 1,000 characters."""
    return repr(_as_lists(value))[:1000]


def _as_lists(value):
    if type(value) is tuple or type(value) is list:
        return [_as_lists(v) for v in value]
    return value


def _is_real(value) -> bool:
    return (type(value) is float or type(value) is int) and math.isfinite(value)


def _is_opt_real(value) -> bool:
    return value is None or _is_real(value)


def _is_id(value) -> bool:
    return type(value) is int and 0 < value < (1 << 63)


def _may_not_be_standard_json(text: str) -> bool:
    """A token strict JSON readers refuse may appear in ``text`` (see _is_standard_json)."""
    return "NaN" in text or "Infinity" in text or "\\ud" in text or "\\uD" in text


def _is_standard_json(text: str) -> bool:
    """False for the tokens strict JSON readers refuse (NaN, Infinity, a lone surrogate
    escape), which Python's json writes by default. A substring scan for the common case; a
    parse only when one of them appears (it may sit inside a string). Not a full parse of
    every column: that would cost the daemon a fifth of its time."""
    if not _may_not_be_standard_json(text):
        return True
    try:
        value = _STRICT_JSON.decode(text)
        json.dumps(value, ensure_ascii=False).encode()  # a lone surrogate fails here
    except ValueError:  # UnicodeEncodeError included
        return False
    return True


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)
_NOT_JSON = "is not standard JSON (NaN, Infinity or a lone surrogate)"
_OP_ARITY = {OP_SESSION_START: 4, OP_SESSION_ANOMALY: 4, OP_SESSION_END: 8, OP_PATTERN: 6}
_SESSION_OPS = (OP_SESSION_START, OP_SESSION_ANOMALY, OP_SESSION_END)
# The types a column's values may have, for the checks of a whole column at once.
_ARRAY_TYPES = {tuple, list}  # an array as msgpack decodes it (tuple), or as built in Python
_INT, _FLOAT, _OPT_FLOAT = {int}, {float}, {float, type(None)}
_NOT_NONE = functools.partial(operator.is_not, None)
_JSON_OF = operator.itemgetter(ROW_JSON)


class RowKind(NamedTuple):
    """What a plain-insert row holds: ``[id, timestamp, ...]``, its typed columns by
    position, column 5 being JSON text or null; ``what`` is the reason given for a row
    whose columns have the wrong types."""

    name: str
    width: int
    text: tuple[int, ...]
    opt_text: tuple[int, ...]
    real: tuple[int, ...]
    opt_real: tuple[int, ...]
    what: str
    json_name: str


EVENT_KIND = RowKind(
    "event",
    EVENT_FIELDS,
    (EventRow.EVENT_TYPE, EventRow.COMPONENT),
    (EventRow.MESSAGE,),
    (),
    (),
    "event_type and component must be text; message and data text or null",
    "data",
)
ANOMALY_KIND = RowKind(
    "anomaly",
    ANOMALY_FIELDS,
    (AnomalyRow.ANOMALY_TYPE, AnomalyRow.SEVERITY),
    (AnomalyRow.DESCRIPTION,),
    (),
    (AnomalyRow.CURRENT_VALUE, AnomalyRow.EXPECTED_VALUE),
    "anomaly_type and severity must be text; description and pattern_data text or "
    "null; current and expected values finite numbers or null",
    "pattern_data",
)
METRIC_KIND = RowKind(
    "metric",
    METRIC_FIELDS,
    (MetricRow.METRIC_NAME,),
    (MetricRow.UNIT,),
    (MetricRow.METRIC_VALUE,),
    (),
    "metric_name must be text, metric_value a finite number; unit and metadata text or null",
    "metadata",
)


# How long the typed decoders' upper time bound (now + max_future_seconds, fixed when they
# are made) may lag the clock before they are made again; meanwhile a record in the last
# minute of the window is refused by them and read the generic way, which accepts it.
TYPED_BOUND_SECONDS = 60.0
# Typed decoders made at most each TYPED_BOUND_SECONDS (one a publisher, at its first message
# after they were last made; well under a millisecond each): past it, the messages of
# publishers without one are read the generic way until then, so that messages naming ever
# new publishers cost no more than that way.
TYPED_DECODERS = 256


def optional_msgspec():
    """msgspec, or None where it is not installed (PyPy: every message is then read the
    generic way, and the alerts' stream uses msgpack and the standard library). Imported by
    the daemon's side only (the Validator, the stream): publishers load this module, never
    it."""
    try:
        import msgspec
    except ImportError:
        return None
    return msgspec


def _typed_decoder(limits: Limits, max_time: float, publisher: int, measure_text: bool):
    """msgspec's decoder of a message of the usual shape from ``publisher`` (None where
    msgspec is not installed): the rows come out as the tuples ``executemany`` binds, each
    value checked while it is read against what ``Validator._check_row`` asks of it (type,
    finite number, time in [min_timestamp, ``max_time``], an id in the publisher's first
    block; with ``measure_text``, text of at most max_text_chars characters: without it,
    for messages no longer than that in bytes, which hold no longer text). It refuses what
    the Validator would refuse, and more (an int where a float is usual is kept as an int;
    an id in a later block and non-standard JSON are left to the generic way and
    ``_values_valid``)."""
    msgspec = optional_msgspec()
    if msgspec is None:
        return None
    from typing import Annotated, Literal

    array: Any = tuple  # the types below are made at run time, for msgspec (not for mypy)
    meta = msgspec.Meta
    text = Annotated[str, meta(max_length=limits.max_text_chars)] if measure_text else str
    finite = Annotated[float, meta(ge=-sys.float_info.max, le=sys.float_info.max)] | int
    when = (
        Annotated[float, meta(ge=limits.min_timestamp, le=max_time)]
        | Annotated[int, meta(ge=math.ceil(limits.min_timestamp), le=math.floor(max_time))]
    )
    positive = Annotated[int, meta(gt=0, le=(1 << 63) - 1)]
    first_id = publisher << ID_BLOCK_BITS  # the block's open interval, as _check_row's
    row_id = Annotated[int, meta(gt=first_id, lt=first_id + (1 << ID_BLOCK_BITS))]

    def row(kind: RowKind):
        columns: list = [row_id, when]
        for i in range(2, kind.width):
            if i in kind.text:
                columns.append(text)
            elif i in kind.opt_text or i == ROW_JSON:
                columns.append(text | None)
            elif i in kind.real:
                columns.append(finite)
            else:
                columns.append(finite | None)
        return array[tuple(columns)]

    # [WIRE_VERSION, publisher_id, message_seq, base, events, anomalies, metrics, operations]
    header = (Literal[WIRE_VERSION], Literal[publisher], positive, int)
    rows = [array[row(kind), ...] for kind in (EVENT_KIND, ANOMALY_KIND, METRIC_KIND)]
    operations = array[array[int | float | str | None, ...], ...]
    return msgspec.msgpack.Decoder(array[(*header, *rows, operations)])


# How a message's publisher id is packed after its first two bytes (an array of 8 and
# WIRE_VERSION): a msgpack unsigned int's marker and its width in bytes.
_UINT_WIDTH = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


def _publisher_of(raw: bytes) -> int | None:
    """The publisher id a message of the usual shape names, read from its first bytes
    (which typed decoder to use: it checks the id again); None for any other start, or an
    id no publisher is given."""
    if raw[:2] != b"\x98\x01" or len(raw) < 3:
        return None
    marker = raw[2]
    if marker < 0x80:
        publisher = marker
    elif (width := _UINT_WIDTH.get(marker)) is not None:
        publisher = int.from_bytes(raw[3 : 3 + width], "big")
    else:
        return None
    return publisher if 0 < publisher <= MAX_ID_BLOCK else None  # else refused anyway


class Validator:
    """Checks messages against one set of Limits; bad rows are set aside with a reason.

    A row's id must lie in its publisher's id block (the publisher id is the block it
    leased first), or in a later block that is no known publisher's own: a publisher that
    used up its block leases the next free one, always above its first.
    ``known_publishers`` is the writer's live view of the publisher ids it has applied.

    The rows of one kind in a message are first checked together, a column at a time
    (``_all_valid``: a few passes in C over each column rather than a dozen Python tests a
    row); only when that finds something does each row go through ``_check_row`` alone, to
    keep the good ones and give each bad one its reason.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, known_publishers=()):
        self.limits = limits
        self.known_publishers = known_publishers
        self._max_chars = limits.max_text_chars
        self._min_time = limits.min_timestamp
        self._max_time = 0.0
        self._block = 0
        self._id_low = self._id_high = 0  # the open interval of this message's block
        # Imported now, not at the first message: importing msgspec takes tens of ms.
        self._typed = optional_msgspec() is not None
        self._typed_max_time = time.time() + limits.max_future_seconds
        # (publisher, whether texts are measured) -> its typed decoder (_typed_decoder)
        self._decoders: dict[tuple[int, bool], Any] = {}

    def typed_body(self, raw: bytes):
        """``raw`` read by its publisher's typed decoder (see _typed_decoder), or None when
        it refuses it in any way, or msgspec is not installed: the message is then read the
        generic way, whatever made it refuse (a bad row, a later id block, an unreadable
        message)."""
        if not self._typed:
            return None
        publisher = _publisher_of(raw)
        if publisher is None:
            return None
        max_time = time.time() + self.limits.max_future_seconds
        if not max_time - TYPED_BOUND_SECONDS <= self._typed_max_time <= max_time:
            # A minute old, or the clock went back: its bound would be past the window's.
            self._decoders.clear()
            self._typed_max_time = max_time
        key = (publisher, len(raw) > self._max_chars)
        decoder = self._decoders.get(key)
        if decoder is None:
            if len(self._decoders) >= TYPED_DECODERS:
                return None
            decoder = self._decoders[key] = _typed_decoder(self.limits, self._typed_max_time, *key)
        try:
            return decoder.decode(raw)
        except Exception:  # msgspec's DecodeError, UnicodeDecodeError...
            return None

    def validate(self, body, typed: bool = False) -> Message:
        """Check a message's header and each row; bad rows are set aside, good rows kept.
        ``typed``: ``body`` comes from ``typed_body``, every value's type and range checked."""
        if type(body) not in _ARRAY_TYPES or len(body) != 8:
            if type(body) in _ARRAY_TYPES and body and body[0] != WIRE_VERSION:
                raise WireError(
                    f"wire version {body[0]!r} is not {WIRE_VERSION}; upgrade the older side"
                )
            raise WireError("message is not an 8-element array")
        version, publisher_id, seq, base, events, anomalies, metrics, operations = body
        if version != WIRE_VERSION:
            raise WireError(
                f"wire version {version!r} is not {WIRE_VERSION}; upgrade the older side"
            )
        if not (_is_id(publisher_id) and _is_id(seq) and type(base) is int and 0 <= base < seq):
            raise WireError("publisher id, sequence and base must be integers, 0 <= base < seq")
        self._max_time = time.time() + self.limits.max_future_seconds
        self._block = publisher_id
        self._id_low = publisher_id << ID_BLOCK_BITS
        self._id_high = self._id_low + (1 << ID_BLOCK_BITS)
        msg = Message(publisher_id, seq, base)
        for kind, rows, out in (
            (EVENT_KIND, events, msg.events),
            (ANOMALY_KIND, anomalies, msg.anomalies),
            (METRIC_KIND, metrics, msg.metrics),
        ):
            if type(rows) not in _ARRAY_TYPES:
                msg.rejected.append((f"{kind.name} rows are not an array", rows))
            elif self._values_valid(rows) if typed else self._all_valid(rows, kind):
                out.extend(rows)
            else:
                for row in rows:
                    reason = self._check_row(row, kind)
                    if reason is None:
                        out.append(row)
                    else:
                        msg.rejected.append((f"{kind.name}: {reason}", row))
        if type(operations) not in _ARRAY_TYPES:
            msg.rejected.append(("operation rows are not an array", operations))
            return msg
        for row in operations:
            if (
                type(row) in _ARRAY_TYPES
                and row
                and type(row[0]) is int
                and row[0] in _SESSION_OPS
                and len(row) == _OP_ARITY[row[0]] - 1
            ):
                row = (*row, None)  # from a publisher that sent no row id
            reason = self._check_operation(row)
            if reason is None:
                msg.operations.append(row)
            else:
                msg.rejected.append((f"operation: {reason}", row))
        return msg

    def _all_valid(self, rows, kind: RowKind) -> bool:
        """True when every row passes ``_check_row`` with no id outside the publisher's
        first block, checked a column at a time; False when one may not (or uses a later
        block, or an int where a float is usual), so that each row is checked alone.

        Each test is a pass in C over a column: ``str.join`` refuses anything but text
        (msgpack decodes no subclass of str; None is let through only where the column
        may hold it), and a column's joined length bounds every one of its values; a NaN
        slips through min and max but never through a sum, nor does an infinity (a sum of
        finite values that overflows only sends the rows to be checked alone)."""
        if not rows:
            return True
        try:
            columns = list(zip(*rows, strict=True))
        except (TypeError, ValueError):  # a row that is no array, or rows of other widths
            return False
        if len(columns) != kind.width:
            return False
        ids, times = columns[ROW_ID], columns[ROW_TIMESTAMP]
        if not (
            set(map(type, ids)) == _INT
            and self._id_low < min(ids)
            and max(ids) < self._id_high
            and set(map(type, times)) == _FLOAT
            and self._min_time <= min(times)
            and max(times) <= self._max_time
            and math.isfinite(sum(times))
        ):
            return False
        if not all(self._all_text(columns[i], False) for i in kind.text):
            return False
        if not all(self._all_text(columns[i], True) for i in kind.opt_text):
            return False
        for i in kind.real:
            if set(map(type, columns[i])) != _FLOAT or not math.isfinite(sum(columns[i])):
                return False
        for i in kind.opt_real:
            values = columns[i]
            if not set(map(type, values)) <= _OPT_FLOAT or not math.isfinite(
                sum(filter(_NOT_NONE, values))
            ):
                return False
        # The JSON texts joined by a character none of the suspect tokens holds.
        joined = self._all_text(columns[ROW_JSON], True, "\n")
        return joined is not None and not _may_not_be_standard_json(joined)

    def _values_valid(self, rows) -> bool:
        """``_all_valid`` for rows a typed decoder read, which checked the rest (every id
        in the publisher's first block among it): no JSON text that strict readers refuse."""
        if not rows:
            return True
        joined = "\n".join(filter(_NOT_NONE, map(_JSON_OF, rows)))
        return not _may_not_be_standard_json(joined)

    def _all_text(self, values, optional: bool, sep: str = "") -> str | None:
        """``values`` joined by ``sep`` when each is text of at most max_text_chars (or
        None, when ``optional``); None otherwise."""
        texts = filter(_NOT_NONE, values) if optional else values
        try:
            joined = sep.join(texts)
        except TypeError:
            return None
        if len(joined) > self._max_chars and (
            max(map(len, filter(_NOT_NONE, values)), default=0) > self._max_chars
        ):
            return None
        return joined

    def _is_text(self, value) -> bool:
        return type(value) is str and len(value) <= self._max_chars

    def _is_opt_text(self, value) -> bool:
        return value is None or (type(value) is str and len(value) <= self._max_chars)

    def _is_time(self, value) -> bool:
        return (type(value) is float or type(value) is int) and (
            self.limits.min_timestamp <= value <= self._max_time
        )

    def _time_reason(self, value) -> str:
        if not _is_real(value):
            return "timestamp must be a finite number"
        return (
            f"timestamp {value!r} is outside the accepted window "
            f"({self.limits.min_timestamp:.0f} .. now + {self.limits.max_future_seconds:.0f}s)"
        )

    def _check_row(self, row, kind: RowKind) -> str | None:
        """The reason a plain-insert row of ``kind`` is refused, or None."""
        if type(row) not in _ARRAY_TYPES or len(row) != kind.width:
            return f"expected {kind.width} fields"
        if not _is_id(row[ROW_ID]):
            return "id must be a positive integer"
        block = row[ROW_ID] >> ID_BLOCK_BITS
        if block != self._block and (block < self._block or block in self.known_publishers):
            return (
                f"id {row[ROW_ID]} lies in id block {block}, not in one leased to publisher "
                f"{self._block} (two publishers given the same ids?)"
            )
        if not self._is_time(row[ROW_TIMESTAMP]):
            return self._time_reason(row[ROW_TIMESTAMP])
        if not (
            all(self._is_text(row[i]) for i in kind.text)
            and all(self._is_opt_text(row[i]) for i in (*kind.opt_text, ROW_JSON))
            and all(_is_real(row[i]) for i in kind.real)
            and all(_is_opt_real(row[i]) for i in kind.opt_real)
        ):
            return kind.what + f" (text at most {self._max_chars} characters)"
        if row[ROW_JSON] is not None and not _is_standard_json(row[ROW_JSON]):
            return f"{kind.json_name} {_NOT_JSON}"
        return None

    def _check_operation(self, row) -> str | None:
        if (
            type(row) not in _ARRAY_TYPES
            or not row
            or type(row[0]) is not int
            or row[0] not in _OP_ARITY
        ):
            return "unknown operation"
        if len(row) != _OP_ARITY[row[0]]:
            return f"{OP_NAMES[row[0]]} expects {_OP_ARITY[row[0]]} fields"
        if row[0] in _SESSION_OPS and not (row[-1] is None or _is_id(row[-1])):
            return "a session's row id must be a positive 64-bit integer or null"
        if not self._is_time(row[1]):
            return self._time_reason(row[1])
        op = row[0]
        if op in (OP_SESSION_START, OP_SESSION_ANOMALY):
            return None if self._is_text(row[2]) else "session_id must be text"
        if op == OP_SESSION_END:
            if not self._is_text(row[2]):
                return "session_id must be text"
            if not all(_is_opt_real(v) for v in row[3:7]):
                return "session statistics must be finite numbers or null"
            return None
        if not (
            self._is_text(row[2])
            and self._is_text(row[3])
            and self._is_text(row[4])
            and _is_real(row[5])
        ):
            return "pattern_type, pattern_data and key must be text, confidence a number"
        if not _is_standard_json(row[3]):
            return f"pattern_data {_NOT_JSON}"
        return None


# -- the tail: what the daemon publishes to followers after each commit ------------------
# One msgpack array per committed batch: [event rows, anomaly rows], each row as above.
def encode_tail(events: list, anomalies: list) -> bytes:
    """Pack one committed batch's event and anomaly rows for followers."""
    return msgpack.packb([events, anomalies])


def decode_tail(raw: bytes) -> tuple[list[dict], list[dict]]:
    """A tail message as (events, anomalies), rows keyed by column (JSON columns as text)."""
    events, anomalies = tail_rows(raw)
    return (
        [row_dict("events", row) for row in events],
        [row_dict("anomalies", row) for row in anomalies],
    )


def tail_rows(raw: bytes) -> tuple[list[list], list[list]]:
    """A tail message as (event rows, anomaly rows), each row a list in column order."""
    events, anomalies = msgpack.unpackb(raw, raw=False)
    return events, anomalies


def tail_newest(raw: bytes, keep: int) -> tuple[list[list], int, list[list], int]:
    """The newest ``keep`` event rows and anomaly rows of a tail message, with how many of
    each it holds: (events, event count, anomalies, anomaly count). The rows before them
    are skipped unread, so a batch of thousands costs what its last few do."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(raw), 1))
    unpacker.feed(raw)
    if unpacker.read_array_header() != 2:
        raise ValueError("a tail message is [events, anomalies]")
    out: list = []
    for _ in range(2):
        count = unpacker.read_array_header()
        for _ in range(count - keep):
            unpacker.skip()
        out += [[unpacker.unpack() for _ in range(min(count, keep))], count]
    return out[0], out[1], out[2], out[3]


# -- the control channel: one msgpack map per request and per reply ----------------------
# A request names its ``op`` and carries ``rid``, the client's number for it, which the reply
# echoes (a reply to a request the client gave up on is dropped by its rid). A reply says
# ``ok``, and ``error`` when ok is false. The maps below are built here only; their keys
# keep the order they have always had on the socket (msgpack keeps insertion order).
OP_SYNC = "sync"  # a publisher: what of mine is committed? (its acknowledgement)
OP_PING = "ping"  # anyone: who are you (pid, instance)?
OP_STATS = "stats"  # `memorybank status`: the writer's figures
OP_LEASE = "lease"  # a publisher: a new id block (and a spool token under CURVE)
MAINTENANCE_JOBS = ("retention", "vacuum")  # each is its own op


def request(op: str, rid: int, **fields) -> dict:
    """Any request: ``op``, ``rid``, then its fields. (A client that numbers its requests
    itself, as control.ControlClient does, overwrites ``rid``: the key keeps its place.)"""
    return {"op": op, "rid": rid, **fields}


def _given(**fields) -> dict:
    """The optional fields a request carries: those not None, in the order given."""
    return {key: value for key, value in fields.items() if value is not None}


def sync_request(
    rid: int,
    publisher_id: int,
    seq: int,
    *,
    wait: float,
    urgent: bool,
    dropped: int | None = None,
    base: int | None = None,
    token: bool | None = None,
) -> dict:
    """Ask for the acknowledgement of messages up to ``seq``: answered once they are
    committed or after ``wait`` seconds; ``urgent`` commits now rather than at the end of the
    batch window. A publisher also reports the records it dropped so far and its ``base``
    (see the module docstring), and ``token`` asks for a spool token; fields left None are
    not sent (a client that only waits for a publisher's commits sends none of them)."""
    optional = _given(dropped=dropped, base=base, token=token)
    return request(OP_SYNC, rid, pub=publisher_id, seq=seq, wait=wait, urgent=urgent, **optional)


@dataclass(frozen=True)
class SyncRequest:
    """A sync request as the writer reads it (fields an older publisher left out: None)."""

    rid: object
    publisher_id: int
    seq: int
    wait: float
    urgent: bool
    dropped: int | None
    base: int | None
    token: bool

    @classmethod
    def parse(cls, request: dict) -> SyncRequest:
        return cls(
            request.get("rid"),
            int(request["pub"]),
            int(request["seq"]),
            float(request.get("wait", 10.0)),
            bool(request.get("urgent", True)),
            int(request["dropped"]) if "dropped" in request else None,
            int(request["base"]) if "base" in request else None,
            bool(request.get("token")),
        )


def maintenance_request(
    job: str,
    rid: int,
    *,
    days: float | None = None,
    trigger: str | None = None,
    then: list[str] | None = None,
) -> dict:
    """Run ``job`` (retention or vacuum) now; ``days`` overrides retention's policy with the
    seed's clear_old_data(days); ``trigger`` says who asked (default "request"); ``then``
    lists jobs to run once it succeeds. Fields left None are not sent."""
    return request(job, rid, **_given(days=days, trigger=trigger, then=then))


@dataclass(frozen=True)
class MaintenanceRequest:
    """A retention or vacuum request as the writer reads it."""

    job: str
    rid: object
    days: float | None
    trigger: str
    then: tuple[str, ...]

    @classmethod
    def parse(cls, request: dict) -> MaintenanceRequest:
        days = request.get("days")
        return cls(
            request["op"],
            request.get("rid"),
            None if days is None else float(days),
            request.get("trigger", "request"),
            tuple(request.get("then", ())),
        )


def spool_token(identity: str, token: bytes) -> dict:
    """What lets a daemon apply a publisher's spool under CURVE (spool_auth): the identity
    its channel authenticated and the token made for both."""
    return {"identity": identity, "token": token}


def parse_spool_token(value) -> tuple[str, bytes] | None:
    """A reply's ``spool_token`` as (identity, token); None when it holds none (a daemon
    without CURVE hands out none: it applies every spool)."""
    if not isinstance(value, dict):
        return None
    return str(value["identity"]), bytes(value["token"])


def ack_reply(rid, committed: int, seq: int, instance: str, resend_from: int | None = None) -> dict:
    """The answer to a sync request: everything up to ``committed`` is in the database
    (``ok`` when that covers ``seq``); ``instance`` names this run of the daemon (a new one
    means a restart: replay); ``resend_from``: a gap the publisher must fill."""
    body = {"rid": rid, "ok": committed >= seq, "committed": committed, "instance": instance}
    if resend_from is not None:
        body["resend_from"] = resend_from
    return body


def with_spool_token(reply: dict, token: dict | None) -> dict:
    """``reply`` carrying a spool token (``spool_token(...)``, or None without CURVE)."""
    return {**reply, "spool_token": token}


@dataclass(frozen=True)
class Ack:
    """A sync reply as the publisher reads it."""

    rid: object
    committed: int
    instance: str | None
    resend: bool  # the daemon asks for a replay
    has_token: bool  # it answered a request for a spool token (with one, or None)
    token: tuple[str, bytes] | None

    @classmethod
    def parse(cls, reply: dict) -> Ack:
        return cls(
            reply.get("rid"),
            int(reply.get("committed", 0)),
            reply.get("instance"),
            "resend_from" in reply,
            "spool_token" in reply,
            parse_spool_token(reply.get("spool_token")),
        )


def ping_reply(rid, pid: int, db: str, instance: str) -> dict:
    return {"rid": rid, "ok": True, "pid": pid, "db": db, "instance": instance}


def stats_reply(rid, figures: dict) -> dict:
    return {"rid": rid, "ok": True, "stats": figures}


def lease_reply(rid, block: int, token: dict | None) -> dict:
    return {"rid": rid, "ok": True, "block": block, "spool_token": token}


@dataclass(frozen=True)
class Lease:
    """A lease reply as the publisher reads it: the id block, or why there is none."""

    block: int | None
    token: tuple[str, bytes] | None
    error: str | None

    @classmethod
    def parse(cls, reply: dict) -> Lease:
        if not reply.get("ok"):
            return cls(None, None, reply.get("error"))
        return cls(int(reply["block"]), parse_spool_token(reply.get("spool_token")), None)


def maintenance_run(
    job: str,
    trigger: str,
    started: float,
    finished: float,
    error: str | None,
    deleted: dict | None,
    bytes_reclaimed: int | None,
    longest_step_ms: float,
) -> dict:
    """What one retention or vacuum run did: its reply's ``run``, the record the store keeps
    (mb_maintenance) and what `memorybank status` shows. ``deleted`` (rows per table) is
    retention's, ``bytes_reclaimed`` vacuum's; the other is None."""
    return {
        "job": job,
        "trigger": trigger,
        "started": started,
        "finished": finished,
        "status": "ok" if error is None else "error",
        "deleted": deleted,
        "bytes_reclaimed": bytes_reclaimed,
        "longest_step_ms": longest_step_ms,
        "error": error,
    }


def maintenance_reply(rid, run: dict) -> dict:
    """The answer to a maintenance request, once its run ended."""
    return {"rid": rid, "ok": run["error"] is None, "run": run, "error": run["error"]}


def error_reply(rid, error: str) -> dict:
    """A request refused (an unknown op, ids that cannot be leased now...)."""
    return {"rid": rid, "ok": False, "error": error}


def unreadable_reply(error: str) -> dict:
    """The answer to a request that could not be read (so it has no rid to echo)."""
    return {"ok": False, "error": error}
