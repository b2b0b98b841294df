"""`memorybank web` as a lab engineer uses it: a real daemon, the real server as a
subprocess, and Debian's Chromium driven by Playwright; on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from click.testing import CliRunner
from playwright.sync_api import expect
from web_server import chromium_session, served_lab

import memory_bank.web
from memory_bank import MemoryBank, Publisher
from memory_bank.store import open_reader
from memory_bank.viewer import view

NOW = time.time()  # when the lab under test was filled (set again by fill)
ANOMALY_TIMES: list[float] = []  # five anomalies in the last hour
SEVERITIES = ["LOW", "MEDIUM", "HIGH", "CRITICAL", "HIGH"]


def fill(db) -> None:
    """Two hours of a small lab up to now: current and voltage every 10 s, events every
    minute, five anomalies, a finished and a running session, a pattern seen three times."""
    global NOW, ANOMALY_TIMES
    NOW = time.time()
    ANOMALY_TIMES = [NOW - 3000 + i * 600 for i in range(5)]
    with MemoryBank(db) as memory:
        pub = memory.publisher
        for i in range(720):
            t = NOW - 7200 + i * 10
            pub.record_metric("current", 32.0 + 4 * math.sin(i / 30), "A", timestamp=t)
            pub.record_metric("voltage", 230.0 + (i % 7), "V", timestamp=t)
            if i % 6 == 0:
                pub.log_event("CAN_RX", "CHARGER", f"reading {i}", {"i": i}, timestamp=t)
                pub.log_event("OCPP_COMMAND", "CSMS", f"command {i}", timestamp=t)
        for k, (t, severity) in enumerate(zip(ANOMALY_TIMES, SEVERITIES, strict=True)):
            pub.record_anomaly(
                "CURRENT_LIMIT_FLUCTUATION",
                severity,
                f"limit jumped 0A -> 100A (cycle {k})",
                {"cycle": k},
                100.0,
                32.0,
                timestamp=t,
            )
        pub.start_session("TXN_1", timestamp=NOW - 3600)
        pub.increment_session_anomaly_count("TXN_1", timestamp=NOW - 3000)
        pub.end_session("TXN_1", timestamp=NOW - 1200)
        pub.start_session("TXN_2", timestamp=NOW - 300)
        for _ in range(3):
            pub.record_pattern("ANOMALY_CYCLE", {"sequence": ["0A", "100A"]}, 0.9)
        assert memory.flush(30)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def lab(request, tmp_path_factory):
    """A daemon serving a filled database, and `memorybank web` over it."""
    for web, db, _ in served_lab(request, tmp_path_factory, fill):
        yield web, db


@pytest.fixture(scope="module")
def browser():
    yield from chromium_session()


@pytest.fixture
def page(browser, lab):
    """A page with no script error and no request beyond the dashboard (no CDN: offline)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    elsewhere: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "request",
        lambda r: None if r.url.startswith((lab[0].url, "data:")) else elsewhere.append(r.url),
    )
    yield page
    context.close()
    assert not errors, errors
    assert not elsewhere, elsewhere


