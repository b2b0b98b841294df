"""Rule parsing and evaluation (Alertmanager's firing, repeat, resolved, per group), on
the evaluator itself with wire rows: time is given, so no test waits for it."""

from __future__ import annotations

import json

import pytest

from memory_bank.alerts import RuleError, parse
from memory_bank.alerts.evaluation import Evaluator

SINKS = {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/hook"}}


def evaluator(*rules: dict, now: float = 1000.0) -> Evaluator:
    config = parse([{"notify": ["hook"], **r} for r in rules], SINKS)
    return Evaluator(config.rules, {}, now)


def run(ev: Evaluator, now: float, **tables) -> list[tuple[str, str, str]]:
    """One committed batch (adopted as the engine does after COMMIT)."""
    notes, touched = ev.batch(tables, now)
    ev.adopt(touched)
    return [(n.rule.name, n.group, n.state) for n in notes]


def tick(ev: Evaluator, now: float) -> list[tuple[str, str, str]]:
    notes, touched = ev.tick(now)
    ev.adopt(touched)
    return [(n.rule.name, n.group, n.state) for n in notes]


def anomaly(i, ts, kind="CURRENT_LIMIT_FLUCTUATION", severity="HIGH", **data):
    return [i, ts, kind, severity, "d", json.dumps(data), 1.0, 0.0]


def metric(i, ts, value, name="current", **meta):
    return [i, ts, name, value, "A", json.dumps(meta) if meta else None]


def test_the_issue_example_parses():
    config = parse(
        [
            {"name": "critical-anomaly", "when": "anomaly", "severity": ["HIGH", "CRITICAL"],
             "notify": ["hook"]},
            {"name": "overcurrent", "when": "metric", "metric": "current", "above": 80.0,
             "for": "2s", "notify": ["hook"]},
            {"name": "anomaly-storm", "when": "rate", "anomaly_type": "X", "count": 5,
             "within": "1m", "notify": ["hook"]},
            {"name": "charger-silent", "when": "absence", "metric": "current", "for": "10s",
             "notify": ["hook"]},
        ],
        {**SINKS, "phone": {"type": "apprise", "url": "ntfy://lab-alerts"},
         "broker": {"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": "memorybank",
                    "stream": ["events", "anomalies", "metrics"]}},
    )  # fmt: skip
    assert [r.name for r in config.rules] == [
        "critical-anomaly", "overcurrent", "anomaly-storm", "charger-silent"
    ]  # fmt: skip
    assert config.rules[1].hold == 2.0 and config.rules[2].within == 60.0


@pytest.mark.parametrize(
    "rule, message",
    [
        ({"name": "a b", "when": "anomaly"}, "name must be"),
        ({"name": "x", "when": "threshold"}, "when must be one of anomaly, metric"),
        ({"name": "x", "when": "metric", "metric": "current"}, "alert 'x': set above = or"),
        ({"name": "x", "when": "metric", "metric": "c", "above": 1, "for": "2 sec"}, "for: expe"),
        ({"name": "x", "when": "rate", "count": 5, "within": "1m"}, "exactly one of anomaly_typ"),
        ({"name": "x", "when": "absence", "metric": "c"}, "alert 'x': for = \"DURATION\""),
        ({"name": "x", "when": "anomaly", "above": 3}, "alert 'x': unknown key(s) above"),
        ({"name": "x", "when": "anomaly", "notify": ["pager"]}, "no [sinks.pager]"),
    ],
)
def test_a_bad_rule_is_refused_with_its_name_and_the_reason(rule, message):
    with pytest.raises(RuleError, match=None) as info:
        parse([{"notify": ["hook"], **rule}], SINKS)
    assert message in str(info.value)


def test_two_rules_with_one_name_are_refused():
    with pytest.raises(RuleError, match="alert 'x': two rules have this name"):
        parse([{"name": "x", "when": "anomaly", "notify": "hook"}] * 2, SINKS)


@pytest.mark.parametrize("key", ["stream_batch", "stream_process"])
def test_a_sink_switch_that_is_not_true_or_false_is_refused(key):
    sink = {"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "stream": ["events"], key: "yes"}
    with pytest.raises(RuleError) as info:
        parse([], {"broker": sink})
    assert str(info.value) == f"sink 'broker': {key} must be true or false, got 'yes'"
    for value in (True, False):
        assert getattr(parse([], {"broker": {**sink, key: value}}).sinks["broker"], key) is value


def test_a_stream_runs_in_a_process_of_its_own_and_one_message_per_record_by_default():
    sink = {"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "stream": ["events"]}
    parsed = parse([], {"broker": sink}).sinks["broker"]
    assert parsed.stream_process is True and parsed.stream_batch is False


def test_a_firing_rule_notifies_once_per_group_and_resolves_after_quiet():
    ev = evaluator(
        {"name": "hot", "when": "anomaly", "group": "cp_id", "repeat": "1h",
         "resolve_after": "5m"}
    )  # fmt: skip
    t = 1000.0
    batch = [anomaly(1, t, cp_id="CP1"), anomaly(2, t, cp_id="CP1"), anomaly(3, t, cp_id="CP2")]
    assert run(ev, t, anomalies=batch) == [("hot", "CP1", "firing"), ("hot", "CP2", "firing")]
    assert run(ev, t + 10, anomalies=[anomaly(4, t + 10, cp_id="CP1")]) == []  # no storm
    assert tick(ev, t + 299) == []
    assert tick(ev, t + 300) == [("hot", "CP2", "resolved")]  # quiet for resolve_after
    assert tick(ev, t + 310) == [("hot", "CP1", "resolved")]
    assert ev.states[("hot", "CP2")].firing is False


def test_repeat_while_firing_and_resolve_after_quiet():
    ev = evaluator({"name": "hot", "when": "anomaly", "repeat": "10m", "resolve_after": "1h"})
    t = 1000.0
    assert run(ev, t, anomalies=[anomaly(1, t)]) == [("hot", "", "firing")]
    assert tick(ev, t + 599) == []
    assert tick(ev, t + 600) == [("hot", "", "firing")]
    assert tick(ev, t + 601) == []
    assert tick(ev, t + 3600) == [("hot", "", "resolved")]
    assert tick(ev, t + 9000) == []


def test_rate_fires_at_count_within_and_resolves_when_it_no_longer_holds():
    ev = evaluator(
        {"name": "storm", "when": "rate", "anomaly_type": "X", "count": 3, "within": "10s"}
    )
    t = 1000.0
    assert run(ev, t, anomalies=[anomaly(1, t, "X"), anomaly(2, t + 1, "Y")]) == []
    assert run(ev, t + 20, anomalies=[anomaly(3, t + 20, "X"), anomaly(4, t + 21, "X")]) == []
    assert run(ev, t + 22, anomalies=[anomaly(5, t + 22, "X")]) == [("storm", "", "firing")]
    assert run(ev, t + 23, anomalies=[anomaly(6, t + 23, "X")]) == []
    assert tick(ev, t + 30) == []
    assert tick(ev, t + 31.5) == [("storm", "", "resolved")]


def test_metric_for_uses_record_time_and_resolves_when_it_stops_holding():
    ev = evaluator(
        {"name": "over", "when": "metric", "metric": "current", "above": 80, "for": "2s"}
    )
    t = 1000.0
    assert run(ev, t, metrics=[metric(1, t, 85), metric(2, t + 1.9, 90)]) == []
    assert run(ev, t + 9, metrics=[metric(3, t + 2.0, 91), metric(4, t + 3, 95)]) == [
        ("over", "", "firing")
    ]
    assert run(ev, t + 9, metrics=[metric(5, t + 4, 10, name="voltage")]) == []
    assert run(ev, t + 9, metrics=[metric(6, t + 5, 79)]) == [("over", "", "resolved")]
    assert run(ev, t + 9, metrics=[metric(7, t + 6, 85), metric(8, t + 7, 85)]) == []


def test_absence_fires_after_for_and_resolves_when_data_returns_per_group():
    ev = evaluator(
        {"name": "silent", "when": "absence", "metric": "current", "for": "10s",
         "group": "cp"}
    )  # fmt: skip
    t = 1000.0
    assert run(ev, t, metrics=[metric(1, t, 1, cp="A"), metric(2, t, 1, cp="B")]) == []
    assert run(ev, t + 8, metrics=[metric(3, t + 8, 1, cp="B")]) == []
    assert tick(ev, t + 10) == [("silent", "A", "firing")]
    assert tick(ev, t + 11) == []
    assert run(ev, t + 12, metrics=[metric(4, t + 12, 1, cp="A")]) == [("silent", "A", "resolved")]
    assert tick(ev, t + 18) == [("silent", "B", "firing")]


def test_a_batch_that_is_not_adopted_leaves_the_state_as_it_was():
    """A rolled-back transaction: the same rows evaluated again give the same outcome."""
    ev = evaluator({"name": "hot", "when": "anomaly"})
    notes, _touched = ev.batch({"anomalies": [anomaly(1, 1000.0)]}, 1000.0)
    assert [n.state for n in notes] == ["firing"]
    assert run(ev, 1000.0, anomalies=[anomaly(1, 1000.0)]) == [("hot", "", "firing")]


def notes_of(ev: Evaluator, now: float, **tables) -> list:
    notes, touched = ev.tick(now) if not tables else ev.batch(tables, now)
    ev.adopt(touched)
    return notes


def test_a_notification_carries_the_row_that_caused_it_and_later_ones_the_last_row():
    """Only the rows that notify are turned into records as they come (the batch's hot
    path); what a later notification carries is still the group's last matching row."""
    ev = evaluator(
        {"name": "hot", "when": "anomaly", "resolve_after": "1m", "group": "cp"},
        {"name": "silent", "when": "absence", "metric": "current", "for": "10s"},
    )
    t = 1000.0
    rows = [anomaly(i, t, cp="A") for i in (1, 2, 3)] + [anomaly(4, t, cp="B")]
    fired = notes_of(ev, t, anomalies=rows, metrics=[metric(i, t, 1) for i in (5, 6, 7)])
    assert [(n.group, n.record["id"]) for n in fired] == [("A", 1), ("B", 4)]
    later = notes_of(ev, t + 61)
    assert sorted((n.rule.name, n.group, n.state, n.record["id"]) for n in later) == [
        ("hot", "A", "resolved", 3),
        ("hot", "B", "resolved", 4),
        ("silent", "", "firing", 7),
    ]


def _decisions(ev: Evaluator, now: float, **tables) -> list:
    notes = notes_of(ev, now, **tables)
    return [(n.rule.name, n.state, n.summary, n.record and n.record["id"]) for n in notes]


def _state(ev: Evaluator) -> list:
    """The states rows made (an absence rule without ``group`` has one from its start)."""
    return sorted(
        (name, st.firing, st.since, tuple(st.times), st.record and st.record["id"])
        for (name, _group), st in ev.states.items()
        if name != "silent" or st.record is not None
    )


@pytest.mark.parametrize("seed", range(4))
def test_a_rule_decides_on_a_whole_batch_as_it_does_row_by_row(seed):
    """A rule without ``group`` takes a batch's rows at once (its window of times, its
    condition over the column); with a ``group`` all rows share, it goes row by row: every
    notification, every record it carries and every state are the same."""
    import random

    rng = random.Random(seed)
    rules = [
        {"name": "storm", "when": "rate", "anomaly_type": "X", "count": 4, "within": "2s"},
        {"name": "frames", "when": "rate", "event_type": "CAN_RX", "count": 30, "within": "1s"},
        {"name": "over", "when": "metric", "metric": "current", "above": 80, "for": "0.5s"},
        {"name": "band", "when": "metric", "metric": "current", "above": 95, "below": 5},
        {"name": "hot", "when": "anomaly", "severity": ["HIGH"], "resolve_after": "3s"},
        {"name": "silent", "when": "absence", "metric": "current", "for": "2s"},
    ]
    whole = evaluator(*rules)
    by_row = evaluator(*({**r, "group": "g"} for r in rules))
    t, i = 1000.0, 0
    for _ in range(60):
        tables: dict[str, list] = {"anomalies": [], "events": [], "metrics": []}
        hot = rng.random() < 0.3  # a stretch where the conditions hold
        for _ in range(rng.randrange(0, 40)):
            t += rng.expovariate(100 if hot else 10)
            i += 1
            kind = rng.choice(("anomaly", "event", "event", "metric", "metric"))
            if kind == "anomaly":
                row = [
                    i,
                    t,
                    rng.choice("XY"),
                    rng.choice(("HIGH", "LOW")),
                    "d",
                    '{"g": 1}',
                    1.0,
                    0.0,
                ]
                tables["anomalies"].append(row)
            elif kind == "event":
                tables["events"].append(
                    [i, t, rng.choice(("CAN_RX", "OCPP")), "c", "m", '{"g": 1}']
                )
            else:
                value = rng.uniform(70, 100) if hot else rng.uniform(0, 90)
                name = rng.choice(("current", "current", "voltage"))
                tables["metrics"].append([i, t, name, value, "A", '{"g": 1}'])
        if rng.random() < 0.3:
            assert _decisions(whole, t) == _decisions(by_row, t)  # time passing alone
        assert _decisions(whole, t, **tables) == _decisions(by_row, t, **tables)
        assert _state(whole) == _state(by_row)


def test_a_state_is_kept_across_new_thresholds_and_retired_when_the_rule_watches_another_thing():
    """What a reload (or a start with a changed file) does to a rule's states."""
    hot = {"name": "hot", "when": "metric", "metric": "current", "above": 80.0, "group": "cp"}
    ev = evaluator(hot)
    assert run(ev, 1000.0, metrics=[metric(1, 1.0, 90.0, cp="A")]) == [("hot", "A", "firing")]

    def configure(rule: dict, now: float) -> None:
        ev.configure(parse([{"notify": ["hook"], **rule}], SINKS).rules, now)

    def retire(now: float) -> list[tuple[str, str, str, str]]:
        notes, done, _gone = ev.retire(now)
        ev.retired(done)
        return [(n.rule.name, n.group, n.state, n.summary) for n in notes]

    configure({**hot, "above": 85.0, "repeat": "1m"}, 1001.0)  # thresholds: the state stays
    assert retire(1001.0) == [] and [f[:2] for f in ev.firing()] == [("hot", "A")]
    configure({**hot, "group": "connector"}, 1002.0)  # another group key: retired
    assert retire(1002.0) == [("hot", "A", "resolved", "its rule changed")]
    assert ev.firing() == [] and ev.retiring == {}

    # the new definition fires the same group before the old state is retired: no
    # resolved in between (the receiver would take it for the new alert's end)
    assert run(ev, 1003.0, metrics=[metric(2, 3.0, 90.0, connector="A")]) == [
        ("hot", "A", "firing")
    ]
    configure({**hot, "metric": "voltage", "group": "connector"}, 1004.0)
    assert run(ev, 1004.0, metrics=[metric(3, 4.0, 300.0, name="voltage", connector="A")]) == [
        ("hot", "A", "firing")
    ]
    notes, done, gone = ev.retire(1004.0)
    assert notes == [] and done == [("hot", "A")] and gone == []  # its row is the new state
    ev.retired(done)
    configure({**hot, "name": "renamed"}, 1005.0)
    assert retire(1005.0) == [("hot", "A", "resolved", "its rule was removed")]
