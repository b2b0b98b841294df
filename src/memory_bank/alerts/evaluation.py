"""Rule evaluation: committed rows in, notifications out (Alertmanager's firing, repeat and
resolved, per group).

Each rule keeps a state per group (``group`` names a key of the record's data; without it
the rule has one group, ""). The evaluator never changes its committed states in place: a
batch (or a tick) works on copies, which the engine writes in the same transaction as the
batch and adopts only once that transaction committed, so a batch that is rolled back and
retried is evaluated once, as it is stored once.

A state outlives a reload or a restart while its rule keeps watching the same thing (its
``when``, table, metric, types, severity and ``group``; thresholds, ``for``, ``repeat`` and
sinks may change: the next record or tick decides under the new ones). A state whose rule
was removed, or now watches something else, is retired: resolved once to the sinks its
rule had (when it fired), and deleted.

Times: ``for`` of a metric rule and ``within`` of a rate rule compare the records' own
timestamps (the caller's time, contract 3); ``for`` of an absence rule, ``repeat`` and
``resolve_after`` compare the daemon's clock, since they are about time passing with no
record at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress, count, repeat
from operator import eq, gt, itemgetter, le, lt, or_, sub

from .records import TYPE_INDEX, as_record, created_at, group_of, orjson
from .rules import Rule


@dataclass
class GroupState:
    """What one (rule, group) remembers between batches (persisted as JSON)."""

    firing: bool = False
    since: float | None = None  # metric: record time the condition began to hold
    last_notified: float = 0.0  # daemon time of the last notification
    last_seen: float | None = None  # daemon time of the last matching record
    times: list = field(default_factory=list)  # rate: record times of the last `count`
    record: dict | None = None  # the last matching record (repeat/resolved carry it)
    fired_at: float | None = None  # daemon time it began firing
    summary: str | None = None  # what the firing notification said
    definition: dict | None = None  # its rule's ``Rule.definition`` when last written

    def to_json(self) -> dict:
        """Its fields (``times`` copied, as the evaluator appends to it; a record is
        replaced, never changed). Not ``asdict``: its deep copy of ``times``, element by
        element, cost more than the rest of a batch's evaluation."""
        return {**vars(self), "times": list(self.times)}

    def to_text(self) -> str:
        """Its fields as JSON text, as mb_alert_state keeps them: orjson where installed (a
        ``rate`` window of 1,000 times is written with every batch; the standard library
        took more than the batch's evaluation), the standard library otherwise."""
        if orjson is not None:
            try:
                return orjson.dumps(vars(self)).decode()
            except TypeError:  # an int past 64 bits in a record: the standard library's way
                pass
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: dict) -> GroupState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Notification:
    rule: Rule
    group: str
    state: str  # "firing" or "resolved"
    at: float
    record: dict | None
    table: str
    summary: str


Key = tuple[str, str]  # (rule name, group)


