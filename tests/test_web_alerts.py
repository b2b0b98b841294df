"""The dashboard's alerts: a real daemon with `[[alerts]]` rules in its TOML, a real HTTP
receiver as their sink, `memorybank web` and Chromium; notifications on /api/stream as
they commit, the page's "Firing alerts" panel, and /api/alerts, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import time

import pytest
from alert_receiver import Receiver
from click.testing import CliRunner
from playwright.sync_api import expect
from web_server import SseClient, WebServer, chromium_session

from conftest import free_ports
from memory_bank import Publisher
from memory_bank.cli import main

RULES = """
[[alerts]]
name = "overcurrent"
when = "metric"
metric = "current"
above = 80.0
notify = ["hook"]

[[alerts]]
name = "critical-anomaly"
when = "anomaly"
severity = ["CRITICAL"]
group = "cp_id"
notify = ["hook", "second-hook"]

[sinks.hook]
type = "webhook"
url = "{url}"

[sinks.second-hook]
type = "webhook"
url = "{url}"
"""


@pytest.fixture(scope="module")
def browser():
    yield from chromium_session()


def publish(location, act) -> None:
    with Publisher(location) as pub:
        act(pub)
        assert pub.flush(20)


def cli_json(*args: str) -> list:
    result = CliRunner().invoke(main, [*args, "-o", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def delivered(web: WebServer, count: int) -> list:
    """/api/alerts?state=all once it lists ``count`` notifications, each delivered."""
    deadline = time.monotonic() + 20
    while True:
        rows = web.get("/api/alerts?state=all&limit=10")[2]
        if len(rows) == count and all(r["status"] == "delivered" for r in rows):
            return rows
        assert time.monotonic() < deadline, f"not all delivered: {rows}"
        time.sleep(0.05)


def test_alerts_reach_the_stream_the_panel_and_the_api_as_they_fire_and_resolve(
    location, tmp_path, start_daemon, browser
):
    receiver = Receiver(free_ports(1)).start()
    config = tmp_path / "memorybank.toml"
    config.write_text(RULES.format(url=receiver.url))
    daemon = start_daemon(location, "--config", str(config))
    web = WebServer(location)
    page = browser.new_page()
    try:
        everything = SseClient(web.url)
        away = SseClient(web.url)  # leaves before the resolve, and comes back for it
        critical = SseClient(web.url, query="?severity=CRITICAL")
        page.goto(web.url)
        expect(page.locator("#live-status")).to_have_text(re.compile("^live: following"))
        panel = page.locator("#alerts tbody")
        none = page.locator("#alerts-none")
        expect(none).to_have_text("no firing alerts")
        expect(none).to_be_visible()
        expect(panel).to_be_hidden()
        assert web.get("/api/alerts")[2] == []

        # A metric rule fires on a reading published now: on the stream, then on the page.
        publish(location, lambda pub: pub.record_metric("current", 95.0, "A"))
        _, fired = everything.next_of("alert", within=10)
        assert (fired["rule"], fired["state"], fired["severity"]) == ("overcurrent", "firing", None)
        assert fired["record"]["metric_value"] == 95.0 and fired["table"] == "metrics"
        assert fired == receiver.wait_for(lambda b: b)[0] | {"severity": None}  # the webhook's
        row = panel.locator("tr[data-rule=overcurrent]")
        expect(row).to_contain_text("current = 95 A")
        expect(none).to_be_hidden()

        # An anomaly rule, per charge point: CRITICAL, so the severity-filtered stream has it
        # as its first alert (the metric alert, which has no severity, was not sent to it).
        publish(
            location,
            lambda pub: pub.record_anomaly(
                "OVERCURRENT", "CRITICAL", "102 A", {"cp_id": "CP1"}, 102.0, 80.0
            ),
        )
        _, first = critical.next_of("alert", within=10)
        assert (first["rule"], first["severity"]) == ("critical-anomaly", "CRITICAL")
        assert first["group"] == {"cp_id": "CP1"}
        assert everything.next_of("alert", within=10)[1] == first
        assert away.next_of("alert", within=10)[1] == fired
        seen_id, also = away.next_of("alert", within=10)
        assert also == first
        expect(panel.locator("tr")).to_have_count(2)
        expect(panel.locator("tr").first).to_contain_text("critical-anomaly")  # most severe first
        expect(panel.locator("tr").first).to_contain_text("CP1")
        expect(panel.locator("tr").first).to_contain_text("OVERCURRENT: 102 A")

        # /api/alerts gives what `memorybank alerts` gives: firing now, and every notification.
        firing = web.get("/api/alerts?state=firing")[2]
        assert firing == cli_json("alerts", "--db", str(location), "--firing")
        assert [(a["rule"], a["group"], a["severity"]) for a in firing] == [
            ("critical-anomaly", "CP1", "CRITICAL"),
            ("overcurrent", "", None),
        ]
        assert web.get("/api/alerts?rule=overcurrent")[2] == firing[1:]
        everyone = delivered(web, 3)  # the rows no longer change under the comparison
        assert everyone == cli_json("alerts", "--db", str(location), "-n", "10")
        assert [(n["rule"], n["state"], n["sink"]) for n in everyone] == [
            ("critical-anomaly", "firing", "second-hook"),
            ("critical-anomaly", "firing", "hook"),
            ("overcurrent", "firing", "hook"),
        ]
        assert web.get("/api/alerts?state=all&limit=1")[2] == everyone[:1]

        # Resolved: the stream sends it next (the anomaly's notification, for two sinks, was
        # one event); the page drops the alert from its panel without a reload; a stream
        # that was away gets it on its reconnect (Last-Event-ID).
        away.close()
        publish(location, lambda pub: pub.record_metric("current", 10.0, "A"))
        _, resolved = everything.next_of("alert", within=10)
        assert (resolved["rule"], resolved["state"]) == ("overcurrent", "resolved")
        everything.close()
        expect(panel.locator("tr[data-rule=overcurrent]")).to_have_count(0)
        expect(panel.locator("tr")).to_have_count(1)
        back = SseClient(web.url, last_event_id=seen_id)
        assert back.next_of("alert", within=10)[1] == resolved
        back.close()
        critical.close()
        assert [a["rule"] for a in web.get("/api/alerts")[2]] == ["critical-anomaly"]

        # No daemon: the page still shows what fires, read from the database.
        assert daemon.stop() == 0
        page.reload()
        expect(page.locator("#live-status")).to_have_text(
            "live feed unavailable: no daemon serves this database"
        )
        expect(panel.locator("tr")).to_have_count(1)
        expect(panel.locator("tr").first).to_contain_text("critical-anomaly")
    finally:
        page.close()
        receiver.stop()
        assert web.stop() == 0, "".join(web.output)


def test_stream_filters_keep_the_alerts_whose_record_has_the_value():
    """`type`, `component` and `severity` on /api/stream apply to a notification through
    the record that caused it; one without that field is left out (Alertmanager's way)."""
    from memory_bank.web.live import StreamFilter

    anomaly = {
        "table": "anomalies",
        "severity": "CRITICAL",
        "record": {"anomaly_type": "OVERCURRENT", "severity": "CRITICAL"},
    }
    event = {
        "table": "events",
        "severity": None,
        "record": {"event_type": "BOOT", "component": "CP_1"},
    }
    metric = {"table": "metrics", "severity": None, "record": {"metric_name": "current"}}
    absent = {"table": "events", "severity": None, "record": None}  # fired before any record
    every = [anomaly, event, metric, absent]

    def kept(**wanted) -> list:
        return [a for a in every if StreamFilter(**wanted).admits(a)]

    assert kept() == every
    assert kept(severity="CRITICAL") == [anomaly]
    assert kept(type="OVERCURRENT") == [anomaly]
    assert kept(type="BOOT") == [event] and kept(type="current") == [metric]
    assert kept(component="CP_1") == [event] and kept(component="CP_2") == []
