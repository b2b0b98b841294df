"""Alert rules and sinks from the daemon's TOML: ``[[alerts]]`` and ``[sinks.NAME]``.

Parsing checks everything a rule needs before the daemon runs it; a bad rule or sink is
refused with its name and the reason (``RuleError``), so a reload can keep the running
rules. The shape is an interface (see docs/alerts.md): keys are only ever added.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

KINDS = ("anomaly", "metric", "rate", "absence")
SINK_TYPES = ("webhook", "apprise", "mqtt")
STREAM_TABLES = ("events", "anomalies", "metrics")
DEFAULT_REPEAT = 3600.0
DEFAULT_RESOLVE_AFTER = 300.0
DEFAULT_MAX_PENDING = 10_000
DEFAULT_STREAM_MAX_PENDING = 200_000

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class RuleError(ValueError):
    """A rule or sink that cannot be used (its name and the reason)."""


def parse_duration(value, where: str) -> float:
    """``"2s"``, ``"1m30s"``, ``"500ms"``, ``"1h"`` or a number of seconds -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and value and _DURATION.sub("", value) == "":
        return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
    raise RuleError(f'{where}: expected a duration such as "2s", "1m" or "1h", got {value!r}')


@dataclass(frozen=True)
class Sink:
    name: str
    type: str
    url: str
    timeout: float = 10.0
    max_pending: int = DEFAULT_MAX_PENDING  # outbox bound; the oldest pending are dropped
    backoff_max: float = 60.0
    headers: tuple = ()  # webhook: extra (name, value) pairs
    topic: str = "memorybank"  # mqtt
    stream: tuple[str, ...] = ()  # mqtt: tables whose committed records are streamed
    stream_max_pending: int = DEFAULT_STREAM_MAX_PENDING  # records awaiting the broker
    stream_batch: bool = False  # mqtt: a batch's records of one topic as one JSON array
    stream_process: bool = True  # mqtt: the stream in a process of its own


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    notify: tuple[str, ...]
    severity: frozenset = frozenset()  # anomaly filters (empty: any)
    anomaly_type: frozenset = frozenset()
    event_type: frozenset = frozenset()
    metric: str | None = None
    above: float | None = None
    below: float | None = None
    hold: float = 0.0  # `for`: how long a metric condition holds / data stays away
    count: int = 0
    within: float = 0.0
    group: str | None = None  # a key of the record's data (data, metadata, pattern_data)
    repeat: float = DEFAULT_REPEAT
    resolve_after: float = DEFAULT_RESOLVE_AFTER  # anomaly: quiet this long -> resolved
    table: str = "anomalies"  # the table whose records the rule reads

    @cached_property
    def definition(self) -> dict:
        """What the rule's states are about, and where it notifies: kept with each state, so
        that a state whose rule was removed, or now watches something else, is recognised
        (at a reload and at the next start) and resolved rather than left firing."""
        return {
            "when": self.when,
            "table": self.table,
            "metric": self.metric,
            "event_type": sorted(self.event_type),
            "anomaly_type": sorted(self.anomaly_type),
            "severity": sorted(self.severity),
            "group": self.group,
            "notify": list(self.notify),
        }

    def matches_metric(self, name: str) -> bool:
        return name == self.metric

    def holds(self, value: float) -> bool:
        """The metric condition (above and/or below)."""
        return (self.above is not None and value > self.above) or (
            self.below is not None and value < self.below
        )


@dataclass(frozen=True)
class AlertsConfig:
    rules: tuple[Rule, ...] = ()
    sinks: dict = field(default_factory=dict)  # name -> Sink

    @property
    def empty(self) -> bool:
        return not self.rules and not self.sinks


_COMMON = {"name", "when", "notify", "group", "repeat"}
_KEYS = {
    "anomaly": _COMMON | {"severity", "anomaly_type", "resolve_after"},
    "metric": _COMMON | {"metric", "above", "below", "for"},
    "rate": _COMMON | {"anomaly_type", "event_type", "severity", "count", "within"},
    "absence": _COMMON | {"metric", "event_type", "for"},
}
_SINK_KEYS = {
    "webhook": {"type", "url", "timeout", "max_pending", "backoff_max", "headers"},
    "apprise": {"type", "url", "timeout", "max_pending", "backoff_max"},
    "mqtt": {
        "type",
        "url",
        "timeout",
        "max_pending",
        "backoff_max",
        "topic",
        "stream",
        "stream_max_pending",
        "stream_batch",
        "stream_process",
    },
}


