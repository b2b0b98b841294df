"""Alerts through the real daemon: rules from its TOML, notifications in an outbox written
with the batch, delivered to a real HTTP receiver that goes away and comes back, with the
same ids across daemon restarts."""

from __future__ import annotations

import json
import signal
import sqlite3
import tempfile
import time

import pytest
from alert_receiver import Receiver

from conftest import free_ports, query
from memory_bank import Publisher
from memory_bank.alerts.storage import ALERTS_LOCK
from memory_bank.discovery import is_url

HOOK_CONFIG = """
[[alerts]]
name = "critical-anomaly"
when = "anomaly"
severity = ["HIGH", "CRITICAL"]
group = "n"
notify = ["lab-webhook"]

[sinks.lab-webhook]
type = "webhook"
url = "{url}"
backoff_max = "0.5s"
"""


@pytest.fixture
def receiver():
    r = Receiver(free_ports(1)).start()
    yield r
    r.stop()


def _config(tmp_path, text: str):
    path = tmp_path / "memorybank.toml"
    path.write_text(text)
    return path


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _outbox(location, where: str = "true") -> list[tuple]:
    return query(location, f"SELECT id, status, attempts FROM mb_outbox WHERE {where} ORDER BY seq")


def test_every_notification_arrives_once_across_receiver_and_daemon_restarts(
    location, tmp_path, start_daemon, receiver
):
    cfg = _config(tmp_path, HOOK_CONFIG.format(url=receiver.url))
    daemon = start_daemon(location, "--config", str(cfg))
    pub = Publisher(location)
    total = 0

    def publish(count: int) -> None:
        nonlocal total
        for _ in range(count):
            total += 1
            # background load the rule ignores: metrics, and anomalies below its severity
            for k in range(20):
                pub.record_metric("current", float(k), "A")
            pub.record_anomaly("SPIKE", "LOW", "ignored", {"n": -total})
            pub.record_anomaly("OVERCURRENT", "HIGH", f"#{total}", {"n": total}, 90.0, 80.0)
        assert pub.flush(30)

    publish(40)
    receiver.wait_for(lambda b: len(b) >= 10)
    receiver.stop()  # the receiver goes away under load
    publish(40)
    # while it is away the notifications wait in the outbox, retried with backoff
    pending = {row[0] for row in _outbox(location, "status = 'pending'")}
    assert pending
    assert daemon.stop() == 0  # and the daemon restarts in the middle
    daemon = start_daemon(location, "--config", str(cfg))
    publish(40)
    receiver.start()
    bodies = receiver.wait_for(lambda b: len({x["id"] for x in b}) >= total, what=f"{total}")
    time.sleep(0.3)  # nothing more may come (a duplicate would arrive now)
    bodies = receiver.received()
    ids = [b["id"] for b in bodies]
    assert len(ids) == len(set(ids)) == total, "a notification arrived twice or not at all"
    assert pending <= set(ids), "notifications pending over the restart changed their ids"
    # in commit order: one publisher, so in the order its anomalies were recorded
    assert [b["record"]["pattern_data"]["n"] for b in bodies] == list(range(1, total + 1))
    first = bodies[0]
    assert first["rule"] == "critical-anomaly" and first["state"] == "firing"
    assert first["at"].endswith("+00:00") and first["group"] == {"n": "1"}
    record = first["record"]
    assert record["anomaly_type"] == "OVERCURRENT" and record["severity"] == "HIGH"
    assert record["deviation"] == 10.0 and isinstance(record["id"], int)
    wait_until(lambda: all(status == "delivered" for _id, status, _a in _outbox(location)))
    assert max(a for _i, _s, a in _outbox(location)) > 1, "no retry was needed?"
    pub.close()
    assert daemon.stop() == 0