class Evaluator:
    def __init__(self, rules: tuple[Rule, ...], states: dict[Key, GroupState], now: float):
        self.states = states
        self.retiring: dict[Key, GroupState] = {}  # states to resolve and delete (retire)
        self.configure(rules, now)

    def configure(self, rules: tuple[Rule, ...], now: float) -> None:
        """The rules to evaluate (at start, and on SIGHUP). States whose rule is gone, or
        watches something else now, are set aside for ``retire``; a state written before
        states carried their rule's definition is kept while a rule of its name exists."""
        self.rules = rules
        watched = {rule.name: _watched(rule.definition) for rule in rules}
        for key, st in list(self.states.items()):
            now_watched = watched.get(key[0])
            if now_watched is None or (
                st.definition is not None and _watched(st.definition) != now_watched
            ):
                self.retiring[key] = self.states.pop(key)
        self.restart_clocks(now)

    def restart_clocks(self, now: float) -> None:
        """Absence is measured from when the daemon (or the rule) started at the earliest:
        data a publisher held while the daemon was down is not an absence."""
        self._started = now
        for rule in self.rules:
            if rule.when != "absence":
                continue
            for (name, _g), st in self.states.items():
                if name == rule.name and not st.firing:
                    st.last_seen = max(st.last_seen or 0.0, now)

    # -- a committed batch --------------------------------------------------------------
    def batch(self, tables: dict[str, list], now: float) -> tuple[list, dict]:
        """Notifications for a batch's rows ({table: wire rows}), and the states touched."""
        notes: list[Notification] = []
        touched: dict[Key, GroupState] = {}
        committed = created_at(now)
        # Per state, the last row to remember that made no notification: its record is
        # built once, after the batch (building one per record cost most of the batch).
        latest: dict[Key, tuple[Rule, list]] = {}
        types: dict[str, list] = {}  # per table, its type column (one pass in C)
        picked: dict[tuple, list] = {}  # per filter, its rows: rules that filter alike share
        for rule in self.rules:
            rows = tables.get(rule.table) or ()
            if not rows:
                continue
            which = (rule.table, rule.metric, rule.event_type, rule.anomaly_type, rule.severity)
            if which not in picked:
                picked[which] = self._matching(rule, rows, types)
            rows = picked[which]
            if not rows:
                continue
            if rule.group is None and self._whole(
                rule, rows, now, committed, touched, notes, latest
            ):
                continue
            for key, row in self._keyed(rule, rows):
                st = self._staged(key, touched)
                self._on_record(rule, key, st, row, now, committed, notes, latest)
        for key, (rule, row) in latest.items():
            touched[key].record = as_record(rule.table, row, committed)
        self._stamp(touched)
        return notes, touched

    def _stamp(self, touched: dict[Key, GroupState]) -> None:
        """Each state written carries its rule's definition (``configure`` reads it)."""
        if touched:
            definitions = {rule.name: rule.definition for rule in self.rules}
            for (name, _group), st in touched.items():
                st.definition = definitions[name]

    @staticmethod
    def _matching(rule: Rule, rows, types: dict[str, list]) -> list:
        """The rule's rows, filtered a column at a time in C (``compress``), not row by
        row: most rules look at a small part of each batch."""
        column = types.get(rule.table)
        if column is None:
            column = types[rule.table] = list(map(itemgetter(TYPE_INDEX[rule.table]), rows))
        names = rule.event_type or rule.anomaly_type
        if rule.metric is not None:
            rows = list(compress(rows, map(eq, column, repeat(rule.metric))))
        elif names:
            rows = list(compress(rows, map(names.__contains__, column)))
        if rule.severity and rows:
            rows = list(compress(rows, map(rule.severity.__contains__, map(itemgetter(3), rows))))
        return rows

    def _whole(self, rule, rows, now, committed, touched, notes, latest) -> bool:
        """A rule without ``group`` over its rows at once, where that gives what row by
        row would: a ``rate`` window, and a ``metric`` whose condition no row meets. False
        when the rows must go one by one."""
        key = (rule.name, "")
        if rule.when == "rate":
            st = self._staged(key, touched)
            self._rate(rule, key, st, rows, now, committed, notes, latest)
            return True
        if rule.when == "metric":
            values: Iterable = map(itemgetter(3), rows)
            if rule.above is not None and rule.below is not None:
                values = list(values)  # read twice
                held = map(
                    or_, map(gt, values, repeat(rule.above)), map(lt, values, repeat(rule.below))
                )
            elif rule.above is not None:
                held = map(gt, values, repeat(rule.above))
            else:
                held = map(lt, values, repeat(rule.below))
            if any(held):
                return False
            kept = self.states.get(key)
            if kept is None or kept.since is not None or kept.firing:
                st = self._staged(key, touched)
                if st.firing:  # the first row resolves it: row by row
                    return False
                st.since = None
            return True
        return False

    def _rate(self, rule, key, st, rows, now, committed, notes, latest) -> None:
        """A ``rate`` rule's rows at once: where the window of ``count`` records ending at
        each row spans at most ``within`` (differences taken in C, not a window copied or
        shifted per record: 1,000 floats per event for a ``count = 1000`` rule). Only the
        first window that holds (when not firing yet) and the last (remembered) matter:
        each is found by a lazy scan in C that stops there, from the front and from the
        back (a storm that keeps holding is found at the last row at once), not by a list
        of every window's outcome."""
        old, size = len(st.times), rule.count
        times = st.times + list(map(itemgetter(1), rows))
        st.times = times[-size:]
        first = max(old, size - 1)  # the first place a window of `size` ends
        if first >= len(times):
            return
        ends, begins = times[first:], times[first - size + 1 : len(times) - size + 1]
        offset = first - old  # the row at which window 0 ends
        start = 0
        if not st.firing:
            held = _first_held(map(sub, ends, begins), rule.within)
            if held is None:
                return
            start = held
            row = rows[offset + start]
            latest.pop(key, None)
            st.record = as_record(rule.table, row, committed)
            self._fire(rule, "", st, now, notes, _rate_summary(rule, row))
            start += 1
        back = _first_held(map(sub, reversed(ends), reversed(begins)), rule.within)
        if back is not None and len(ends) - 1 - back >= start:  # the last one after that
            latest[key] = (rule, rows[offset + len(ends) - 1 - back])

    def _keyed(self, rule: Rule, rows) -> Iterator[tuple[Key, list]]:
        """The rule's matching rows with their state's key. For ``anomaly`` and
        ``absence`` only a group's first row (it may fire or resolve) and last (remembered)
        can change anything: the rows between are skipped."""
        if rule.group is None and rule.when in ("anomaly", "absence"):
            key = (rule.name, "")
            yield key, rows[0]
            if len(rows) > 1:
                yield key, rows[-1]
            return
        pairs = (((rule.name, group_of(rule.table, row, rule.group)), row) for row in rows)
        if rule.when not in ("anomaly", "absence"):
            yield from pairs
            return
        ends: dict[Key, list] = {}
        for key, row in pairs:
            if key in ends:
                ends[key][1] = row
            else:
                ends[key] = [row, None]
        for key, (first, last) in ends.items():
            yield key, first
            if last is not None:
                yield key, last

    def _staged(self, key: Key, touched: dict) -> GroupState:
        st = touched.get(key)
        if st is None:
            old = self.states.get(key)
            st = GroupState() if old is None else GroupState.from_json(old.to_json())
            touched[key] = st
        return st

    def _on_record(self, rule, key, st, row, now, committed, notes, latest) -> None:
        """One matching row; ``st.record`` is built here when a notification carries it,
        else the row waits in ``latest`` (the batch builds the last one's record)."""
        group = key[1]

        def record() -> dict:
            latest.pop(key, None)
            return as_record(rule.table, row, committed)

        if rule.when == "anomaly":
            st.last_seen = now
            if not st.firing:
                st.record = record()
                self._fire(rule, group, st, now, notes, f"{row[2]} ({row[3]}): {row[4] or ''}")
            else:
                latest[key] = (rule, row)
        elif rule.when == "metric":
            value, ts = row[3], row[1]
            if rule.holds(value):
                if st.since is None:
                    st.since = ts
                if not st.firing and ts - st.since >= rule.hold:
                    st.record = record()
                    self._fire(rule, group, st, now, notes, _metric_summary(rule, value))
            else:
                st.since = None
                if st.firing:
                    st.record = record()
                    self._resolve(rule, group, st, now, notes, f"{rule.metric} = {value:g}")
        elif rule.when == "rate":
            st.times.append(row[1])
            if len(st.times) > rule.count:
                del st.times[0]
            if len(st.times) == rule.count and st.times[-1] - st.times[0] <= rule.within:
                if st.firing:
                    latest[key] = (rule, row)
                else:
                    st.record = record()
                    self._fire(rule, group, st, now, notes, _rate_summary(rule, row))
        else:  # absence: data arrived
            st.last_seen = now
            if st.firing:
                st.record = record()
                self._resolve(rule, group, st, now, notes, "data arrives again")
            else:
                latest[key] = (rule, row)

    # -- time passing -------------------------------------------------------------------
    def tick(self, now: float) -> tuple[list, dict]:
        """Notifications that time alone causes: absence, resolve_after, a rate that no
        longer holds, repeat."""
        notes: list[Notification] = []
        touched: dict[Key, GroupState] = {}
        for rule in self.rules:
            if rule.when == "absence" and not rule.group:
                own = (rule.name, "")
                # (a retiring state of that key is deleted first: the new one is made after)
                if own not in self.states and own not in self.retiring:
                    self.states[own] = GroupState(last_seen=self._started)
            for key, st0 in list(self.states.items()):
                if key[0] != rule.name:
                    continue
                change = self._due(rule, st0, now)
                if change is None:
                    continue
                st = self._staged(key, touched)
                if change == "absent":
                    self._fire(rule, key[1], st, now, notes, f"nothing for {rule.hold:g}s")
                elif change == "resolved":
                    self._resolve(rule, key[1], st, now, notes, "no longer holds")
                else:  # repeat
                    st.last_notified = now
                    notes.append(self._note(rule, key[1], st, "firing", now, "still firing"))
        self._stamp(touched)
        return notes, touched

    def retire(self, now: float) -> tuple[list[Notification], list[Key], list[Key]]:
        """The set-aside states' last word: a ``resolved`` notification for each that fired
        (to its rule's sinks as they were; none when the rule's new definition already
        fires that group again), the keys retired, and those of them whose rows to delete
        (not those a batch has written a new state to meanwhile). ``retired`` forgets them
        once that committed."""
        names = {rule.name for rule in self.rules}
        notes = []
        done = list(self.retiring)
        for (name, group), st in self.retiring.items():
            new = self.states.get((name, group))
            if not st.firing or st.definition is None or (new is not None and new.firing):
                continue
            d = st.definition
            rule = Rule(name, d["when"], tuple(d["notify"]), group=d["group"], table=d["table"])
            why = "its rule changed" if name in names else "its rule was removed"
            notes.append(self._note(rule, group, st, "resolved", now, why))
        gone = [key for key in done if key not in self.states]
        return notes, done, gone

    def retired(self, keys) -> None:
        """``retire``'s notifications and deletions committed: those states are gone."""
        for key in keys:
            self.retiring.pop(key, None)

    @staticmethod
    def _due(rule: Rule, st: GroupState, now: float) -> str | None:
        if not st.firing:
            if rule.when == "absence" and now - (st.last_seen or now) >= rule.hold:
                return "absent"
            return None
        if rule.when == "anomaly" and now - (st.last_seen or now) >= rule.resolve_after:
            return "resolved"
        if rule.when == "rate" and (len(st.times) < rule.count or st.times[0] < now - rule.within):
            return "resolved"
        if now - st.last_notified >= rule.repeat:
            return "repeat"
        return None

    # -- notifications ------------------------------------------------------------------
    def _fire(self, rule, group, st, now, notes, summary) -> None:
        st.firing, st.last_notified, st.fired_at, st.summary = True, now, now, summary
        notes.append(self._note(rule, group, st, "firing", now, summary))

    def _resolve(self, rule, group, st, now, notes, summary) -> None:
        st.firing, st.last_notified = False, now
        notes.append(self._note(rule, group, st, "resolved", now, summary))

    @staticmethod
    def _note(rule, group, st, state, now, summary) -> Notification:
        return Notification(rule, group, state, now, st.record, rule.table, summary)

    def adopt(self, touched: dict[Key, GroupState]) -> None:
        """The transaction that wrote ``touched`` committed: they are the states now."""
        self.states.update(touched)

    def firing(self) -> list[tuple[str, str, GroupState]]:
        return [(r, g, st) for (r, g), st in self.states.items() if st.firing]


def _watched(definition: dict) -> dict:
    """A rule's definition without its sinks: what its states are about."""
    return {k: v for k, v in definition.items() if k != "notify"}


def _first_held(spans, within: float) -> int | None:
    """The index of the first span at most ``within`` (None when none is), stopping there."""
    return next(compress(count(), map(le, spans, repeat(within))), None)


def _rate_summary(rule: Rule, row) -> str:
    return f"{rule.count} x {row[2]} within {rule.within:g}s"


def _metric_summary(rule: Rule, value: float) -> str:
    bounds = []
    if rule.above is not None:
        bounds.append(f"above {rule.above:g}")
    if rule.below is not None:
        bounds.append(f"below {rule.below:g}")
    held = f" for {rule.hold:g}s" if rule.hold else ""
    return f"{rule.metric} = {value:g} ({' or '.join(bounds)}){held}"
