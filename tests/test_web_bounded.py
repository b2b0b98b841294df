"""The dashboard on a busy lab: each call reads a bounded number of rows, and says what it
left out. A week whose newest anomalies are a thousand-strong burst still shows its older
ones; a session whose first seconds hold tens of thousands of points is summarized over
its whole minutes (SQLite's rollup) and says so. On SQLite and on PostgreSQL."""

from __future__ import annotations

import math
import re
import time

import pytest
from playwright.sync_api import expect
from web_server import chromium_session, served_lab

from memory_bank import MemoryBank
from memory_bank.store import open_reader

BURST = 1200  # anomalies in one burst: more than the 1,000 newest the chart once sent
DENSE = 40_000  # current points in a session's first 50 s (800 a second)


class Busy:
    """What fill() wrote, for the tests to check against."""

    now: float
    old_anomaly: float
    session_start: float
    session_end: float


def fill(db) -> Busy:
    busy = Busy()
    busy.now = now = time.time()
    busy.old_anomaly = now - 6 * 86400
    # A session starting 10 s into a minute, its first 50 s dense, then a point every 10 s.
    busy.session_start = start = math.floor((now - 3000) / 60) * 60 + 10
    busy.session_end = start + 50 + 600
    with MemoryBank(db) as memory:
        pub = memory.publisher
        pub.record_anomaly(
            "VOLTAGE_DROP", "MEDIUM", "the old one", None, 200.0, 230.0, timestamp=busy.old_anomaly
        )
        pub.start_session("TXN_DENSE", timestamp=start)
        for i in range(DENSE):
            pub.record_metric("current", 32.0 + i % 5, "A", timestamp=start + i * 50 / DENSE)
        for k in range(1, 61):
            pub.record_metric("current", 30.0, "A", timestamp=start + 50 + k * 10 - 5)
        # The burst, inside the session: LOW, but for one CRITICAL fifth from the newest.
        for i in range(BURST):
            severity = "CRITICAL" if i == BURST - 5 else "LOW"
            t = start + 100 + i * 0.25
            pub.record_anomaly(
                "CURRENT_SPIKE", severity, f"spike {i}", None, 50.0, 32.0, timestamp=t
            )
        pub.end_session("TXN_DENSE", timestamp=busy.session_end)
        assert memory.flush(120)
    return busy


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def busy_lab(request, tmp_path_factory):
    for web, db, busy in served_lab(request, tmp_path_factory, fill):
        yield web, db, busy, request.param


@pytest.fixture(scope="module")
def browser():
    yield from chromium_session()


def test_a_week_chart_marks_every_part_that_has_anomalies(busy_lab):
    web, _, busy, _ = busy_lab
    _, _, week = web.get("/api/metrics/current?since=7d&points=1200")
    shown = {a["description"]: a for a in week["anomalies"]}
    assert "the old one" in shown  # not crowded out by the burst of 1,200 newer ones
    # The burst: its slices counted up to the limit, shown by the most severe of their newest.
    assert "spike 1195" in shown and shown["spike 1195"]["severity"] == "CRITICAL"
    burst = [s for s, a in zip(week["anomaly_slices"], week["anomalies"], strict=True)
             if a["anomaly_type"] == "CURRENT_SPIKE"]  # fmt: skip
    assert burst and all(s["count"] == week["anomaly_count_up_to"] == 20 for s in burst)
    assert len(week["anomalies"]) <= 1 + 2  # the old one, the burst's one or two slices


def test_the_page_marks_them_with_counts(busy_lab, browser):
    web, _, _, _ = busy_lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(web.url)
        with page.expect_response(re.compile(r"/api/metrics/current\?since=7d")):
            page.locator("#ranges button[data-range='7d']").click()
        page.wait_for_function("document.querySelector('#chart .marker') !== null")
        burst = page.locator("#chart .marker.CRITICAL")
        expect(burst).to_have_count(1)
        burst.hover()
        tooltip = page.locator("#tooltip")
        expect(tooltip).to_contain_text("spike 1195")
        expect(tooltip).to_contain_text(re.compile(r"and \d+\+ more anomalies here"))
        page.locator("#chart .marker.MEDIUM").hover()
        expect(tooltip).to_contain_text("the old one")
    finally:
        page.close()


def test_a_dense_session_is_summarized_in_bounded_time(busy_lab):
    web, _, busy, store = busy_lab
    _, _, detail = web.get("/api/sessions/TXN_DENSE")
    current = detail["statistics"]["current"]
    covered = detail["statistics_window"]
    assert covered["until"] == detail["window"]["until"]  # its last seconds are sparse: read
    if store == "sqlite":
        # Its first 50 s hold 40,000 points (more than a call may scan at that end): the
        # figures cover its whole minutes from the next one on, and say so.
        assert covered["since"] == busy.session_start - 10 + 60
        assert current["count"] == 60 and current["min"] == current["max"] == 30.0
    else:
        # No per-minute rollup in PostgreSQL: every row of the window is read.
        assert covered["since"] == detail["window"]["since"]
        assert current["count"] == DENSE + 60
    assert detail["anomaly_count"] == BURST
    assert [a["description"] for a in detail["anomalies"][:2]] == ["spike 1199", "spike 1198"]
    assert len(detail["anomalies"]) == 100


def test_the_session_view_says_what_it_left_out(busy_lab, browser):
    web, _, _, store = busy_lab
    page = browser.new_page()
    try:
        page.goto(web.url + "#/sessions/TXN_DENSE")
        expect(page.locator("#session-anomalies tbody tr")).to_have_count(100)
        expect(page.locator("#session-anomalies-note")).to_have_text("the newest 100 of 1,200")
        note = page.locator("#session-stats-note")
        if store == "sqlite":
            expect(note).to_contain_text("over the whole minutes")
        else:
            expect(note).to_have_text("")
    finally:
        page.close()


def test_several_metrics_in_one_pass_match_one_at_a_time(busy_lab):
    _, db, busy, _ = busy_lab
    reader = open_reader(db)
    try:
        since, until = busy.session_start + 25, busy.session_end
        together, *covered = reader.metric_statistics(["current", "voltage"], since, until)
        assert covered == [since, until]  # no budget: every row read
        for name in ("current", "voltage"):
            assert together[name] == pytest.approx(reader.get_metric_statistics(name, since, until))
    finally:
        reader.close()
