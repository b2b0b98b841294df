"""Recurring cycles in the event stream (events and anomalies), learned online.

Each event becomes a *symbol*: its type plus the data fields whose values recur (a limit of
0 or 100, a connector) and its scope (``cp_id``, ``connector_id``); fields whose values keep
changing (a transaction id, a cycle number, a reading) are left out, so the same step of a
cycle gets the same symbol every time. A symbol is periodic when its last
``history`` occurrences are evenly spaced (every interval within ``tolerance`` of the
median, which is at least ``min_period_s``). Periodic symbols of one scope with the same
period form a cycle; its steps are ordered by their phase, starting after the longest
quiet part of the cycle. A cycle is recorded as an ``EVENT_CYCLE`` pattern each time its
first step recurs; its data (steps, offsets, period and spread) is fixed when the cycle
is first learned, so ``record_pattern`` raises the same pattern's frequency each time.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

PATTERN_TYPE = "EVENT_CYCLE"
SCOPE_FIELDS = ("cp_id", "connector_id")  # always part of a symbol; cycles are per cp_id
MAX_FIELD_VALUES = 16  # more distinct values than this: the field is an identifier
MAX_SYMBOLS = 10_000
MAX_KNOWN_TEXTS = 10_000  # event data texts whose symbol is settled, remembered
ANOMALY_PREFIX = "anomaly:"


@dataclass
class PatternRecord:
    """A record_pattern call to make."""

    timestamp: float
    data: dict
    confidence: float
    key: str


class CycleLearner:
    def __init__(
        self,
        min_period_s: float = 2.0,
        tolerance: float = 0.05,
        history: int = 6,
    ):
        self.min_period_s = min_period_s
        self.tolerance = tolerance
        self.history = history
        self.fields: dict[str, dict | None] = {}  # "type/field" -> {value: count} | None
        self.times: dict[str, deque] = {}  # symbol -> recent occurrence times
        self.scopes: dict[str, str] = {}  # symbol -> its scope (JSON text)
        self.periodic: dict[str, float] = {}  # symbol -> period
        self.first_seen: dict[str, float] = {}  # event type -> its first occurrence
        self.pending: dict[str, float] = {}  # candidate cycle (its steps) -> when to learn it
        self.cycles: list[dict] = []  # learned cycles (identity fixed when learned)
        self.anchors: dict[str, int] = {}  # first step symbol -> index in cycles
        self._dirty = False
        self._known: dict[tuple, str] = {}  # (kind, data text) -> its settled symbol

    # -- persistence ------------------------------------------------------------------
    def to_state(self) -> dict:
        return {
            "fields": self.fields,
            "times": {s: list(t) for s, t in self.times.items()},
            "scopes": self.scopes,
            "periodic": self.periodic,
            "first_seen": self.first_seen,
            "pending": self.pending,
            "cycles": self.cycles,
        }

    def load_state(self, state: dict) -> None:
        self.fields = state["fields"]
        self.times = {s: deque(t, maxlen=self.history + 1) for s, t in state["times"].items()}
        self.scopes = state["scopes"]
        self.periodic = state["periodic"]
        self.first_seen = state["first_seen"]
        self.pending = state["pending"]
        self.cycles = state["cycles"]
        self.anchors = {c["sequence"][0]: i for i, c in enumerate(self.cycles) if c["active"]}

    # -- symbols ----------------------------------------------------------------------
    def symbol_of_text(self, kind: str, data_text: str | None) -> str:
        """``symbol`` of an event's data as stored (JSON text). Once every field value in
        it has been seen before, the same text always makes the same symbol (until a
        field turns out to be an identifier), so it is remembered: most events repeat."""
        key = (kind, data_text)
        symbol = self._known.get(key)
        if symbol is None:
            try:
                data = json.loads(data_text) if data_text else None
            except ValueError:
                data = None
            symbol, settled = self._symbol(kind, data)
            if settled:
                if len(self._known) >= MAX_KNOWN_TEXTS:
                    self._known.clear()
                self._known[key] = symbol
        return symbol

    def symbol(self, kind: str, data) -> str:
        """The symbol of an event type (or ``anomaly:TYPE``) with its data."""
        return self._symbol(kind, data)[0]

    def _symbol(self, kind: str, data) -> tuple[str, bool]:
        """The symbol, and whether every field value in ``data`` was seen before."""
        if not isinstance(data, dict) or not data:
            return kind, True
        parts, scope = [], {}
        settled = True
        for name in sorted(data):
            value = data[name]
            if not isinstance(value, str | int | float | bool) and value is not None:
                value = json.dumps(value, sort_keys=True, separators=(",", ":"))
            if name in SCOPE_FIELDS:
                if name == SCOPE_FIELDS[0]:
                    scope[name] = value
                parts.append(f"{name}={value}")
                continue
            key = f"{kind}/{name}"
            counts = self.fields.setdefault(key, {})
            if counts is None:
                continue
            text = value if isinstance(value, str) else repr(value)
            seen = counts.get(text, 0)
            if not seen and len(counts) >= MAX_FIELD_VALUES:
                self.fields[key] = None  # an identifier, not a category
                self._known.clear()  # symbols that named one of its values are stale
                continue
            counts[text] = seen + 1
            if seen:
                parts.append(f"{name}={value}")
            else:
                settled = False
        symbol = f"{kind}({','.join(parts)})" if parts else kind
        if scope and symbol not in self.scopes:
            self.scopes[symbol] = json.dumps(scope, sort_keys=True)
        return symbol, settled

    # -- occurrences ------------------------------------------------------------------
    def observe(self, ts: float, symbol: str) -> list[PatternRecord]:
        times = self.times.get(symbol)
        if times is None:
            if len(self.times) >= MAX_SYMBOLS:
                self._forget_oldest()
            times = self.times[symbol] = deque(maxlen=self.history + 1)
            self.first_seen.setdefault(symbol.split("(")[0], ts)  # per kind: fields settle later
        if times and ts < times[-1]:
            return []  # behind this symbol's time (a late publisher): not a recurrence
        times.append(ts)
        was = self.periodic.get(symbol)
        period = self._period(times)
        if period is None:
            if was is not None:
                del self.periodic[symbol]
                self._dirty = True
        elif was is None or abs(period - was) > self.tolerance * was:
            self.periodic[symbol] = period
            self._dirty = True
        out: list[PatternRecord] = []
        if self._dirty or (self.pending and ts >= min(self.pending.values())):
            self._dirty = False
            out += self._rebuild(ts)
        index = self.anchors.get(symbol)
        if index is not None and self.cycles[index]["last"] < ts:
            out.append(self._recur(self.cycles[index], ts))
        return out

    def _period(self, times: deque) -> float | None:
        if len(times) <= self.history:
            return None
        if times[-1] - times[-2] < self.min_period_s * (1 - self.tolerance):
            return None  # too soon for any period this learner accepts (most events)
        gaps = sorted(b - a for a, b in zip(times, list(times)[1:], strict=False))
        median = gaps[len(gaps) // 2]
        if median < self.min_period_s:
            return None
        if (
            gaps[-1] - median > self.tolerance * median
            or median - gaps[0] > self.tolerance * median
        ):
            return None
        return sum(gaps) / len(gaps)

    def _forget_oldest(self) -> None:
        oldest = sorted(self.times, key=lambda s: self.times[s][-1] if self.times[s] else 0)
        for symbol in oldest[: MAX_SYMBOLS // 10]:
            self.times.pop(symbol, None)
            self.periodic.pop(symbol, None)
            self.scopes.pop(symbol, None)

    # -- cycles -----------------------------------------------------------------------
    def _groups(self) -> list[tuple[str | None, list[str]]]:
        """Periodic symbols grouped by period, then by scope (an unscoped symbol joins the
        one scope that has its period, if only one does)."""
        ordered = sorted(self.periodic, key=lambda symbol: self.periodic[symbol])
        clusters: list[list[str]] = []
        for symbol in ordered:
            if clusters and self.periodic[symbol] <= self.periodic[clusters[-1][0]] * (
                1 + self.tolerance
            ):
                clusters[-1].append(symbol)
            else:
                clusters.append([symbol])
        groups = []
        for cluster in clusters:
            by_scope: dict[str | None, list[str]] = {}
            for symbol in cluster:
                by_scope.setdefault(self.scopes.get(symbol), []).append(symbol)
            unscoped = by_scope.pop(None, [])
            if len(by_scope) == 1 and unscoped:
                next(iter(by_scope.values())).extend(unscoped)
            elif unscoped:
                by_scope[None] = unscoped
            groups += list(by_scope.items())
        return groups

    def _rebuild(self, now: float) -> list[PatternRecord]:
        """Re-derive the cycles from the periodic symbols. A cycle already learned keeps
        its identity (same steps, period within tolerance); a new one is learned once its
        steps have stayed the same for two periods (steps become periodic one by one), and
        is then recorded with one recurrence per cycle seen so far."""
        out: list[PatternRecord] = []
        pending: dict[str, float] = {}
        for cycle in self.cycles:
            cycle["active"] = False
        for scope, members in self._groups():
            has_anomaly = any(m.startswith(ANOMALY_PREFIX) for m in members)
            if len(members) < 2 and not has_anomaly:
                continue
            period = sum(self.periodic[m] for m in members) / len(members)
            ref = self.times[members[0]][-1]
            phase = {m: (self.times[m][-1] - ref) % period for m in members}
            order = sorted(members, key=lambda m: phase[m])
            # The cycle starts at the step seen first (the data's own beginning).
            first = self.first_seen
            start = order.index(min(order, key=lambda m: (first.get(m.split("(")[0], 0), phase[m])))
            order = order[start:] + order[:start]
            base = phase[order[0]]
            offsets = [round((phase[m] - base) % period, 3) for m in order]
            known = next(
                (
                    c
                    for c in self.cycles
                    if set(c["sequence"]) == set(order)
                    and abs(c["data"]["period_s"] - period) <= self.tolerance * period
                ),
                None,
            )
            if known is not None:
                known["active"] = True
                continue
            steps = json.dumps(sorted(order))
            due = self.pending.get(steps, now + 2 * period)
            if now < due:
                pending[steps] = due
                continue
            anchor_times = list(self.times[order[0]])
            gaps_s = [b - a for a, b in zip(anchor_times, anchor_times[1:], strict=False)]
            mean = sum(gaps_s) / len(gaps_s)
            spread = (sum((g - mean) ** 2 for g in gaps_s) / max(len(gaps_s) - 1, 1)) ** 0.5
            data = {
                "sequence": order,
                "offsets_s": offsets,
                "period_s": round(period, 3),
                "period_spread_s": round(spread, 3),
                "anomalies": [
                    {
                        "step": m,
                        "anomaly_type": m[len(ANOMALY_PREFIX) :].split("(")[0],
                        "offset_s": o,
                    }
                    for m, o in zip(order, offsets, strict=True)
                    if m.startswith(ANOMALY_PREFIX)
                ],
                "scope": json.loads(scope) if scope else {},
                "detector": "event-cycle",
            }
            cycle = {"sequence": order, "data": data, "active": True, "last": 0.0}
            self.cycles.append(cycle)
            for ts in anchor_times:
                out.append(self._recur(cycle, ts))
        self.pending = pending
        self.cycles = [c for c in self.cycles if c["active"]] + [
            c for c in self.cycles if not c["active"]
        ][-50:]
        self.anchors = {c["sequence"][0]: i for i, c in enumerate(self.cycles) if c["active"]}
        return out

    def _recur(self, cycle: dict, ts: float) -> PatternRecord:
        """One more cycle: confidence is the share of its steps seen in the cycle before."""
        period = cycle["data"]["period_s"]
        since = ts - period * (1 + self.tolerance)
        seen = sum(
            1
            for m in cycle["sequence"]
            if self.times.get(m) and any(since <= t <= ts for t in self.times[m])
        )
        cycle["last"] = ts
        if "key" not in cycle:  # the identity record_pattern stores it under
            cycle["key"] = pattern_key(cycle["data"])
        return PatternRecord(
            ts, cycle["data"], round(seen / len(cycle["sequence"]), 3), cycle["key"]
        )


def pattern_key(data: dict) -> str:
    """A pattern's data as canonical JSON: its identity among stored patterns."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
