"""The MQTT stream and sink against a real Mosquitto stopped and started under load: every
committed record arrives (at least once, in commit order per publisher), and so does
every notification (by id)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import threading
import time

import pytest
from mqtt_broker import Broker, Subscriber, require_mosquitto

from conftest import free_ports, query
from memory_bank import Publisher, wire
from memory_bank.alerts.records import as_record
from memory_bank.control import daemon_stats

CONFIG = """
[[alerts]]
name = "hot"
when = "anomaly"
group = "n"
notify = ["broker"]

[sinks.broker]
type = "mqtt"
url = "{url}"
topic = "memorybank"
stream = ["events", "metrics"]
backoff_max = "0.3s"
timeout = "0.5s"
"""


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def broker(tmp_path):
    b = Broker(require_mosquitto(), tmp_path, free_ports(1)).start()
    yield b
    b.stop()


def _committed_ids(location) -> dict[str, list[int]]:
    return {
        t: [r[0] for r in query(location, f"SELECT id FROM {t} ORDER BY id")]
        for t in ("events", "metrics", "anomalies")
    }


class Load:
    """One publisher thread sending events and metrics (and, with ``anomalies``, an
    anomaly each 100 rounds) until the block ends; then it flushes."""

    def __init__(self, db_path, anomalies: bool = False):
        self.db_path, self.anomalies = db_path, anomalies
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with Publisher(self.db_path) as pub:
            i = 0
            while not self.stopping.is_set():
                pub.log_event("CAN_RX", "CP", f"frame {i}", {"i": i})
                pub.record_metric("current", float(i % 90), "A", {"cp": "CP1"})
                if self.anomalies and i % 100 == 0:
                    pub.record_anomaly("OVERCURRENT", "HIGH", "hot", {"n": i})
                    pub.flush(10)
                i += 1
                time.sleep(0.002)
            pub.flush(30)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopping.set()
        self.thread.join(60)


def stream_figures(db_path) -> dict:
    return daemon_stats(db_path)["alerts"]["streams"]["broker"]


def test_stream_and_alerts_survive_a_broker_restart_under_load(
    db_path, tmp_path, start_daemon, broker
):
    subscriber = Subscriber(broker)
    cfg = tmp_path / "memorybank.toml"
    # Room in memory for 100 records: the rest of the outage is read back from the database.
    # The stream in the daemon (the stream's process is the default, tested below).
    cfg.write_text(
        CONFIG.format(url=broker.url) + "stream_max_pending = 100\nstream_process = false\n"
    )
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Load(db_path, anomalies=True):
        wait_until(lambda: stream_figures(db_path)["published"] >= 300)
        broker.stop()  # the broker goes away under load...
        wait_until(lambda: stream_figures(db_path)["last_error"] is not None)
        wait_until(lambda: sum(stream_figures(db_path)[k] for k in ("pending", "dropped")) >= 300)
        broker.start()  # ...and comes back (its persistent subscriber's queue kept)
        wait_until(lambda: stream_figures(db_path)["last_error"] is None)
        time.sleep(0.3)  # and the load goes on for a while
    committed = _committed_ids(db_path)
    want = {("events", i) for i in committed["events"]} | {
        ("metrics", i) for i in committed["metrics"]
    }
    assert len(committed["anomalies"]) >= 3

    def arrived():
        got = {}
        for topic, payload in subscriber.received():
            parts = topic.split("/")
            got.setdefault(parts[1], []).append(json.loads(payload))
        return got

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = arrived()
        seen = {(t, r["id"]) for t in ("events", "metrics") for r in got.get(t, [])}
        alerts = {r["id"] for r in got.get("alerts", [])}
        if seen >= want and len(alerts) == len(committed["anomalies"]):
            break
        time.sleep(0.05)
    assert seen >= want, f"{len(want - seen)} committed record(s) never streamed"
    assert len(alerts) == len(committed["anomalies"]), "a notification never arrived"
    for table in ("events", "metrics"):
        ids = [r["id"] for r in got[table]]
        first = list(dict.fromkeys(ids))  # at least once: resends come after their first
        assert first == sorted(first), f"{table} out of commit order"
    record = got["metrics"][0]
    assert record["metric_name"] == "current" and record["metadata"] == {"cp": "CP1"}
    topics = {t for t, _p in subscriber.received()}
    assert {"memorybank/events/CAN_RX", "memorybank/metrics/current"} <= topics
    assert "memorybank/alerts/hot" in topics
    subscriber.close()
    assert daemon.stop() == 0


def _streamed(subscriber) -> list[tuple[str, int]]:
    """(table, id) of every streamed record received, in arrival order (a message of
    ``stream_batch`` holds an array of them)."""
    out = []
    for topic, payload in subscriber.received():
        table = topic.split("/")[1]
        if table in ("events", "metrics"):
            records = json.loads(payload)
            for record in records if isinstance(records, list) else [records]:
                assert topic == f"memorybank/{table}/{record.get('event_type', 'current')}"
                out.append((table, record["id"]))
    return out


def test_a_batch_of_several_types_goes_to_each_types_topic_in_commit_order(
    db_path, tmp_path, start_daemon, broker
):
    """Records of several types interleaved in one batch: each arrives once, on its own
    type's topic, in commit order there (the stream splits a batch by type). One sink
    sends a message per record, in the daemon, the other (``stream_batch``) arrays, in a
    process of its own (the default)."""
    subscriber = Subscriber(broker, "#")
    cfg = tmp_path / "memorybank.toml"
    cfg.write_text(
        CONFIG.format(url=broker.url)
        + "stream_process = false\n"
        + f'\n[sinks.batched]\ntype = "mqtt"\nurl = "{broker.url}"\ntopic = "batched"\n'
        'stream = ["events", "metrics"]\nstream_batch = true\n'
    )
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Publisher(db_path) as pub:
        for i in range(600):
            pub.log_event(("CAN_RX", "OCPP/Boot", "CAN_TX")[i % 3], "CP", "m", {"i": i})
            pub.record_metric(("current", "voltage")[i % 2], float(i), "V")
        assert pub.flush(30)
    committed = _committed_ids(db_path)
    want = sorted(
        [("events", i) for i in committed["events"]]
        + [("metrics", i) for i in committed["metrics"]]
    )
    assert len(want) == 1200

    def arrived(prefix: str) -> dict[str, list[dict]]:
        by_topic: dict[str, list[dict]] = {}
        for topic, payload in subscriber.received():
            if topic.startswith(f"{prefix}/") and "/alerts/" not in topic:
                records = json.loads(payload)
                by_topic.setdefault(topic, []).extend(
                    records if isinstance(records, list) else [records]
                )
        return by_topic

    for prefix in ("memorybank", "batched"):
        wait_until(lambda p=prefix: sum(map(len, arrived(p).values())) >= len(want))
        by_topic = arrived(prefix)
        assert sorted(by_topic) == [
            f"{prefix}/events/CAN_RX",
            f"{prefix}/events/CAN_TX",
            f"{prefix}/events/OCPP_Boot",
            f"{prefix}/metrics/current",
            f"{prefix}/metrics/voltage",
        ]
        for topic, records in by_topic.items():
            table, kind = topic.split("/")[1:]
            column = "event_type" if table == "events" else "metric_name"
            assert {r[column].replace("/", "_") for r in records} == {kind}
            ids = [r["id"] for r in records]
            assert ids == sorted(set(ids)), f"{topic}: out of commit order or twice"
        got = sorted((t.split("/")[1], r["id"]) for t, rs in by_topic.items() for r in rs)
        assert got == want
    subscriber.close()
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("store", "options"),
    [
        ("sqlite", "stream_process = false\n"),
        ("sqlite", "stream_batch = true\nstream_process = false\n"),
        ("sqlite", ""),
        ("postgresql", "stream_process = false\n"),
        ("postgresql", "stream_batch = true\n"),
    ],
    ids=["per-record", "stream_batch", "process", "postgresql", "postgresql-process-batch"],
)
def test_the_stream_resumes_where_the_broker_acknowledged_after_daemon_kills(
    store, options, tmp_path, start_daemon, broker, request
):
    """SIGKILL with records committed that the broker never acknowledged (the broker was
    away), then again while that backlog is being sent: after each restart the stream
    resumes from the broker's last acknowledgement, so every committed record arrives, and
    what arrived before the first kill is not sent again. Per record, and with records
    sent as one array per topic and batch (stream_batch), the stream in the daemon or in a
    process of its own (stream_process, which the kill takes down with the daemon); on
    SQLite and PostgreSQL."""
    db_path = tmp_path / "ev.db" if store == "sqlite" else request.getfixturevalue("pg_url")
    subscriber = Subscriber(broker)
    cfg = tmp_path / "memorybank.toml"
    cfg.write_text(CONFIG.format(url=broker.url) + options)
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Load(db_path):
        wait_until(lambda: len(_streamed(subscriber)) >= 200)
        acknowledged = set(_streamed(subscriber))  # long before the kill
        wait_until(lambda: len(_streamed(subscriber)) >= len(acknowledged) + 200)
        broker.stop()
        wait_until(lambda: stream_figures(db_path)["pending"] >= 300)
        daemon.stop(signal.SIGKILL)  # committed, never acknowledged: only the database has them
        broker.start()
        daemon = start_daemon(db_path, "--config", str(cfg))
        arrived = len(_streamed(subscriber))
        wait_until(lambda: len(_streamed(subscriber)) >= arrived + 50)
        daemon.stop(signal.SIGKILL)  # in the middle of sending the backlog
        daemon = start_daemon(db_path, "--config", str(cfg))
        time.sleep(0.3)  # and the load goes on for a while
    committed = _committed_ids(db_path)
    want = {("events", i) for i in committed["events"]} | {
        ("metrics", i) for i in committed["metrics"]
    }
    wait_until(lambda: set(_streamed(subscriber)) >= want, timeout=60)
    got = _streamed(subscriber)
    assert set(got) >= want
    counts = dict.fromkeys(acknowledged, 0)
    for key in got:
        if key in counts:
            counts[key] += 1
    assert [key for key, n in counts.items() if n > 1] == [], "resent from before the position"
    for table in ("events", "metrics"):
        first = list(dict.fromkeys(i for t, i in got if t == table))
        assert first == sorted(first), f"{table} out of commit order"
    subscriber.close()
    assert daemon.stop() == 0
    # the log keeps no batch the stream has passed
    assert query(db_path, "SELECT count(*) FROM mb_stream_log") == [(0,)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read()  # a zombie is not running
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_stream_process_is_started_again_after_a_kill_and_ends_with_the_daemon(
    db_path, tmp_path, start_daemon, broker
):
    """stream_process: the stream's own process killed (SIGKILL) under load is started
    again by the daemon from the broker's last acknowledgement, so every committed record
    arrives, in commit order; `memorybank status` and the Prometheus endpoint say so; a
    SIGTERM of its own (systemd's stop signals every process of the service) and a SIGHUP
    that leaves the sink as it was leave it running; the daemon's SIGTERM stops it, and a
    daemon killed takes it down too (end of file on its pipe)."""
    import urllib.request

    from click.testing import CliRunner

    from memory_bank.cli import main

    subscriber = Subscriber(broker)
    port = free_ports(1)
    cfg = tmp_path / "memorybank.toml"
    cfg.write_text(
        f'[daemon]\nmetrics_listen = "127.0.0.1:{port}"\n'
        + CONFIG.format(url=broker.url)
        + "stream_process = true\n"
    )
    daemon = start_daemon(db_path, "--config", str(cfg))
    with Load(db_path, anomalies=True):
        wait_until(lambda: len(_streamed(subscriber)) >= 200)
        first = stream_figures(db_path)["process"]["pid"]
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: stream_figures(db_path)["process"]["restarts"] == 1)
        arrived = len(_streamed(subscriber))
        wait_until(lambda: len(_streamed(subscriber)) >= arrived + 200)  # the new one streams
        second = stream_figures(db_path)["process"]["pid"]
        assert second != first and _alive(second)
        os.kill(second, signal.SIGTERM)  # for the daemon (systemd signals every process)
        daemon.proc.send_signal(signal.SIGHUP)  # the same sink: the same process
        time.sleep(0.3)
    committed = _committed_ids(db_path)
    want = {("events", i) for i in committed["events"]} | {
        ("metrics", i) for i in committed["metrics"]
    }
    wait_until(lambda: set(_streamed(subscriber)) >= want)
    got = _streamed(subscriber)
    for table in ("events", "metrics"):
        first_seen = list(dict.fromkeys(i for t, i in got if t == table))
        assert first_seen == sorted(first_seen), f"{table} out of commit order"
    wait_until(lambda: stream_figures(db_path)["pending"] == 0)
    figures = stream_figures(db_path)
    assert figures["process"]["pid"] == second and figures["published"] >= len(want)
    # what the daemon had handed the killed process through its pipe was read back
    assert figures["read_back"] > 0
    assert "reload" in daemon.log and "its process ended" in daemon.log
    status = CliRunner().invoke(main, ["status", "--db", str(db_path)])
    (line,) = [x for x in status.output.splitlines() if x.startswith("stream broker")]
    assert f"in process {second}, restarted 1 time(s)" in line and "0 pending" in line

    def scraped() -> bytes:  # a snapshot the daemon refreshes each second
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()

    def settled(metrics: bytes) -> bool:  # in one snapshot: it may be a second old
        return (
            b'memorybank_stream_pending{sink="broker"} 0.0' in metrics
            and b'memorybank_stream_process_restarts_total{sink="broker"} 1.0' in metrics
        )

    wait_until(lambda: settled(scraped()))
    assert daemon.stop() == 0
    assert not _alive(second)
    daemon = start_daemon(db_path, "--config", str(cfg))  # and after a SIGKILL of the daemon
    third = stream_figures(db_path)["process"]["pid"]
    daemon.stop(signal.SIGKILL)
    wait_until(lambda: not _alive(third), timeout=10)
    subscriber.close()


def test_the_stream_position_moves_with_each_acknowledgement_within_a_window(tmp_path, broker):
    """A window holds up to 2,000 records (a restart's backlog comes in whole windows): the
    position the daemon writes moves as the broker acknowledges each message, so a daemon
    killed in the middle of a window resends only what follows (the kills test with a
    stream process once failed on this: its first window held the ~800 records committed
    while the process started, and a kill resent what had arrived)."""
    import sqlite3

    from memory_bank.alerts import stream_log
    from memory_bank.alerts.mqtt import MqttStream
    from memory_bank.alerts.rules import Sink
    from memory_bank.alerts.storage import SqliteReaders

    db = tmp_path / "log.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(stream_log.DDL)
    sink = Sink(name="b", type="mqtt", url=broker.url, stream=("metrics",), timeout=5.0)
    stream = MqttStream(sink, SqliteReaders(db), (1, 0))
    stream.put(1, {"metrics": [(i, 1.5e9, "current", 1.0, "A", None) for i in range(1, 2001)]})
    seen = set()
    stream.start()
    try:
        deadline = time.monotonic() + 30
        while stream.position != (2, 0):
            assert time.monotonic() < deadline, "the window was never acknowledged"
            seen.add(stream.position)
            time.sleep(0.0005)
    finally:
        stream.stop()
    within = sorted(done for seq, done in seen if seq == 1 and 0 < done < 2000)
    assert len(within) >= 2, f"the position moved only per window: {sorted(seen)}"


def _metrics_db(path):
    """A SQLite database with the store's tables and the stream's log, and a function that
    commits a batch of metrics and logs it, as the writer does (returns its rows)."""
    import sqlite3

    from memory_bank.alerts import stream_log
    from memory_bank.store.schema import migrate

    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn)
    conn.executescript(stream_log.DDL)

    def commit(first: int, n: int) -> list[tuple]:
        rows = [
            (i, 1.5e9 + i, "current", float(i), "A", f'{{"i": {i}}}')
            for i in range(first, first + n)
        ]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO metrics (id, timestamp, metric_name, metric_value, unit, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        stream_log.append(conn, {"metrics": rows}, {"metrics"})
        conn.execute("COMMIT")
        return rows

    return conn, commit


def _stream_process(path, broker):
    """A subscriber, a database of metrics (``_metrics_db``) and a stream process of it
    (``stream_batch``), ready."""
    from memory_bank.alerts import stream_process
    from memory_bank.alerts.rules import Sink

    subscriber = Subscriber(broker)
    conn, commit = _metrics_db(path)
    sink = Sink(name="b", type="mqtt", url=broker.url, stream=("metrics",), stream_batch=True)
    stream = stream_process.StreamProcess(sink, str(path), (1, 0)).start()
    wait_until(lambda: stream.figures()["process"]["ready"])
    return subscriber, conn, commit, stream


def test_a_stream_process_streams_the_rows_its_pipe_brings_and_reads_back_the_rest(
    tmp_path, broker, monkeypatch
):
    """The daemon's side hands the stream's process each committed batch's rows through its
    stdin; a batch it does not hold for it (the process more than PIPE_HOLD behind) goes
    as a note, and the process reads that one back from mb_stream_log: every record
    arrives once, in commit order, and only the note's batch was read back."""
    from memory_bank.alerts import stream_process

    subscriber, conn, commit, stream = _stream_process(tmp_path / "ev.db", broker)
    try:
        stream.put(1, {"metrics": commit(1, 100)})
        monkeypatch.setattr(stream_process, "PIPE_HOLD", 0)
        stream.put(2, {"metrics": commit(101, 100)})  # a note: read back
        monkeypatch.undo()
        stream.put(3, {"metrics": commit(201, 100)})
        wait_until(lambda: stream.position == (4, 0))
        assert [i for _t, i in _streamed(subscriber)] == list(range(1, 301))
        figures = stream.figures()
        assert figures["published"] == 300 and figures["pending"] == 0
        # The note's 100 at least; not all 300 (the others came through the pipe; a batch
        # committed just as the idle process looked at the database is read back too).
        assert 100 <= figures["read_back"] < 300
    finally:
        stream.stop()
        subscriber.close()
        conn.close()


def _wakes(pid: int, thread: int | None = None) -> int:
    """How many times the threads of process ``pid`` (or the one ``thread``) went to sleep
    and woke (Linux)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task") if thread is None else [thread]:
        with open(f"/proc/{pid}/task/{task}/status") as status:
            total += sum(
                int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt")
            )
    return total


def test_a_stream_process_reports_as_it_moves_and_sleeps_when_idle(tmp_path, broker):
    """The process reports its figures and position when they move, from the threads that
    moved them (each batch's figures, the position at each acknowledgement, the last one
    once the stream is through), and when nothing moves it sleeps: no thread of it wakes
    every few ms to look (a thread looking every 10 ms woke it 100 times a second, idle
    or not). Its pipe holds a whole batch's frame, and the daemon's side writes each frame
    as it comes, with no thread woken to do it while the process keeps up."""
    subscriber, conn, commit, stream = _stream_process(tmp_path / "idle.db", broker)
    try:
        feeder = _wakes(os.getpid(), stream._feeder.native_id)
        for seq in range(1, 21):
            stream.put(seq, {"metrics": commit(100 * seq - 99, 100)})
            wait_until(lambda seq=seq: stream.position == (seq + 1, 0))
            figures = stream.figures()
            assert figures["published"] == 100 * seq and figures["pending"] == 0
        assert [i for _t, i in _streamed(subscriber)] == list(range(1, 2001))
        # The frames went into the pipe from put: the feeding thread, there for a process
        # that falls behind, did not wake for each (it did, 20 times and more).
        assert _wakes(os.getpid(), stream._feeder.native_id) - feeder < 5
        # A frame of a full batch (2,000 records) fits in the pipe whole, so it goes in one
        # write and is read in one (through Linux's 64 KiB default, several wakes each).
        import fcntl

        full = stream._encode([0, {"metrics": commit(2001, 2000)}])
        held = fcntl.fcntl(stream._proc.stdin.fileno(), getattr(fcntl, "F_GETPIPE_SZ", 1032))
        assert held >= len(full) > 64 << 10
        pid = stream.figures()["process"]["pid"]
        time.sleep(0.5)  # its connection settled
        before = _wakes(pid)
        time.sleep(2.0)
        woke = _wakes(pid) - before
        # Idle, its threads wait a second at a time (paho's loop, the stream's look at the
        # database): a few wakes in 2 s, where a 10 ms timer made 200.
        assert woke < 40, f"an idle stream process woke {woke} times in 2 s"
    finally:
        stream.stop()
        subscriber.close()
        conn.close()


def test_a_stream_process_reports_a_failure_as_it_backs_off(tmp_path):
    """A broker that refuses the connection: the process says so (``last_error``, what
    waits) as soon as it fails, not after the backoff that follows (1 s the first time,
    doubling up to ``backoff_max``)."""
    from memory_bank.alerts import stream_process
    from memory_bank.alerts.rules import Sink

    conn, commit = _metrics_db(tmp_path / "away.db")
    port = free_ports(1)  # nothing listens there
    url = f"mqtt://127.0.0.1:{port}"
    sink = Sink(name="b", type="mqtt", url=url, stream=("metrics",), stream_batch=True)
    stream = stream_process.StreamProcess(sink, str(tmp_path / "away.db"), (1, 0)).start()
    try:
        wait_until(lambda: stream.figures()["process"]["ready"])
        stream.put(1, {"metrics": commit(1, 10)})
        wait_until(lambda: stream.figures()["last_error"] is not None, timeout=0.8)
        figures = stream.figures()
        assert figures["failures"] == 1 and figures["pending"] == 10, figures
        assert "cannot connect" in figures["last_error"]
    finally:
        stream.stop()
        conn.close()


def test_the_pipe_hands_the_process_each_row_as_it_was_committed(tmp_path):
    """The frame the daemon writes to the stream's process carries the batch's rows exactly
    (ints and floats at their edges, text of every length msgpack frames differently,
    None), read as the process reads it; a row msgpack cannot carry (an int past 64 bits)
    makes its batch a note, read back from the database, never an error on the writer's
    thread."""
    import msgpack

    from memory_bank.alerts import stream_process
    from memory_bank.alerts.rules import Sink

    sink = Sink(name="b", type="mqtt", url="mqtt://127.0.0.1:9", stream=("events", "metrics"))
    stream = stream_process.StreamProcess(sink, str(tmp_path / "ev.db"), (1, 0))  # not started
    metrics = [
        (2**63 - 1, 1795647500.05, "current", 32.0, "A", '{"cp": "CP1"}'),
        (-(2**63), 5e-324, "tiny", 1e-07, None, None),
        (3, 1.5e9, "big", 1e22, "\u00b0C", "[1, {}]"),
        (4, -0.0, "neg", -1.7976931348623157e308, "", "not json {"),
        (5, 1.5e9, "\u26a1" * 40, float("inf"), "x" * 300, "y" * 70_000),
    ]
    events = [(6, 1.5e9, "CAN_RX", "can0", 'line\n"two"', "{}")]
    stream.put(7, {"events": events, "metrics": metrics, "anomalies": [(8,) * 8]})
    stream.put(9, {"metrics": [(10, 1.5e9, "huge", 2**70, None, None)]})
    first, second = stream._frames
    header, _, body = first.partition(b"\n")
    seq, count, size = map(int, header.split())
    assert (seq, count, size) == (7, 6, len(body))
    committed, tables = msgpack.unpackb(body)  # as the process's main() reads it
    assert isinstance(committed, str)
    assert tables == {"events": list(map(list, events)), "metrics": list(map(list, metrics))}
    assert second == b"9 1\n"  # a note: the process reads batch 9 back


def test_the_stream_goes_on_past_a_seq_no_batch_took(tmp_path, broker):
    """PostgreSQL's seq skips a value when a batch rolls back after taking it: the stream,
    waiting for that seq, finds no batch logged before the next one it holds and goes on
    from there (it stalled there once, looking for the missing batch for ever)."""
    from memory_bank.alerts.mqtt import MqttStream
    from memory_bank.alerts.rules import Sink
    from memory_bank.alerts.storage import SqliteReaders

    subscriber = Subscriber(broker)
    conn, commit = _metrics_db(tmp_path / "ev.db")
    sink = Sink(name="b", type="mqtt", url=broker.url, stream=("metrics",), timeout=5.0)
    stream = MqttStream(sink, SqliteReaders(tmp_path / "ev.db"), (1, 0)).start()
    try:
        stream.put(1, {"metrics": commit(1, 10)})
        conn.execute("UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = 'mb_stream_log'")
        stream.put(3, {"metrics": commit(11, 10)})  # seq 2 was never logged
        wait_until(lambda: stream.position == (4, 0), timeout=10)
        assert [i for _t, i in _streamed(subscriber)] == list(range(1, 21))
        assert stream.read_back == 0
    finally:
        stream.stop()
        subscriber.close()
        conn.close()


# Rows at the edges of what the stream converts, in the wire's layout: floats Python writes
# with an exponent or in full (the payload may write them otherwise: the same number), ints
# as large as msgpack carries, ints where floats could be, non-ASCII and control
# characters, JSON columns that parse (with their own spaces, or numbers only the standard
# library reads) and ones that do not, among them "[1" then "2]" of one type (joined by a
# comma they would parse as one array), "" and a value with text after it.
EDGE_ROWS = {
    "metrics": [
        (1, 1795647500.05, "current", 32.0, "A", '{"cp": "CP1"}'),
        (2, 1795647500, "temp \u00b0C", 3, None, None),
        (3, 1.5e9, 'q"uote\\', 1e-07, "\u00e9", "not json {"),
        (4, 1.5e9, "big", 1e22, None, '{"n": 123456789012345678901234567890}'),
        (5, 1.5e9, "tiny", 5e-324, None, '{"x": 1e400}'),
        (6, 1.5e9, "max", 1.7976931348623157e308, None, "[1"),
        (7, 1.5e9, "int", 2**63 - 1, None, "2]"),
        (8, 1.5e9, "neg", -(2**63), "", '  {"a": [1, 2.50, 1E3, -0.0]}\n'),
        (9, 1.5e9, "sum", 0.1 + 0.2, "A", "null"),
        (10, 1.5e9, "zero", -0.0, "A", '"\\u00e9\\ud83d\\ude00"'),
        (11, 1.5e9, "e16", 1e16, "A", "[]"),
        (12, 1.5e9, "uint64", 2**64 - 1, "A", "1e-7"),
    ],
    "events": [
        (20, 1795647500.25, "OCPP", "CP/1", 'line\n"two"\u2028\x00\x1f', '[1, {"a": null}]'),
        (21, 1795647500.0, "CAN_RX", "can0", None, '"text"'),
        (22, 1.5e9, "CAN_RX", "can0", "m", ""),
        (23, 1.5e9, "OCPP", "\U0001f600", "m", '{"a": 1} and more'),
        # One type's texts, so that a stream_batch message holds these two alone.
        (24, 1.5e9, "SPLIT", "can0", "m", "[1"),
        (25, 1.5e9, "SPLIT", "can0", "m", "2]"),
        (26, 1.5e9, "DEEP", "can0", "m", "[" * 2000 + "]" * 2000),  # too deep to check
    ],
    "anomalies": [
        (30, 1795647500.5, "OVERCURRENT", "HIGH", "92 A", "{}", 92.0, 80),
        (31, 1795647500.5, "GAP", "LOW", None, None, None, 80.0),
        (32, 1.5e9, "DRIFT", "LOW", "d", '{"k": "v"}', 3, 1),
        (33, 1.5e9, "DRIFT", "LOW", "d", "{", 0.1, 0.3),
    ],
}
INSERT = {
    table: f"INSERT INTO {table} ({', '.join(columns)}, created_at) "
    f"VALUES ({', '.join('?' * (len(columns) + 1))})"
    for table, columns in wire.ROW_COLUMNS.items()
}


@pytest.mark.parametrize("stream_batch", [True, False], ids=["stream_batch", "per-record"])
def test_every_streamed_record_is_the_record_the_viewer_shows(
    tmp_path, broker, monkeypatch, stream_batch
):
    """Every record a stream process sends, handed through its pipe or read back from the
    database, parses to exactly ``as_record``'s dict for it (what the viewer's JSON and a
    notification's ``record`` show): the same keys in the same order, the same values of
    the same types (a float stays a float, -0.0 stays -0.0), the JSON column as its value
    when it parses and as a string when it does not, whatever the rows beside it."""
    from memory_bank.alerts import stream_log, stream_process
    from memory_bank.alerts.rules import Sink
    from memory_bank.store.schema import migrate

    conn = sqlite3.connect(tmp_path / "edge.db", isolation_level=None)
    migrate(conn)
    conn.executescript(stream_log.DDL)
    subscriber = Subscriber(broker)
    sink = Sink(
        name="b",
        type="mqtt",
        url=broker.url,
        stream=("events", "anomalies", "metrics"),
        stream_batch=stream_batch,
    )
    stream = stream_process.StreamProcess(sink, str(tmp_path / "edge.db"), (1, 0)).start()
    # The second batch: the same rows (those SQLite holds) committed as batch 2, read back.
    stored_at = "2026-11-26 01:02:03"
    fits = {
        t: [(r[0] + 100, *r[1:]) for r in rows if r[3] != 2**64 - 1]
        for t, rows in EDGE_ROWS.items()
    }
    try:
        wait_until(lambda: stream.figures()["process"]["ready"])
        stream.put(1, EDGE_ROWS)  # through the pipe
        wait_until(lambda: stream.position == (2, 0))
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('mb_stream_log', 1)")
        conn.execute("BEGIN")
        for table, rows in fits.items():
            conn.executemany(INSERT[table], [(*row, stored_at) for row in rows])
        assert stream_log.append(conn, fits, set(fits)) == 2
        conn.execute("COMMIT")
        monkeypatch.setattr(stream_process, "PIPE_HOLD", 0)
        stream.put(2, fits)  # a note: read back
        wait_until(lambda: stream.position == (3, 0))
        assert stream.figures()["read_back"] == sum(map(len, fits.values()))
        stored = {
            t: conn.execute(f"SELECT {', '.join(wire.ROW_COLUMNS[t])} FROM {t}").fetchall()
            for t in fits
        }
    finally:
        stream.stop()
        subscriber.close()
        conn.close()
    received = {}
    for topic, payload in subscriber.received():
        table = topic.split("/")[1]
        records = json.loads(payload)
        assert isinstance(records, list) is stream_batch
        for record in records if stream_batch else [records]:
            received[table, record["id"]] = record
    expected = {}
    for table, rows in EDGE_ROWS.items():
        for row in rows:  # created_at: when the daemon's side handed it over
            committed = received[table, row[0]]["created_at"]
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", committed)
            expected[table, row[0]] = as_record(table, row, committed)
    for table, rows in stored.items():
        for row in rows:
            expected[table, row[0]] = as_record(table, row, stored_at)
    assert received.keys() == expected.keys()
    for key, record in received.items():  # json.dumps: key order, 1.0 against 1, -0.0
        assert json.dumps(record) == json.dumps(expected[key]), key


def test_without_msgspec_the_stream_writes_the_same_records(monkeypatch):
    """Where msgspec is not installed (PyPy), the standard library writes the payloads:
    the same records, in both forms."""
    from memory_bank.alerts import records

    with_msgspec = {
        t: (
            records.as_json_array(t, rows, "2026-11-26 01:00:00"),
            records.as_json_each(t, rows, "x"),
        )
        for t, rows in EDGE_ROWS.items()
    }
    monkeypatch.setattr(records, "_kit", lambda: None)
    for table, rows in EDGE_ROWS.items():
        array = records.as_json_array(table, rows, "2026-11-26 01:00:00")
        each = records.as_json_each(table, rows, "x")
        assert json.loads(array) == json.loads(with_msgspec[table][0])
        assert list(map(json.loads, each)) == list(map(json.loads, with_msgspec[table][1]))
        assert json.dumps(json.loads(array)) == json.dumps(
            [as_record(table, row, "2026-11-26 01:00:00") for row in rows]
        )
    monkeypatch.undo()  # and with msgspec, a text it cannot write (a lone surrogate)
    row = (1, 1.5e9, "E", "\ud800", None, '{"a": "\\ud800"}')
    expected = as_record("events", row, "x")
    assert json.loads(records.as_json_array("events", [row], "x")) == [expected]
    assert list(map(json.loads, records.as_json_each("events", [row], "x"))) == [expected]
