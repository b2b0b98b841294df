"""The dashboard's live feed: Server-Sent Events from the daemon's tail, one subscription
for every browser, reconnection with Last-Event-ID, and life without a daemon."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from playwright.sync_api import expect
from web_server import SseClient, WebServer, chromium_session

from memory_bank import Publisher


def status(web: WebServer) -> dict:
    return web.get("/api/status")[2]


def wait_for(condition, what: str, timeout: float = 20.0):
    """Poll a condition (each check is a real request) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def publish_event(location, message: str) -> None:
    with Publisher(location) as pub:
        pub.log_event("OCPP_BOOT", "CP_9", message)
        assert pub.flush(20)


@pytest.fixture
def served(location, start_daemon):
    """A daemon serving an empty database, and `memorybank web` over it."""
    daemon = start_daemon(location)
    web = WebServer(location)
    wait_for(lambda: status(web)["live"], "the web to follow the daemon")
    yield web, location, daemon
    assert web.stop() == 0, "".join(web.output)


def test_stream_sends_committed_records_and_replays_what_a_reconnect_missed(served):
    web, location, _ = served
    client = SseClient(web.url)
    first = client.next_event()
    assert first["event"] == "status" and json.loads(first["data"])["live"] is True
    publish_event(location, "first")
    seen_id, batch = client.next_records()
    assert [e["message"] for e in batch["events"]] == ["first"]
    assert batch["events"][0]["component"] == "CP_9" and batch["anomalies"] == []
    client.close()
    wait_for(lambda: status(web)["streams"] == 0, "the closed stream to be dropped")

    # Committed while this browser was away: replayed on reconnection.
    publish_event(location, "while away")
    wait_for(lambda: status(web)["last_event_id"] != seen_id, "the web to receive the batch")
    again = SseClient(web.url, last_event_id=seen_id)
    assert again.next_event()["event"] == "status"
    replay_id, missed = again.next_records()
    assert [e["message"] for e in missed["events"]] == ["while away"]
    assert replay_id == status(web)["last_event_id"]
    again.close()

    # An id from another server process cannot be replayed: the browser is told to reload.
    other = SseClient(web.url, last_event_id="0badf00d-3")
    assert other.next_event()["event"] == "status"
    assert other.next_event()["event"] == "reset"
    other.close()


def test_stream_filters_like_view_follow(served):
    web, location, _ = served
    client = SseClient(web.url, query="?severity=CRITICAL&component=CP_1")
    assert client.next_event()["event"] == "status"
    with Publisher(location) as pub:
        pub.log_event("OCPP_BOOT", "CP_2", "other charge point")
        pub.record_anomaly("VOLTAGE_DROP", "LOW", "minor", None, 225.0, 230.0)
        assert pub.flush(20)
    with Publisher(location) as pub:
        pub.log_event("OCPP_BOOT", "CP_1", "this charge point")
        pub.record_anomaly("VOLTAGE_DROP", "CRITICAL", "collapse", None, 0.0, 230.0)
        assert pub.flush(20)
    _, batch = client.next_records()
    if not batch["events"] or not batch["anomalies"]:  # the two may commit apart
        _, more = client.next_records()
        batch = {k: batch[k] + more[k] for k in batch}
    assert [e["message"] for e in batch["events"]] == ["this charge point"]
    assert [a["description"] for a in batch["anomalies"]] == ["collapse"]
    assert batch["anomalies"][0]["deviation"] == 230.0
    client.close()


def test_streams_with_the_same_or_other_filters_each_get_their_own_rows(served):
    """One commit, streams with different filters, two with the same: each is sent what
    its filters let through (a batch's message is made once per filter and shared)."""
    web, location, _ = served
    queries = ["", "?component=CP_1", "?component=CP_1", "?component=CP_2", "?severity=critical"]
    clients = [SseClient(web.url, query=q) for q in queries]
    for client in clients:
        assert client.next_event()["event"] == "status"
    with Publisher(location) as pub:
        pub.log_event("OCPP_BOOT", "CP_1", "one")
        pub.log_event("OCPP_BOOT", "CP_2", "two")
        pub.record_anomaly("VOLTAGE_DROP", "HIGH", "sag", None, 200.0, 230.0)
        assert pub.flush(20)
        pub.record_anomaly("VOLTAGE_DROP", "CRITICAL", "end", None, 0.0, 230.0)  # passes all
        assert pub.flush(20)
    seen = []
    for client in clients:
        events, anomalies = [], []
        while "end" not in anomalies:
            _, batch = client.next_records(within=10)
            events += [e["message"] for e in batch["events"]]
            anomalies += [a["description"] for a in batch["anomalies"]]
        seen.append((sorted(events), anomalies))
        client.close()
    assert seen == [
        (["one", "two"], ["sag", "end"]),
        (["one"], ["sag", "end"]),  # anomalies have no component: a component filter passes them
        (["one"], ["sag", "end"]),
        (["two"], ["sag", "end"]),
        (["one", "two"], ["end"]),  # severity is an anomaly's, as in `view --follow`
    ]