def viewer_json(db, *args) -> object:
    result = CliRunner().invoke(view, ["--db", str(db), *args, "-o", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def stored(metric: str, answer: dict, lab) -> int:
    """How many points of ``metric`` the database holds in an answer's window."""
    reader = open_reader(lab[1])
    try:
        return reader.get_metric_statistics(metric, answer["since"], answer["until"])["count"]
    finally:
        reader.close()


def chart_series(page, selector="#chart") -> list:
    """The values the chart drew for its first metric (gaps left out)."""
    return page.evaluate(
        f"document.querySelector('{selector}').chart.data[1].filter(v => v != null)"
    )


# -- the page ------------------------------------------------------------------------------
def test_page_shows_the_database_totals_and_live_status(lab, page):
    web, db = lab
    _, _, summary = web.get("/api/summary")
    assert summary["total_events"] == 240 and summary["total_anomalies"] == 5
    page.goto(web.url)
    expect(page.locator("#total-events")).to_have_text("240")
    expect(page.locator("#total-anomalies")).to_have_text("5")
    expect(page.locator("#total-sessions")).to_have_text("2")
    expect(page.locator("#active-sessions")).to_have_text("1")
    expect(page.locator("#anomalies-last-hour")).to_have_text("5")
    expect(page.locator("#by-severity .sev")).to_have_count(4)
    expect(page.locator("#by-severity")).to_contain_text("HIGH 2")
    expect(page.locator("#live-status")).to_have_text(re.compile("^live: following"))
    expect(page.locator("#sessions tbody tr")).to_have_count(2)
    expect(page.locator("#patterns tbody tr td").nth(1)).to_have_text("3")


def test_the_page_arrives_with_its_summary_cards_filled(lab, page):
    """The cards paint from the page's own response: no request waits for the scripts."""
    web, _ = lab
    _, _, html = web.get("/")
    inline = re.search(r'<script id="first-summary" type="application/json">(.+?)</script>', html)
    _, _, summary = web.get("/api/summary")
    drop_time = lambda d: {k: v for k, v in d.items() if k != "timestamp"}  # noqa: E731
    assert drop_time(json.loads(inline.group(1))) == drop_time(summary)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(urlparse(r.url).path))
    page.goto(web.url)
    expect(page.locator("#total-events")).to_have_text("240")
    expect(page.locator("#by-severity")).to_contain_text("HIGH 2")
    page.wait_for_function("document.querySelector('#chart').chart !== undefined")
    assert "/api/summary" not in asked


def test_chart_draws_the_metric_and_anomaly_markers(lab, page):
    web, _ = lab
    with page.expect_response(re.compile(r"/api/metrics/current\?")) as answer:
        page.goto(web.url)
    data = answer.value.json()
    assert parse_qs(urlparse(answer.value.url).query)["since"] == ["1h"]
    assert len(data["buckets"]) > 100
    assert sum(b["n"] for b in data["buckets"]) == stored("current", data, lab)
    page.wait_for_function("document.querySelector('#chart').chart !== undefined")
    drawn = chart_series(page)
    assert drawn == [b["avg"] for b in data["buckets"]]
    markers = page.locator("#chart .marker")
    expect(markers).to_have_count(5)
    markers.nth(2).hover()
    expect(page.locator("#tooltip")).to_be_visible()
    expect(page.locator("#tooltip")).to_contain_text("limit jumped 0A -> 100A (cycle 2)")
    expect(page.locator("#tooltip")).to_contain_text("HIGH")

    # A second metric on the same time axis, with its own unit's scale.
    with page.expect_response(re.compile(r"/api/metrics/voltage\?")):
        page.locator("#metric-picker label[data-metric=voltage]").click()
    page.wait_for_function("document.querySelector('#chart').chart.series.length === 7")
    scales = page.evaluate("document.querySelector('#chart').chart.series.map(s => s.scale)")
    assert "A" in scales and "V" in scales


def test_range_picker_and_zoom_change_what_is_queried(lab, page):
    web, _ = lab
    page.goto(web.url)
    page.wait_for_function("document.querySelector('#chart').chart !== undefined")
    with page.expect_response(re.compile(r"/api/metrics/current\?")) as answer:
        page.locator("#ranges button[data-range='10m']").click()
    query = parse_qs(urlparse(answer.value.url).query)
    assert query["since"] == ["10m"]
    ten_minutes = answer.value.json()
    assert sum(b["n"] for b in ten_minutes["buckets"]) == stored("current", ten_minutes, lab)
    page.wait_for_function(
        f"document.querySelector('#chart').dataset.since == '{ten_minutes['since']}'"
    )
    assert len(chart_series(page)) == len(ten_minutes["buckets"])
    expect(page.locator("#chart .marker")).to_have_count(0)  # none in the last 10 minutes

    with page.expect_response(re.compile(r"/api/metrics/current\?")) as answer:
        page.locator("#ranges button[data-range='24h']").click()
    assert parse_qs(urlparse(answer.value.url).query)["since"] == ["24h"]
    assert sum(b["n"] for b in answer.value.json()["buckets"]) == 720
    expect(page.locator("#ranges button.active")).to_have_text("24h")

    # Drag across the middle of the chart: the selection becomes the queried window.
    page.wait_for_function("document.querySelector('#chart').dataset.since > 0")
    box = page.locator("#chart .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    with page.expect_response(re.compile(r"/api/metrics/current\?")) as answer:
        page.mouse.move(box["x"] + box["width"] * 0.90, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.95, y, steps=5)
        page.mouse.up()
    zoomed = answer.value.json()
    assert NOW - 86400 < zoomed["since"] < zoomed["until"] < NOW + 60
    assert zoomed["until"] - zoomed["since"] < 0.1 * 86400
    expect(page.locator("#ranges button.active")).to_have_text("custom")
    expect(page.locator("#custom-range")).to_be_visible()

    # The custom form: an explicit window, in local time.
    page.locator("#custom-since").fill(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(NOW - 1800))
    )
    page.locator("#custom-until").fill(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(NOW - 600))
    )
    with page.expect_response(re.compile(r"/api/metrics/current\?")) as answer:
        page.locator("#custom-range button[type=submit]").click()
    custom = answer.value.json()
    assert abs(custom["since"] - (NOW - 1800)) < 1.5 and abs(custom["until"] - (NOW - 600)) < 1.5