def _names(value, where: str) -> frozenset:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RuleError(f"{where}: expected a name or a list of names, got {value!r}")
    return frozenset(value)


def _number(value, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RuleError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _refuse_unknown(raw: dict, allowed: set, message: str) -> None:
    """``message`` (its {} the unknown keys) and the keys expected, when ``raw`` has others."""
    unknown = set(raw) - allowed
    if unknown:
        raise RuleError(
            f"{message.format(', '.join(sorted(unknown)))}; expected {', '.join(sorted(allowed))}"
        )


def parse_sink(name: str, raw) -> Sink:
    where = f"sink {name!r}"
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: expected a table [sinks.{name}]")
    kind = raw.get("type")
    if kind not in SINK_TYPES:
        raise RuleError(f"{where}: type must be one of {', '.join(SINK_TYPES)}, got {kind!r}")
    _refuse_unknown(raw, _SINK_KEYS[kind], f"{where}: unknown key(s) {{}} for a {kind} sink")
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise RuleError(f"{where}: url is required")
    if kind == "webhook" and not url.startswith(("http://", "https://")):
        raise RuleError(f"{where}: url must be http:// or https://, got {url!r}")
    if kind == "mqtt" and not url.startswith(("mqtt://", "mqtts://")):
        raise RuleError(f"{where}: url must be mqtt://HOST[:PORT] or mqtts://, got {url!r}")
    bounds = {}
    for key, default in (
        ("max_pending", DEFAULT_MAX_PENDING),
        ("stream_max_pending", DEFAULT_STREAM_MAX_PENDING),
    ):
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RuleError(f"{where}: {key} must be a whole number >= 1, got {value!r}")
        bounds[key] = value
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise RuleError(f"{where}: headers must be a table of strings")
    stream = raw.get("stream", [])
    if isinstance(stream, str):
        stream = [stream]
    if not isinstance(stream, list) or not set(stream) <= set(STREAM_TABLES):
        raise RuleError(f"{where}: stream must list tables among {', '.join(STREAM_TABLES)}")
    switches = {}
    for key in ("stream_batch", "stream_process"):
        value = raw.get(key, Sink.__dataclass_fields__[key].default)
        if not isinstance(value, bool):
            raise RuleError(f"{where}: {key} must be true or false, got {value!r}")
        switches[key] = value
    topic = raw.get("topic", "memorybank")
    if not isinstance(topic, str) or not topic or any(c in topic for c in "#+"):
        raise RuleError(f"{where}: topic must be a topic name without wildcards, got {topic!r}")
    return Sink(
        name=name,
        type=kind,
        url=url,
        timeout=parse_duration(raw.get("timeout", 10.0), f"{where}: timeout"),
        **bounds,
        backoff_max=parse_duration(raw.get("backoff_max", 60.0), f"{where}: backoff_max"),
        headers=tuple(sorted(headers.items())),
        topic=topic.rstrip("/"),
        stream=tuple(stream),
        stream_batch=switches["stream_batch"],
        stream_process=switches["stream_process"],
    )


def parse_rule(raw, sinks: dict) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(f"[[alerts]]: expected a table, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RuleError(
            f"alert {name!r}: name must be letters, digits, '-', '_' or '.' (it is an MQTT "
            "topic level and a URL part)"
        )
    where = f"alert {name!r}"
    when = raw.get("when")
    if when not in KINDS:
        raise RuleError(f"{where}: when must be one of {', '.join(KINDS)}, got {when!r}")
    _refuse_unknown(raw, _KEYS[when], f"{where}: unknown key(s) {{}} for when = {when!r}")
    notify = raw.get("notify")
    notify = [notify] if isinstance(notify, str) else notify
    if not isinstance(notify, list) or not notify or not all(isinstance(s, str) for s in notify):
        raise RuleError(f"{where}: notify must name at least one sink")
    missing = [s for s in notify if s not in sinks]
    if missing:
        raise RuleError(
            f"{where}: notify names {missing[0]!r}, but there is no [sinks.{missing[0]}]"
        )
    notify_order = tuple(dict.fromkeys(notify))
    fields: dict = {"name": name, "when": when, "notify": notify_order}
    if "group" in raw:
        if not isinstance(raw["group"], str) or not raw["group"]:
            raise RuleError(f"{where}: group must name a key of the record's data")
        fields["group"] = raw["group"]
    if "repeat" in raw:
        fields["repeat"] = parse_duration(raw["repeat"], f"{where}: repeat")
    for key in ("severity", "anomaly_type", "event_type"):
        if key in raw:
            fields[key] = _names(raw[key], f"{where}: {key}")
    if when == "anomaly":
        if "resolve_after" in raw:
            fields["resolve_after"] = parse_duration(
                raw["resolve_after"], f"{where}: resolve_after"
            )
    elif when == "metric":
        if not isinstance(raw.get("metric"), str) or not raw["metric"]:
            raise RuleError(f'{where}: metric = "NAME" is required')
        if "above" not in raw and "below" not in raw:
            raise RuleError(f"{where}: set above = or below = (or both)")
        fields.update(
            metric=raw["metric"],
            table="metrics",
            above=_number(raw["above"], f"{where}: above") if "above" in raw else None,
            below=_number(raw["below"], f"{where}: below") if "below" in raw else None,
            hold=parse_duration(raw.get("for", 0), f"{where}: for"),
        )
    elif when == "rate":
        if ("anomaly_type" in raw) == ("event_type" in raw):
            raise RuleError(f"{where}: set exactly one of anomaly_type = or event_type =")
        if "severity" in raw and "event_type" in raw:
            raise RuleError(f"{where}: severity filters anomalies, not events")
        count = raw.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100_000:
            raise RuleError(f"{where}: count must be a whole number from 1 to 100000")
        if "within" not in raw:
            raise RuleError(f'{where}: within = "DURATION" is required')
        within = parse_duration(raw["within"], f"{where}: within")
        if within <= 0:
            raise RuleError(f"{where}: within must be longer than 0")
        fields.update(
            count=count, within=within, table="events" if "event_type" in raw else "anomalies"
        )
    else:  # absence
        if ("metric" in raw) == ("event_type" in raw):
            raise RuleError(f"{where}: set exactly one of metric = or event_type =")
        if "for" not in raw:
            raise RuleError(f'{where}: for = "DURATION" is required')
        hold = parse_duration(raw["for"], f"{where}: for")
        if hold <= 0:
            raise RuleError(f"{where}: for must be longer than 0")
        fields.update(hold=hold, table="metrics" if "metric" in raw else "events")
        if "metric" in raw:
            if not isinstance(raw["metric"], str) or not raw["metric"]:
                raise RuleError(f"{where}: metric must be a metric name")
            fields["metric"] = raw["metric"]
    return Rule(**fields)


def parse(alerts, sinks) -> AlertsConfig:
    """The ``[[alerts]]`` list and the ``[sinks]`` table of a configuration file, checked."""
    alerts = [] if alerts is None else alerts
    sinks = {} if sinks is None else sinks
    if not isinstance(alerts, list):
        raise RuleError("alerts: expected [[alerts]] tables (an array of tables)")
    if not isinstance(sinks, dict):
        raise RuleError("sinks: expected [sinks.NAME] tables")
    parsed_sinks = {}
    for name, raw in sinks.items():
        if not _NAME.fullmatch(name):
            raise RuleError(f"sink {name!r}: name must be letters, digits, '-', '_' or '.'")
        parsed_sinks[name] = parse_sink(name, raw)
    rules = []
    seen = set()
    for raw in alerts:
        rule = parse_rule(raw, parsed_sinks)
        if rule.name in seen:
            raise RuleError(f"alert {rule.name!r}: two rules have this name")
        seen.add(rule.name)
        rules.append(rule)
    return AlertsConfig(tuple(rules), parsed_sinks)