RULES = """
[[alerts]]
name = "overcurrent"
when = "metric"
metric = "current"
above = 80.0
for = "2s"
notify = ["hook"]

[[alerts]]
name = "charger-silent"
when = "absence"
event_type = "HEARTBEAT"
for = "1s"
notify = ["hook"]

[sinks.hook]
type = "webhook"
url = "{url}"
"""


def test_for_state_survives_a_restart_and_resolves(db_path, tmp_path, start_daemon, receiver):
    """`for` holds across a daemon restart: the evaluation state is committed with the
    batch, so the second reading after the restart completes the first one's 2 s."""
    cfg = _config(tmp_path, RULES.format(url=receiver.url))
    daemon = start_daemon(db_path, "--config", str(cfg))
    t0 = time.time()
    with Publisher(db_path) as pub:
        pub.log_event("HEARTBEAT", "CP", "alive")
        pub.record_metric("current", 85.0, "A", timestamp=t0)
        pub.record_metric("current", 86.0, "A", timestamp=t0 + 1)
    assert daemon.stop() == 0
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Publisher(db_path) as pub:
        pub.record_metric("current", 87.0, "A", timestamp=t0 + 2.5)
        pub.record_metric("current", 88.0, "A", timestamp=t0 + 3)
        pub.record_metric("current", 20.0, "A", timestamp=t0 + 4)
        pub.record_metric("current", 90.0, "A", timestamp=t0 + 5)
    over = receiver.wait_for(
        lambda b: [x["state"] for x in b if x["rule"] == "overcurrent"] == ["firing", "resolved"]
    )
    over = [x for x in over if x["rule"] == "overcurrent"]
    assert over[0]["record"]["metric_value"] == 87.0  # fired once, at 2.5 s of holding
    assert over[1]["record"]["metric_value"] == 20.0
    # the heartbeat stops: absence fires after 1 s, and resolves when it comes back
    receiver.wait_for(lambda b: any(x["rule"] == "charger-silent" for x in b))
    with Publisher(db_path) as pub:
        pub.log_event("HEARTBEAT", "CP", "alive again")
    silent = receiver.wait_for(
        lambda b: [x["state"] for x in b if x["rule"] == "charger-silent"] == ["firing", "resolved"]
    )
    assert [x["record"]["message"] for x in silent if x["rule"] == "charger-silent"][-1] == (
        "alive again"
    )
    assert daemon.stop() == 0


def test_a_bad_rule_on_reload_is_refused_by_name_and_the_running_rules_stay(
    db_path, tmp_path, start_daemon, receiver
):
    cfg = _config(tmp_path, HOOK_CONFIG.format(url=receiver.url))
    daemon = start_daemon(db_path, "--config", str(cfg))
    cfg.write_text(
        HOOK_CONFIG.format(url=receiver.url)
        + '\n[[alerts]]\nname = "broken"\nwhen = "metric"\nmetric = "current"\n'
        'notify = ["lab-webhook"]\n'
    )
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in daemon.log)
    assert "alert 'broken'" in daemon.log and "above = or below =" in daemon.log
    with Publisher(db_path) as pub:
        pub.record_anomaly("OVERCURRENT", "CRITICAL", "still watched", {"n": 1})
    (body,) = receiver.wait_for(lambda b: len(b) == 1)
    assert body["rule"] == "critical-anomaly"
    assert daemon.stop() == 0


def test_a_bad_rule_at_start_is_refused_with_its_name(db_path, tmp_path, start_daemon):
    cfg = _config(
        tmp_path,
        '[[alerts]]\nname = "storm"\nwhen = "rate"\nanomaly_type = "X"\ncount = 5\n'
        'notify = ["nowhere"]\n',
    )
    daemon = start_daemon(db_path, "--config", str(cfg), wait=False)
    assert daemon.proc.wait(30) == 2
    assert "alert 'storm': notify names 'nowhere', but there is no [sinks.nowhere]" in daemon.log