def test_a_burst_is_sent_capped_with_the_rest_counted(served):
    web, location, _ = served
    client = SseClient(web.url)
    assert client.next_event()["event"] == "status"
    with Publisher(location) as pub:
        for i in range(500):
            pub.log_event("CAN_RX", "CHARGER", f"reading {i}")
        assert pub.flush(20)
    shown, total = [], 0
    while total < 500:
        _, batch = client.next_records()
        assert len(batch["events"]) <= 25
        shown += [e["message"] for e in batch["events"]]
        total += len(batch["events"]) + batch["skipped"]["events"]
    assert total == 500 and shown[-1] == "reading 499"  # the newest are the ones shown
    client.close()


@pytest.fixture(scope="module")
def browser():
    yield from chromium_session()


def test_many_browsers_share_one_subscription_and_leave_cleanly(served, browser):
    web, location, _ = served
    pages = [browser.new_page() for _ in range(3)]
    for page in pages:
        page.goto(web.url)
        expect(page.locator("#live-status")).to_have_text(re.compile("^live: following"))
    assert status(web)["streams"] == 3
    marker = uuid.uuid4().hex[:8]
    publish_event(location, f"to all {marker}")
    for page in pages:
        expect(page.locator("#feed")).to_contain_text(f"to all {marker}")
    for page in pages:
        page.close()
    wait_for(lambda: status(web)["streams"] == 0, "every stream to end with its page")


def test_without_a_daemon_the_page_says_so_and_picks_one_up(location, start_daemon, browser):
    first = start_daemon(location)  # makes the database
    publish_event(location, "before")
    first.stop()
    web = WebServer(location)
    try:
        page = browser.new_page()
        page.goto(web.url)
        live = page.locator("#live-status")
        expect(live).to_have_text("live feed unavailable: no daemon serves this database")
        expect(page.locator("#total-events")).to_have_text("1")  # the database still reads
        start_daemon(location)
        expect(live).to_have_text(re.compile("^live: following"))
        marker = uuid.uuid4().hex[:8]
        publish_event(location, f"after {marker}")
        expect(page.locator("#feed")).to_contain_text(f"after {marker}")
        page.close()
    finally:
        assert web.stop() == 0, "".join(web.output)


def set_hidden(page, hidden: bool) -> None:
    """The tab hidden or shown, as the browser tells a page (headless Chromium never hides
    one itself): the visibility state changes and ``visibilitychange`` fires."""
    page.evaluate(
        """(hidden) => {
          const state = hidden ? "hidden" : "visible";
          const define = (name, value) =>
            Object.defineProperty(document, name, {configurable: true, get: () => value});
          define("visibilityState", state);
          define("hidden", hidden);
          document.dispatchEvent(new Event("visibilitychange"));
        }""",
        hidden,
    )


def test_a_hidden_tab_lets_its_stream_go_and_catches_up_when_seen(served, browser):
    web, location, _ = served
    page = browser.new_page()
    live = page.locator("#live-status")
    try:
        page.goto(web.url)
        expect(live).to_have_text(re.compile("^live: following"))
        assert status(web)["streams"] == 1
        set_hidden(page, True)
        wait_for(lambda: status(web)["streams"] == 0, "the hidden tab to close its stream")
        expect(live).to_have_text("paused while this tab is hidden")
        marker = uuid.uuid4().hex[:8]
        publish_event(location, f"while hidden {marker}")
        set_hidden(page, False)
        expect(live).to_have_text(re.compile("^live: following"))
        expect(page.locator("#feed")).to_contain_text(f"while hidden {marker}")  # reloaded
        assert status(web)["streams"] == 1
        publish_event(location, f"seen again {marker}")
        expect(page.locator("#feed")).to_contain_text(f"seen again {marker}")
    finally:
        page.close()


def test_a_slow_summary_does_not_hold_the_live_feed_back(pg_url, start_daemon):
    """The cards' summary query runs beside the tail: with it stuck (a table it counts is
    locked), committed batches still reach the streams."""
    import psycopg

    start_daemon(pg_url)
    web = WebServer(pg_url)
    locker = psycopg.connect(pg_url)
    watcher = psycopg.connect(pg_url, autocommit=True)  # sees pg_stat_activity as it is now
    try:
        wait_for(lambda: status(web)["live"], "the web to follow the daemon")
        client = SseClient(web.url)
        assert client.next_event()["event"] == "status"
        locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")  # held until rollback
        publish_event(pg_url, "first")
        assert [e["message"] for e in client.next_records(10)[1]["events"]] == ["first"]
        wait_for(
            lambda: watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'memorybank-reader' "
                "AND wait_event_type = 'Lock'"
            ).fetchone(),
            "the summary query to wait on the lock",
        )
        publish_event(pg_url, "second")
        assert [e["message"] for e in client.next_records(10)[1]["events"]] == ["second"]
        locker.rollback()
        while client.next_event()["event"] != "summary":
            pass  # the summary follows once the table is free
        client.close()
    finally:
        locker.close()
        watcher.close()
        assert web.stop() == 0, "".join(web.output)