def test_a_record_published_now_appears_in_the_live_feed(lab, page):
    web, db = lab
    page.goto(web.url)
    expect(page.locator("#live-status")).to_have_text(re.compile("^live: following"))
    expect(page.locator("#feed")).to_contain_text("command 714")  # the backlog
    marker = uuid.uuid4().hex[:8]
    with Publisher(db) as pub:
        pub.log_event("OCPP_BOOT", "CP_7", f"boot {marker}")
        pub.record_anomaly("VOLTAGE_DROP", "CRITICAL", f"drop {marker}", None, 180.0, 230.0)
        assert pub.flush(20)
    feed = page.locator("#feed")
    expect(feed).to_contain_text(f"boot {marker}")
    expect(feed).to_contain_text(f"drop {marker}")
    expect(page.locator("#total-events")).to_have_text("241")  # the cards follow

    # The feed's filters: this component only, then anomalies only.
    page.locator("#feed-component").select_option("CP_7")
    expect(page.locator("#feed li")).to_have_count(1)
    expect(page.locator("#feed li")).to_contain_text(f"boot {marker}")
    page.locator("#feed-component").select_option("")
    page.locator("#feed-severity").select_option("CRITICAL")
    expect(page.locator("#feed li")).to_have_count(2)  # with the lab's own CRITICAL one
    expect(page.locator("#feed li").first).to_contain_text(f"drop {marker}")
    expect(page.locator("#feed li").last).to_contain_text("(cycle 3)")
    page.locator("#feed-severity").select_option("")

    # Paused, new rows wait (counted); resumed, they show.
    page.locator("#feed-pause").click()
    with Publisher(db) as pub:
        pub.log_event("OCPP_BOOT", "CP_7", f"held {marker}")
        assert pub.flush(20)
    expect(page.locator("#feed-pause")).to_have_text("resume (1 new)")
    expect(feed).not_to_contain_text(f"held {marker}")
    page.locator("#feed-pause").click()
    expect(feed).to_contain_text(f"held {marker}")


def test_a_session_opens_its_own_view(lab, page):
    web, _ = lab
    page.goto(web.url)
    page.locator("#sessions a", has_text="TXN_1").click()
    expect(page).to_have_url(re.compile("#/sessions/TXN_1$"))
    expect(page.locator("#session-title")).to_have_text("Session TXN_1")
    expect(page.locator("#session-cards")).to_contain_text("COMPLETED")
    expect(page.locator("#session-cards")).to_contain_text("40.0 min")
    # The anomalies of its window (NOW-3600 .. NOW-1200, its end included): cycles 0 to 3.
    expect(page.locator("#session-anomalies tbody tr")).to_have_count(4)
    expect(page.locator("#session-anomalies")).to_contain_text("(cycle 0)")
    page.wait_for_function("document.querySelector('#session-chart').chart !== undefined")
    _, _, detail = web.get("/api/sessions/TXN_1")
    rows = detail["statistics"]["current"]["count"] + detail["statistics"]["voltage"]["count"]
    assert page.locator("#session-chart").get_attribute("data-rows") == str(rows)
    expect(page.locator("#session-chart .marker")).to_have_count(4)
    stats = page.locator("#session-stats tbody tr", has_text="current")
    expect(stats.locator("td").nth(1)).to_have_text("241")
    page.go_back()
    expect(page.locator("#dashboard-view")).to_be_visible()


# -- the JSON API ---------------------------------------------------------------------------
def test_api_lists_match_the_viewers_json(lab):
    web, db = lab
    for path, args in (
        ("/api/events?limit=7", ["--events", "7"]),
        (
            "/api/events?limit=5&component=CSMS&since=1h",
            ["--events", "5", "--component", "CSMS", "--since", "1h"],
        ),
        ("/api/events?type=CAN_RX&limit=3", ["--events", "3", "--type", "CAN_RX"]),
        ("/api/anomalies?severity=high", ["--anomalies", "100", "--severity", "HIGH"]),
        ("/api/sessions?limit=10", ["--sessions", "10"]),
        ("/api/patterns", ["--patterns"]),
        ("/api/alerts", ["--alerts"]),  # none here: no daemon ran rules on this database
    ):
        status, head, body = web.get(path)
        assert status == 200 and head["content-type"].startswith("application/json")
        assert body == viewer_json(db, *args), path
    _, _, summary = web.get("/api/summary")
    expected = viewer_json(db, "--summary")
    assert {k: v for k, v in summary.items() if k != "timestamp"} == {
        k: v for k, v in expected.items() if k != "timestamp"
    }
    status, _, session = web.get("/api/sessions/TXN_1")
    assert status == 200 and session["session"]["session_id"] == "TXN_1"
    assert session["statistics"]["current"]["count"] == 241
    assert [a["description"][-9:] for a in session["anomalies"]] == [
        "(cycle 3)",
        "(cycle 2)",
        "(cycle 1)",
        "(cycle 0)",
    ]
    _, _, names = web.get("/api/metrics")
    assert names == ["current", "voltage"]