def test_status_and_alerts_show_the_queue_the_error_and_each_notification(
    location, tmp_path, start_daemon, receiver
):
    from click.testing import CliRunner

    from memory_bank.cli import main

    down = Receiver(free_ports(1))  # never started: its port refuses
    cfg = _config(tmp_path, HOOK_CONFIG.format(url=down.url))
    daemon = start_daemon(location, "--config", str(cfg))
    with Publisher(location) as pub:
        for n in range(3):
            pub.record_anomaly("OVERCURRENT", "HIGH", f"#{n}", {"n": n})
    wait_until(lambda: _outbox(location) and _outbox(location)[0][2] >= 1)

    status = CliRunner().invoke(main, ["status", "--db", str(location)])
    assert status.exit_code == 0, status.output
    (line,) = [x for x in status.output.splitlines() if x.startswith("sink lab-webhook")]
    assert "3 pending, 0 delivered" in line and "(failing)" in line and "refused" in line
    assert "alert rules" in status.output and "1 (3 firing)" in status.output

    listed = CliRunner().invoke(main, ["alerts", "--db", str(location), "-o", "json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [r["record"]["pattern_data"]["n"] for r in rows] == [2, 1, 0]  # newest first
    assert {(r["rule"], r["state"], r["status"], r["sink"]) for r in rows} == {
        ("critical-anomaly", "firing", "pending", "lab-webhook")
    }
    assert rows[-1]["attempts"] >= 1 and "refused" in rows[-1]["last_error"]
    table = CliRunner().invoke(main, ["alerts", "--db", str(location)])
    assert "critical-anomaly" in table.output and "pending" in table.output
    firing = CliRunner().invoke(main, ["alerts", "--db", str(location), "--firing", "-o", "json"])
    assert [a["group"] for a in json.loads(firing.output)] == ["0", "1", "2"]
    viewed = CliRunner().invoke(main, ["view", "--db", str(location), "--alerts", "-o", "json"])
    assert [a["rule"] for a in json.loads(viewed.output)] == ["critical-anomaly"] * 3
    summary = CliRunner().invoke(main, ["view", "--db", str(location), "--summary"])
    assert "Alerts firing" in summary.output and "OVERCURRENT (HIGH): #2" in summary.output

    # `alerts test` sends through the rule's sinks now, without the daemon
    cfg.write_text(HOOK_CONFIG.format(url=receiver.url))
    sent = CliRunner().invoke(main, ["alerts", "test", "critical-anomaly", "--config", str(cfg)])
    assert sent.exit_code == 0, sent.output
    (body,) = receiver.wait_for(lambda b: len(b) == 1)
    assert body["test"] is True and body["rule"] == "critical-anomaly" and body["id"]
    cfg.write_text(HOOK_CONFIG.format(url=down.url))
    failed = CliRunner().invoke(main, ["alerts", "test", "critical-anomaly", "--config", str(cfg)])
    assert failed.exit_code == 1 and "FAILED" in failed.output, failed.output
    assert daemon.stop() == 0


def test_an_apprise_sink_delivers_through_its_json_target_once_it_answers(
    db_path, tmp_path, start_daemon
):
    receiver = Receiver(free_ports(1))  # not listening yet: Apprise's POST fails first
    cfg = _config(
        tmp_path,
        '[[alerts]]\nname = "hot"\nwhen = "anomaly"\nnotify = ["phone"]\n'
        f'[sinks.phone]\ntype = "apprise"\nurl = "json://127.0.0.1:{receiver.port}/hook"\n'
        'backoff_max = "0.3s"\n',
    )
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Publisher(db_path) as pub:
        pub.record_anomaly("OVERCURRENT", "CRITICAL", "92 A", {"cp_id": "CP1"}, 92.0, 80.0)
    wait_until(lambda: _outbox(db_path) and _outbox(db_path)[0][2] >= 1)
    receiver.start()
    try:
        (posted,) = receiver.wait_for(lambda b: len(b) == 1)
    finally:
        receiver.stop()
    assert posted["title"] == "[FIRING] hot"
    body = json.loads(posted["message"])
    assert body["id"] == _outbox(db_path)[0][0] and body["state"] == "firing"
    assert body["record"]["current_value"] == 92.0
    wait_until(lambda: _outbox(db_path)[0][1] == "delivered")
    assert daemon.stop() == 0


def test_the_prometheus_endpoint_shows_what_status_shows(db_path, tmp_path, start_daemon):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    port = free_ports(1)
    down = Receiver(free_ports(1))  # refuses: its sink fails and keeps its queue
    cfg = _config(
        tmp_path,
        f'[daemon]\nmetrics_listen = "127.0.0.1:{port}"\n' + HOOK_CONFIG.format(url=down.url),
    )
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Publisher(db_path) as pub:
        for n in range(50):
            pub.record_metric("current", float(n), "A")
        pub.record_anomaly("OVERCURRENT", "HIGH", "hot", {"n": 1})

    def scrape() -> dict:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        samples = {}
        for family in text_string_to_metric_families(text.decode()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def has(samples, name, labels=(), at_least=1.0):
        return samples.get((name, labels), -1) >= at_least

    sink = (("sink", "lab-webhook"),)
    wait_until(
        lambda: (
            has(s := scrape(), "memorybank_records_committed_total", at_least=51)
            and has(s, "memorybank_sink_failures_total", sink)
        )
    )
    samples = scrape()
    assert samples[("memorybank_records_received_total", ())] == 51
    assert samples[("memorybank_sink_pending", sink)] == 1
    assert samples[("memorybank_alerts_firing", ())] == 1
    assert samples[("memorybank_batch_commit_seconds_count", ())] >= 1
    assert samples[("memorybank_database_bytes", ())] > 0
    assert samples[("memorybank_store_up", ())] == 1
    assert daemon.stop() == 0


def test_notifications_pending_at_a_kill_arrive_after_the_restart_with_their_ids(
    location, tmp_path, start_daemon
):
    """SIGKILL while the receiver is away: what waited in the outbox is delivered after the
    restart, once each, with the ids it was written with, in order."""
    receiver = Receiver(free_ports(1))  # not started yet: its port refuses
    cfg = _config(tmp_path, HOOK_CONFIG.format(url=receiver.url))
    daemon = start_daemon(location, "--config", str(cfg))
    with Publisher(location) as pub:
        for n in range(5):
            pub.record_anomaly("OVERCURRENT", "HIGH", f"#{n}", {"n": n})
    wait_until(lambda: len(_outbox(location, "status = 'pending'")) == 5)
    wait_until(lambda: _outbox(location)[0][2] >= 1)  # the first was tried, and waits
    pending = [row[0] for row in _outbox(location)]
    daemon.stop(signal.SIGKILL)
    receiver.start()
    try:
        daemon = start_daemon(location, "--config", str(cfg))
        receiver.wait_for(lambda b: len(b) >= 5)
        time.sleep(0.3)  # nothing more may come (a duplicate would arrive now)
        bodies = receiver.received()
        assert [b["id"] for b in bodies] == pending, "not the ids written, or not once each"
        assert [b["group"]["n"] for b in bodies] == ["0", "1", "2", "3", "4"]
        wait_until(lambda: all(status == "delivered" for _i, status, _a in _outbox(location)))
        assert daemon.stop() == 0
    finally:
        receiver.stop()


def _fail_the_commit_of(location, marker: str) -> None:
    """Make a batch whose notification holds ``marker`` fail: at its COMMIT on PostgreSQL
    (a deferred constraint trigger), at its outbox insert on SQLite (a trigger; SQLite
    checks nothing at COMMIT). Either way the whole batch rolls back, and the writer tries
    its messages one by one, refusing the one that fails."""
    if not is_url(location):
        query(
            location,
            "CREATE TRIGGER poison BEFORE INSERT ON mb_outbox "
            f"WHEN NEW.body LIKE '%{marker}%' BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
        )
        return
    query(
        location,
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.body LIKE '%{marker}%' THEN RAISE EXCEPTION 'poisoned' "
        "USING ERRCODE = 'unique_violation'; END IF; RETURN NULL; END $$",
    )
    query(
        location,
        "CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON mb_outbox "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION poison()",
    )


def test_a_record_whose_batch_failed_to_commit_never_alerts(
    location, tmp_path, start_daemon, receiver
):
    cfg = _config(tmp_path, HOOK_CONFIG.format(url=receiver.url))
    daemon = start_daemon(location, "--config", str(cfg))
    _fail_the_commit_of(location, "poison")
    with Publisher(location) as pub:
        for n, text in enumerate(["#0", "poison", "#2"]):
            pub.record_anomaly("OVERCURRENT", "HIGH", text, {"n": n})
            assert pub.flush(10)
    receiver.wait_for(lambda b: len(b) >= 2)
    time.sleep(0.3)  # nothing more may come
    assert [b["record"]["description"] for b in receiver.received()] == ["#0", "#2"]
    assert query(location, "SELECT description FROM anomalies ORDER BY id") == [("#0",), ("#2",)]
    # the rolled-back batch left no rule state behind: its group never fired
    assert query(location, "SELECT grp FROM mb_alert_state ORDER BY grp") == [("0",), ("2",)]
    wait_until(lambda: [row[1] for row in _outbox(location)] == ["delivered", "delivered"])
    assert daemon.stop() == 0


def test_a_full_outbox_drops_the_oldest_and_says_so(db_path, tmp_path, start_daemon):
    from memory_bank.control import daemon_stats

    down = Receiver(free_ports(1))  # refuses: everything waits in the outbox
    cfg = _config(
        tmp_path,
        HOOK_CONFIG.format(url=down.url).replace('backoff_max = "0.5s"', "max_pending = 3"),
    )
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Publisher(db_path) as pub:
        for n in range(5):
            pub.record_anomaly("OVERCURRENT", "HIGH", f"#{n}", {"n": n})
            pub.flush(10)
    wait_until(lambda: daemon_stats(db_path)["alerts"]["sinks"]["lab-webhook"]["dropped"] == 2)
    sink = daemon_stats(db_path)["alerts"]["sinks"]["lab-webhook"]
    assert sink["pending"] == 3
    conn = sqlite3.connect(db_path)
    kept = conn.execute("SELECT body FROM mb_outbox WHERE status = 'pending' ORDER BY seq")
    assert [json.loads(b)["group"]["n"] for (b,) in kept] == ["2", "3", "4"]  # the newest
    conn.close()
    assert "its queue is full (max_pending 3)" in daemon.log
    assert daemon.stop() == 0


def test_an_older_postgresql_database_gains_the_alert_tables(pg_url, tmp_path, start_daemon):
    """A database of schema version 2 (before alerts) gets the alert tables from the first
    daemon of this version, and its rules run on it."""
    start_daemon(pg_url).stop()
    query(pg_url, "DROP TABLE mb_outbox, mb_alert_state, mb_stream_log, mb_stream_position")
    query(pg_url, "UPDATE mb_meta SET value = '2' WHERE key = 'schema_version'")
    receiver = Receiver(free_ports(1)).start()
    try:
        cfg = _config(tmp_path, HOOK_CONFIG.format(url=receiver.url))
        daemon = start_daemon(pg_url, "--config", str(cfg))
        assert query(pg_url, "SELECT value FROM mb_meta WHERE key = 'schema_version'") == [("3",)]
        with Publisher(pg_url) as pub:
            pub.record_anomaly("OVERCURRENT", "HIGH", "#0", {"n": 0})
        (body,) = receiver.wait_for(lambda b: len(b) == 1)
        assert body["record"]["description"] == "#0"
        assert daemon.stop() == 0
    finally:
        receiver.stop()


def test_one_daemon_runs_a_postgresql_databases_alerts_across_a_server_restart(
    pg_server, pg_url, tmp_path, start_daemon, receiver
):
    """One daemon per database runs the alerts: a second one with rules says so and stops
    (one without rules writes alongside, as before). The server restarts: the first daemon
    delivers what it commits after, once each, and holds the lock again, so a second one
    is still refused."""
    cfg = _config(tmp_path, HOOK_CONFIG.format(url=receiver.url))
    first = start_daemon(pg_url, "--config", str(cfg), "--endpoint", _short_ipc("a"))

    def second_refused() -> None:
        second = start_daemon(
            pg_url, "--config", str(cfg), "--endpoint", _short_ipc("b"), wait=False
        )
        assert second.proc.wait(60) == 2
        assert "another daemon runs the alerts of" in second.log

    second_refused()
    start_daemon(pg_url, "--endpoint", _short_ipc("c")).stop()
    pg_server.stop()
    pg_server.start()
    held = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        f"AND objid = {ALERTS_LOCK}"
    )
    n = 0
    with Publisher(pg_url, endpoint=first.endpoint) as pub:
        while query(pg_url, held) != [(1,)]:  # each notification's outcome is a transaction
            pub.record_anomaly("OVERCURRENT", "HIGH", f"#{n}", {"n": n})
            assert pub.flush(30)
            n += 1
            assert n < 60, "the lock was not taken again"
            time.sleep(0.5)
    bodies = receiver.wait_for(lambda b: len(b) >= n)
    time.sleep(0.3)  # nothing more may come
    assert sorted(int(b["group"]["n"]) for b in receiver.received()) == list(range(n))
    assert len({b["id"] for b in bodies}) == n
    second_refused()
    assert first.stop() == 0


def _short_ipc(name: str) -> str:
    return f"ipc://{tempfile.mkdtemp(prefix='mb-')}/{name}"


def _firing(location) -> list[tuple[str, str]]:
    """(rule, group) of what `memorybank alerts --firing` lists."""
    from click.testing import CliRunner

    from memory_bank.cli import main

    listed = CliRunner().invoke(main, ["alerts", "--db", str(location), "--firing", "-o", "json"])
    assert listed.exit_code == 0, listed.output
    return [(a["rule"], a["group"]) for a in json.loads(listed.output)]


def test_a_rule_renamed_on_reload_resolves_once_and_stops_firing(
    location, tmp_path, start_daemon, receiver
):
    """As Prometheus with Alertmanager: an alert whose rule is gone resolves, once, to the
    sinks it had; it is no longer listed as firing, and its state is deleted."""
    cfg = _config(tmp_path, HOOK_CONFIG.format(url=receiver.url))
    daemon = start_daemon(location, "--config", str(cfg))
    with Publisher(location) as pub:
        for n in range(2):
            pub.record_anomaly("OVERCURRENT", "HIGH", f"#{n}", {"n": n})
    receiver.wait_for(lambda b: len(b) == 2)
    assert _firing(location) == [("critical-anomaly", "0"), ("critical-anomaly", "1")]
    # renamed: to the daemon, the rule "critical-anomaly" is removed and a new one added
    renamed = HOOK_CONFIG.format(url=receiver.url).replace("critical-anomaly", "renamed")
    cfg.write_text(renamed)
    daemon.proc.send_signal(signal.SIGHUP)
    bodies = receiver.wait_for(lambda b: len(b) >= 4)
    time.sleep(0.3)  # nothing more may come
    resolved = receiver.received()[2:]
    assert sorted((b["state"], b["group"]["n"]) for b in resolved) == [
        ("resolved", "0"),
        ("resolved", "1"),
    ]
    assert len(bodies) == len(receiver.received()) == 4
    assert all(b["rule"] == "critical-anomaly" for b in resolved)
    assert "its rule was removed" in resolved[0]["summary"]
    assert resolved[0]["record"]["description"] in ("#0", "#1")
    assert _firing(location) == []
    assert query(location, "SELECT count(*) FROM mb_alert_state") == [(0,)]
    assert "alert critical-anomaly (group '0') is no longer configured" in daemon.log
    assert daemon.stop() == 0


def test_a_rule_changed_or_removed_across_restarts_keeps_no_stale_firing_state(
    db_path, tmp_path, start_daemon, receiver
):
    """At start, as on reload: a new threshold keeps the state (the next reading decides),
    a rule that now watches another metric resolves what the old one fired, and a
    configuration with no rules left (SQLite: the daemon is the file's only writer)
    clears the states."""
    rule = RULES.split("[[alerts]]")[1]  # overcurrent: current above 80 for 2s
    sink = RULES.split("[[alerts]]")[2].split("[sinks.hook]")[1]
    cfg = _config(tmp_path, "[[alerts]]" + rule + "[sinks.hook]" + sink.format(url=receiver.url))
    daemon = start_daemon(db_path, "--config", str(cfg))
    t0 = time.time()
    with Publisher(db_path) as pub:
        for i in range(3):
            pub.record_metric("current", 85.0, "A", timestamp=t0 + i * 1.5)
    receiver.wait_for(lambda b: len(b) == 1)
    assert daemon.stop() == 0

    cfg.write_text(cfg.read_text().replace("above = 80.0", "above = 84.0"))
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Publisher(db_path) as pub:
        pub.record_metric("current", 85.0, "A", timestamp=t0 + 5)  # holds under 84 too
    assert daemon.stop() == 0
    assert _firing(db_path) == [("overcurrent", "")] and len(receiver.received()) == 1

    cfg.write_text(cfg.read_text().replace('metric = "current"', 'metric = "voltage"'))
    daemon = start_daemon(db_path, "--config", str(cfg))
    (_, resolved) = receiver.wait_for(lambda b: len(b) == 2)
    assert resolved["rule"] == "overcurrent" and resolved["state"] == "resolved"
    assert resolved["summary"] == "overcurrent resolved: its rule changed"
    assert resolved["record"]["metric_value"] == 85.0  # the last reading it had
    assert _firing(db_path) == []
    with Publisher(db_path) as pub:  # the new definition fires on its own metric
        for i in range(3):
            pub.record_metric("voltage", 230.0, "V", timestamp=t0 + 6 + i * 1.5)
    receiver.wait_for(lambda b: len(b) == 3)
    assert daemon.stop() == 0

    cfg.write_text("")  # no rules, no sinks: nothing to send the resolved notification to
    daemon = start_daemon(db_path, "--config", str(cfg))
    assert _firing(db_path) == []
    assert "alert overcurrent is no longer configured; it was firing: resolved" in daemon.log
    assert daemon.stop() == 0
    time.sleep(0.3)
    assert len(receiver.received()) == 3


def test_notifications_pending_at_a_migration_arrive_from_postgresql_with_their_ids(
    db_path, pg_url, tmp_path, start_daemon, receiver
):
    """`memorybank migrate` carries the outbox and the rules' states: what was pending on
    SQLite (the receiver away) is delivered by the PostgreSQL daemon, once each, with the
    ids it was written with; what was delivered, also between two runs, is not sent
    again; firing stays firing."""
    from click.testing import CliRunner

    from memory_bank.cli import main

    def migrate(sqlite: int, copied: int) -> None:
        result = CliRunner().invoke(
            main, ["migrate", "--from", str(db_path), "--to", pg_url, "-o", "json"]
        )
        assert result.exit_code == 0, result.output
        rows = {r["table"]: r for r in json.loads(result.stdout)}
        assert (rows["mb_outbox"]["sqlite"], rows["mb_outbox"]["postgresql"]) == (sqlite, sqlite)
        assert (rows["mb_outbox"]["copied"], rows["mb_outbox"]["missing"]) == (copied, 0)
        assert rows["mb_alert_state"]["postgresql"] == sqlite

    def fire(pub, groups, pending: int) -> None:
        for n in groups:
            pub.record_anomaly("OVERCURRENT", "HIGH", f"#{n}", {"n": n})
        wait_until(lambda: len(_outbox(db_path, "status = 'pending'")) == pending)

    cfg = _config(tmp_path, HOOK_CONFIG.format(url=receiver.url))
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Publisher(db_path) as pub:
        fire(pub, range(2), 0)
        receiver.wait_for(lambda b: len(b) == 2)
        receiver.stop()
        fire(pub, range(2, 5), 3)
        migrate(5, 5)  # while the daemon serves the file: three travel pending
        receiver.start()  # and the SQLite daemon delivers them
        receiver.wait_for(lambda b: len(b) == 5)
        wait_until(lambda: {row[1] for row in _outbox(db_path)} == {"delivered"})
        receiver.stop()
        fire(pub, range(5, 7), 2)
    pending = [row[0] for row in _outbox(db_path, "status = 'pending'")]
    assert daemon.stop() == 0
    migrate(7, 5)  # two new, three now delivered
    migrate(7, 0)  # a rerun copies nothing again
    assert _firing(pg_url) == [("critical-anomaly", str(n)) for n in range(7)]

    receiver.start()
    daemon = start_daemon(pg_url, "--config", str(cfg))
    receiver.wait_for(lambda b: len(b) >= 7)
    time.sleep(0.3)  # nothing more may come (a duplicate would arrive now)
    bodies = receiver.received()
    assert [b["id"] for b in bodies[5:]] == pending, "not the ids written, or not once each"
    assert [b["group"]["n"] for b in bodies] == [str(n) for n in range(7)]
    wait_until(lambda: {row[1] for row in _outbox(pg_url)} == {"delivered"})
    assert _firing(pg_url) == [("critical-anomaly", str(n)) for n in range(7)]
    # beside a daemon that runs the target's alerts, their queue and states are its own
    beside = CliRunner().invoke(main, ["migrate", "--from", str(db_path), "--to", pg_url])
    assert beside.exit_code == 1 and "INCOMPLETE: 14 row(s)" in beside.output, beside.output
    assert "alerts: a daemon runs the alerts of" in beside.output
    assert {row[1] for row in _outbox(pg_url)} == {"delivered"}
    assert daemon.stop() == 0


def test_embedded_mode_evaluates_no_rules_and_leaves_the_outbox_to_the_daemon(
    db_path, tmp_path, start_daemon
):
    """As docs/alerts.md says: records written with embedded=True are never evaluated,
    not even by a daemon with rules started afterwards; notifications waiting in the
    outbox wait for that daemon, which delivers them."""
    from memory_bank import MemoryBank

    receiver = Receiver(free_ports(1))  # away: the first notification waits
    cfg = _config(tmp_path, HOOK_CONFIG.format(url=receiver.url))
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Publisher(db_path) as pub:
        pub.record_anomaly("OVERCURRENT", "HIGH", "by the daemon", {"n": 0})
    wait_until(lambda: len(_outbox(db_path, "status = 'pending'")) == 1)
    assert daemon.stop() == 0
    with MemoryBank(db_path, embedded=True) as memory:
        memory.record_anomaly("OVERCURRENT", "HIGH", "embedded", {"n": 1})
    assert len(_outbox(db_path)) == 1  # no rule ran on it
    receiver.start()
    try:
        daemon = start_daemon(db_path, "--config", str(cfg))
        (body,) = receiver.wait_for(lambda b: len(b) == 1)
        assert body["record"]["description"] == "by the daemon"
        time.sleep(0.3)  # the embedded record does not alert now either
        assert len(receiver.received()) == 1 and _firing(db_path) == [("critical-anomaly", "0")]
        assert daemon.stop() == 0
    finally:
        receiver.stop()