def window_anomalies(lab, since: float, until: float) -> list[dict]:
    reader = open_reader(lab[1])
    try:
        return reader.get_anomalies(since=since, until=until, limit=None)
    finally:
        reader.close()


SEVERITY_RANK = {"CRITICAL": 0, "HIGH": 1, "MEDIUM": 2, "LOW": 3}


def test_api_metric_is_bucketed_with_the_windows_anomalies(lab):
    web, _ = lab
    status, _, week = web.get("/api/metrics/current?since=7d&points=50")
    assert status == 200 and week["unit"] == "A"
    assert 0 < len(week["buckets"]) <= 50
    assert sum(b["n"] for b in week["buckets"]) == 720  # every point, in 50 buckets or fewer
    assert min(b["min"] for b in week["buckets"]) == pytest.approx(28.0, abs=0.01)
    # Markers: 50 points / 6 pixels = 8 slices; each slice holding anomalies sends its most
    # severe one and how many it holds (every one here: fewer than the count's limit).
    stored_anomalies = window_anomalies(lab, week["since"], week["until"])
    slices = week["anomaly_slices"]
    assert len(week["anomalies"]) == len(slices) > 0
    assert sum(s["count"] for s in slices) == len(stored_anomalies)
    for shown, piece in zip(week["anomalies"], slices, strict=True):
        assert pytest.approx(piece["until"] - piece["since"]) == (week["until"] - week["since"]) / 8
        members = [a for a in stored_anomalies if piece["since"] <= a["timestamp"] < piece["until"]]
        assert len(members) == piece["count"]
        assert shown in members
        assert SEVERITY_RANK[shown["severity"]] == min(
            SEVERITY_RANK[a["severity"]] for a in members
        )
    # Finer slices (a marker per 6 of 2,000 points): the lab's five, each alone, newest first.
    _, _, hour = web.get("/api/metrics/current?since=1h&points=2000")
    lab_anomalies = [
        a for a in hour["anomalies"] if a["anomaly_type"] == "CURRENT_LIMIT_FLUCTUATION"
    ]
    assert [a["timestamp"] for a in lab_anomalies] == pytest.approx(ANOMALY_TIMES[::-1], abs=1e-5)
    assert {s["count"] for s in hour["anomaly_slices"]} == {1}
    assert {b["n"] for b in hour["buckets"]} == {1}  # finer than the data: a point a bucket
    assert len(hour["buckets"]) == stored("current", hour, lab)
    _, _, none = web.get("/api/metrics/no_such_metric?since=1h")
    assert none["buckets"] == [] and none["unit"] is None


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/api/events?since=not-a-time", 400, "is not a time"),
        ("/api/events?limit=0", 400, "limit: expected a whole number from 1"),
        ("/api/anomalies?severity=SEVERE", 400, "severity: expected one of"),
        ("/api/metrics/current?points=many", 400, "points: expected a whole number"),
        ("/api/metrics/current?points=100000", 400, "points: expected a whole number from 1"),
        ("/api/metrics/current?since=1h&until=2h", 400, "until must be later than since"),
        ("/api/alerts?state=resolved", 400, "state: expected one of firing, all"),
        ("/api/alerts?state=all&limit=-1", 400, "limit: expected a whole number from 1"),
        ("/api/sessions/TXN_404", 404, "no session 'TXN_404'"),
        ("/api/events?session=TXN_404", 404, "no session 'TXN_404'"),
        ("/api/nothing-here", 404, "Not Found"),
        ("/static/nothing-here.js", 404, "no file '/static/nothing-here.js'"),
        ("/static/../app.py", 404, "no file"),
    ],
)
def test_api_errors_are_json_with_a_4xx(lab, path, status, message):
    web, _ = lab
    got, head, body = web.get(path)
    assert got == status and head["content-type"].startswith("application/json")
    assert message in body["error"]


def test_the_page_files_are_the_packaged_ones_and_revalidate(lab):
    """Scripts and styles are served as the package holds them, with their type and an
    ETag; a browser revalidating one it holds gets 304 and no body."""
    web, _ = lab
    static = Path(memory_bank.web.__file__).with_name("static")
    for name, kind in (("app.js", "text/javascript"), ("vendor/uplot/uPlot.min.css", "text/css")):
        status, head, body = web.get(f"/static/{name}")
        assert status == 200 and head["content-type"].startswith(kind)
        assert body == (static / name).read_text(encoding="utf-8")
        assert web.get(f"/static/{name}", {"If-None-Match": head["etag"]})[:1] == (304,)
