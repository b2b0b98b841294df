"""The PostgreSQL store against a real server: several daemons, an outage, migrate, retention."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from memory_bank import MemoryBank, Publisher
from memory_bank.store.schema import SEED_TABLES

PUBLISH = r"""
import json, sys, time
from memory_bank import Publisher
url, endpoint, n, rate = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), float(sys.argv[4])
pub = Publisher(url, endpoint=endpoint, close_timeout=120)
ids, t0 = [], time.monotonic()
for i in range(n):
    ids.append(pub.log_event("E", "pub", str(i), {"i": i}))
    if i % 3 == 0:
        ids.append(pub.record_metric("current", float(i), "A"))
    if rate and i % 50 == 0:
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
ok = pub.flush(180)
pub.close()
print(json.dumps({"ok": ok, "ids": ids, "publisher": pub.publisher_id, "dropped": pub.dropped}))
"""


VIEWER = os.path.join(os.path.dirname(sys.executable), "memory-viewer")


def _publishers(url: str, endpoints: list[str | None], n: int, rate: float = 0.0):
    return [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISH, url, endpoint or "", str(n), str(rate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for endpoint in endpoints
    ]


def _results(procs) -> list[dict]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout))
    return out


def _stored_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [
            r[0] for r in conn.execute("SELECT id FROM events UNION ALL SELECT id FROM metrics")
        ]


def _retention(store, cutoffs: dict) -> dict:
    """Drive a store's retention steps as the writer does; returns rows deleted per table."""
    deleted: dict[str, int] = {}
    for step in store.retention_steps(cutoffs):
        if step is None:  # its work runs on the maintenance connection
            time.sleep(0.01)
            continue
        table, rows = step
        deleted[table] = deleted.get(table, 0) + rows
    return deleted


def _short_ipc(name: str) -> str:
    return f"ipc://{tempfile.mkdtemp(prefix='mb-')}/{name}"


def test_two_daemons_one_database_every_record_once(pg_url, start_daemon):
    """Two daemons, each on its own endpoint, four publishers split between them."""
    endpoints = [_short_ipc("a"), _short_ipc("b")]
    daemons = [start_daemon(pg_url, "--endpoint", ep) for ep in endpoints]
    results = _results(_publishers(pg_url, endpoints * 2, 6000))
    returned = [i for r in results for i in r["ids"]]
    assert all(r["ok"] and r["dropped"] == 0 for r in results)
    assert len({r["publisher"] for r in results}) == 4
    assert len(set(returned)) == len(returned) == 4 * 8000
    stored = _stored_ids(pg_url)
    assert len(stored) == len(set(stored))
    assert sorted(stored) == sorted(returned)
    with MemoryBank(pg_url, endpoint=endpoints[0]) as memory:
        assert memory.get_dashboard_summary()["total_events"] == 4 * 6000
    for daemon in daemons:
        figures = json.loads(
            subprocess.run(
                [sys.executable, "-m", "memory_bank", "status", "--json", "--db", pg_url]
                + ["--endpoint", daemon.endpoint],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert figures["committed_records"] == 2 * 8000
        assert figures["data_endpoint"] == daemon.endpoint
    for daemon in daemons:
        assert daemon.stop() == 0


def test_postgresql_down_for_20_seconds_loses_nothing(tmp_path, start_daemon):
    """The server stops under load and comes back 20 s later: every record lands once."""
    from pg_server import PgServer

    server = PgServer()
    try:
        url = server.create_database("outage")
        daemon = start_daemon(url)
        procs = _publishers(url, [None, None], 6000, rate=200.0)  # ~30 s of load each
        time.sleep(4)
        server.stop()
        down_at = time.monotonic()
        status = None
        while time.monotonic() - down_at < 15:
            status = json.loads(
                subprocess.run(
                    [sys.executable, "-m", "memory_bank", "status", "--json", "--db", url],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            if status["store_error"]:
                break
            time.sleep(0.5)
        assert status["store_error"], "status never reported the server gone"
        time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))
        server.start()
        results = _results(procs)
        returned = [i for r in results for i in r["ids"]]
        assert all(r["ok"] and r["dropped"] == 0 for r in results)
        stored = _stored_ids(url)
        assert len(stored) == len(set(stored)) == len(returned) == 2 * 8000
        assert sorted(stored) == sorted(returned)
        assert "cannot commit to postgresql://" in daemon.log
        assert "accepts writes again" in daemon.log
        assert daemon.stop() == 0
    finally:
        server.close()


def _seed_database(path, events: int) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        SEED_TABLES.replace("id INTEGER PRIMARY KEY,", "id INTEGER PRIMARY KEY AUTOINCREMENT,")
    )
    now = time.time()
    conn.executemany(
        "INSERT INTO events (timestamp, event_type, component, message, data) "
        "VALUES (?, 'E', 'C', ?, ?)",
        [(now - (i % 1000) * 600, str(i), json.dumps({"i": i})) for i in range(events)],
    )
    conn.executemany(
        "INSERT INTO metrics (timestamp, metric_name, metric_value, unit) "
        "VALUES (?, 'current', ?, 'A')",
        [(now - i, float(i)) for i in range(events // 4)],
    )
    conn.execute(
        "INSERT INTO anomalies (timestamp, anomaly_type, severity, description, pattern_data) "
        "VALUES (?, 'X', 'HIGH', 'd', 'not json')",
        (now,),
    )
    conn.execute(
        "INSERT INTO sessions (session_id, start_time, end_time, status) "
        "VALUES ('S', ?, ?, 'COMPLETED')",
        (now - 60, now),
    )
    conn.execute(
        "INSERT INTO patterns (pattern_type, pattern_data, frequency, last_seen, confidence) "
        "VALUES ('P', ?, 3, ?, 0.5)",
        (json.dumps({"b": 1, "a": 2}), now),
    )
    conn.commit()
    conn.close()


def _migrate_report(stdout: str) -> dict[str, list[int]]:
    """migrate's table: per table [sqlite, postgresql, copied, missing]."""
    return {
        fields[0]: [int(n) for n in fields[1:]]
        for fields in (line.split() for line in stdout.splitlines())
        if len(fields) == 5 and fields[1].isdigit()
    }


def test_migrate_counts_equal_and_a_killed_copy_resumes(tmp_path, pg_url):
    source = tmp_path / "seed.db"
    _seed_database(source, 120_000)
    cmd = [sys.executable, "-m", "memory_bank", "migrate", "--from", str(source), "--to", pg_url]
    first = subprocess.Popen([*cmd, "--batch-rows", "500"], stderr=subprocess.DEVNULL)
    copied = 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        while copied < 5000:
            assert first.poll() is None, "the copy finished before it could be interrupted"
            time.sleep(0.05)
            try:
                copied = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            except psycopg.errors.UndefinedTable:
                continue
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    report = _migrate_report(second.stdout)
    assert report["events"][:2] == [120_000, 120_000]
    assert report["metrics"][:2] == [30_000, 30_000]
    for table in ("anomalies", "sessions", "patterns"):
        assert report[table][:2] == [1, 1]
    assert all(counts[3] == 0 for counts in report.values())
    assert "complete: every row of" in second.stdout
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(DISTINCT id) FROM events").fetchone()[0] == 120_000
        assert conn.execute("SELECT pattern_data->>'a' FROM patterns").fetchone()[0] == "2"
        assert conn.execute("SELECT pattern_data FROM anomalies").fetchone()[0] == "not json"
    # New writes after the copy get ids that collide with none of the copied ones.
    with MemoryBank(pg_url, embedded=True) as memory:
        new_id = memory.log_event("AFTER", "migrate")
        memory.start_session("S2")
        memory.record_pattern("P", {"a": 2, "b": 1})
        assert memory.get_events(event_type="AFTER")[0]["id"] == new_id
        assert [p["frequency"] for p in memory.get_patterns()] == [4]
        summary = memory.get_dashboard_summary()
        assert (summary["total_events"], summary["total_anomalies"]) == (120_001, 1)
        assert summary["anomalies_by_severity"] == {"HIGH": 1}
    assert new_id > 120_000


def test_retention_drops_whole_days_and_tables_read_from_psql(pg_url, start_daemon):
    daemon = start_daemon(pg_url)
    pub = Publisher(pg_url)
    now = time.time()
    for days_ago in (10, 9, 0):
        for i in range(5):
            pub.log_event("OLD" if days_ago else "NEW", "c", str(i), {"k": i},
                          timestamp=now - days_ago * 86400 - i)  # fmt: skip
            pub.record_metric("current", float(i), "A", timestamp=now - days_ago * 86400 - i)
    assert pub.flush(30)
    pub.close()
    with psycopg.connect(pg_url) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM events WHERE data->>'k' = '3' AND timestamp < now()"
            ).fetchone()[0]
            == 3
        )
        partitions_before = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass"
        ).fetchone()[0]
    run = subprocess.run(
        [sys.executable, "-m", "memory_bank", "maintenance", "--db", pg_url, "--json", "retention"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    deleted = json.loads(run.stdout)["deleted"]
    assert deleted["events"] == 10 and deleted["metrics"] == 10
    with psycopg.connect(pg_url) as conn:
        kinds = {r[0] for r in conn.execute("SELECT event_type FROM events")}
        partitions_after = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass"
        ).fetchone()[0]
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'events'"
            ).fetchall()
        )
    assert kinds == {"NEW"}
    assert partitions_after <= partitions_before - 2  # the two old days are gone, not emptied
    assert types["timestamp"] == "timestamp with time zone" and types["data"] == "jsonb"
    vacuum = subprocess.run(
        [sys.executable, "-m", "memory_bank", "maintenance", "--db", pg_url, "vacuum"],
        capture_output=True,
        text=True,
    )
    assert vacuum.returncode == 0, vacuum.stderr
    assert daemon.stop() == 0


def test_viewer_and_status_take_a_url(pg_url, start_daemon):
    start_daemon(pg_url)
    with MemoryBank(pg_url) as memory:
        memory.log_event("OCPP_BOOT", "CSMS", "booted")
        memory.record_anomaly("SPIKE", "HIGH", "a spike")
        memory.flush()
    env = {**os.environ, "COLUMNS": "160"}
    summary = subprocess.run(
        [VIEWER, "--db", pg_url, "--summary"], capture_output=True, text=True, env=env
    )
    assert summary.returncode == 0, summary.stderr
    assert "OCPP_BOOT" in summary.stdout and "SPIKE" in summary.stdout
    status = subprocess.run(
        [sys.executable, "-m", "memory_bank", "status", "--db", pg_url],
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0 and "records committed      2" in status.stdout
    gone = subprocess.run(
        [VIEWER, "--db", pg_url.rsplit("/", 1)[0] + "/no_such_db", "--summary"],
        capture_output=True,
        text=True,
    )
    assert gone.returncode != 0 and "no_such_db" in gone.stderr and "Traceback" not in gone.stderr


def test_a_value_postgresql_cannot_hold_is_refused_alone(pg_url, start_daemon):
    start_daemon(pg_url)
    with MemoryBank(pg_url) as memory:
        for i in range(10):
            memory.log_event("E", "c", "nul \x00 inside" if i == 4 else f"fine {i}")
        memory.flush()
        assert len(memory.get_events()) == 9
    with psycopg.connect(pg_url) as conn:
        [reason] = [r[0] for r in conn.execute("SELECT reason FROM mb_rejected")]
    assert "NUL" in reason


def test_a_publishers_spool_is_adopted_when_its_daemon_returns(pg_url, start_daemon):
    """The daemon stops; a publisher keeps writing and exits; the next daemon applies its
    spool (kept in the state folder, keyed by URL and endpoint)."""
    daemon = start_daemon(pg_url)
    pub = Publisher(pg_url, close_timeout=0.5)
    ids = [pub.log_event("BEFORE", "c", str(i)) for i in range(100)]
    assert pub.flush(10)
    assert daemon.stop() == 0
    ids += [pub.log_event("AFTER", "c", str(i)) for i in range(200)]
    pub.close()
    spools = list(Path(os.environ["MEMORYBANK_STATE_DIR"]).glob("pg-*-spool/*"))
    assert any(folder.name == str(pub.publisher_id) for folder in spools)
    start_daemon(pg_url)
    deadline = time.monotonic() + 30
    while sorted(_stored_ids(pg_url)) != sorted(ids):
        assert time.monotonic() < deadline, f"{len(_stored_ids(pg_url))} of {len(ids)} stored"
        time.sleep(0.2)


def test_a_day_whose_detach_was_cut_off_is_finished_by_the_next_run(pg_url):
    """DETACH ... CONCURRENTLY has two steps; one cut off between them (a server restart,
    a cancel) leaves the partition 'pending detach'. The next retention run finishes it."""
    import threading

    from memory_bank import wire
    from memory_bank.store.postgresql import PostgresStore
    from memory_bank.store.postgresql_schema import partition_name

    store = PostgresStore(pg_url)
    old = time.time() - 10 * 86400
    store.apply(
        [wire.Message(1 << 32, 1, 0, events=[[(1 << 32) + 1, old, "E", "c", "m", None]])], {}
    )
    name = partition_name("events", int(old // 86400))
    with psycopg.connect(pg_url) as reader, psycopg.connect(pg_url, autocommit=True) as ddl:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM events")  # holds a snapshot: the detach waits
        pid = ddl.info.backend_pid

        def cancel():
            time.sleep(1)
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_cancel_backend(%s)", (pid,))

        threading.Thread(target=cancel).start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            ddl.execute(f"ALTER TABLE events DETACH PARTITION {name} CONCURRENTLY")
        reader.rollback()
        pending = ddl.execute(
            "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = %s::regclass", (name,)
        ).fetchone()
        assert pending == (True,)
    deleted = _retention(store, {"events": time.time() - 7 * 86400})["events"]
    assert deleted == 1
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)
    store.close()


def test_a_publisher_to_postgresql_stays_light(pg_url, start_daemon):
    """Publishers never import the PostgreSQL driver: the daemon talks to the server."""
    start_daemon(pg_url)
    code = (
        "import sys\nfrom memory_bank import Publisher\n"
        "pub = Publisher(sys.argv[1])\n"
        "event_id = pub.log_event('E', 'c', 'm')\n"
        "assert pub.flush(10)\npub.close()\n"
        "print([m for m in ('psycopg', 'sqlite3', 'memory_bank.store') if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, pg_url], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert len(_stored_ids(pg_url)) == 1


def test_a_daemon_started_before_its_server_waits_for_it(tmp_path, start_daemon):
    """The server is down when the daemon starts: it says why in status and to systemd
    (more start-up time, not a kill), then serves once the server is up."""
    import socket

    from pg_server import PgServer

    server = PgServer()
    try:
        url = server.create_database("late")
        server.stop()
        address = str(tmp_path / "notify.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(address)
        listener.settimeout(20)
        start_daemon(url, wait=False, env={"NOTIFY_SOCKET": address})
        seen: list[str] = []
        while not any(f.startswith("EXTEND_TIMEOUT_USEC=") for f in seen):
            seen += listener.recv(4096).decode().split("\n")
        assert any(f.startswith("STATUS=waiting for postgresql://") for f in seen)
        status = subprocess.run(
            [sys.executable, "-m", "memory_bank", "status", "--db", url],
            capture_output=True,
            text=True,
        )
        assert status.returncode == 1 and "waits for its database" in status.stderr
        server.start()
        while "READY=1" not in seen:
            seen += listener.recv(4096).decode().split("\n")
        listener.close()
        with MemoryBank(url) as memory:
            memory.log_event("LATE", "c")
            assert memory.get_events()[0]["event_type"] == "LATE"
    finally:
        server.close()


def test_signals_while_the_daemon_waits_for_its_server(tmp_path, start_daemon):
    """While the daemon waits for an unreachable server, SIGHUP does not kill it (it keeps
    waiting), and SIGTERM ends the wait at once, cleanly, without sitting out its back-off."""
    import socket

    from conftest import free_ports

    url = f"postgresql://postgres@127.0.0.1:{free_ports(1)}/nowhere"  # nothing listens there
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(20)
    daemon = start_daemon(url, wait=False, env={"NOTIFY_SOCKET": address})

    def next_wait() -> int:
        """Seconds the daemon announces it waits before its next try (its back-off + 10)."""
        while True:
            for field in listener.recv(4096).decode().split("\n"):
                if field.startswith("EXTEND_TIMEOUT_USEC="):
                    return int(field.split("=")[1]) // 1_000_000 - 10

    assert next_wait() == 1
    daemon.proc.send_signal(signal.SIGHUP)
    assert next_wait() == 2  # alive, and trying again
    assert next_wait() == 4
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.stop(timeout=3) == 0  # well before the 4 s back-off ends
    listener.close()
    assert "stopped while waiting for postgresql://" in daemon.log


def test_a_day_another_daemon_dropped_is_made_again_for_a_late_row(pg_url):
    """Daemon B's retention drops a day daemon A still knows of; a late row for that day
    reaching A lands in the day made again, rather than being refused."""
    from memory_bank import wire
    from memory_bank.store.postgresql import PostgresStore

    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    old = time.time() - 3 * 86400
    marks: dict[int, int] = {}
    a.apply(
        [wire.Message(1 << 32, 1, 0, events=[[(1 << 32) + 1, old, "E", "c", "1", None]])], marks
    )
    assert _retention(b, {"events": time.time() - 86400}) == {"events": 1}
    a.apply(
        [wire.Message(1 << 32, 2, 0, events=[[(1 << 32) + 2, old, "E", "c", "2", None]])], marks
    )
    assert [i for i in _stored_ids(pg_url)] == [(1 << 32) + 2]
    a.close()
    b.close()


def test_retention_inside_a_day_takes_only_rows_before_the_cutoff(pg_url, start_daemon):
    """The cutoff's own day loses only its older rows; newer days (whose rows may sit at
    the same physical positions in their partitions) keep every row, and the summary's
    counts follow."""
    start_daemon(pg_url)
    now = time.time()
    cutoff = (now - 7 * 86400) // 86400 * 86400 + 12 * 3600  # noon, seven days ago
    pub = Publisher(pg_url)
    for offset in (-3600, 3600, now - cutoff):  # before, after (same day), today
        for i in range(5):
            pub.log_event("E", "c", str(i), timestamp=cutoff + offset - i)
            pub.record_anomaly("A", "LOW" if i % 2 else "HIGH", timestamp=cutoff + offset - i)
    assert pub.flush(30)
    pub.close()
    with MemoryBank(pg_url) as memory:
        deleted = memory.clear_old_data(days=(now - cutoff) / 86400)
        summary = memory.get_dashboard_summary()
    assert deleted["events"] == deleted["anomalies"] == 5
    stamps = [t - cutoff for t in _stored_times(pg_url, "events")]
    assert len(stamps) == 10 and min(stamps) > 0
    assert summary["total_events"] == summary["total_anomalies"] == 10
    assert summary["anomalies_by_severity"] == {"HIGH": 6, "LOW": 4}


def _stored_times(url: str, table: str) -> list[float]:
    with psycopg.connect(url) as conn:
        return [
            r[0] for r in conn.execute(f"SELECT extract(epoch FROM timestamp)::float8 FROM {table}")
        ]


def test_tcp_with_curve_lets_only_authorized_publishers_lease_and_write(
    pg_url, start_daemon, tmp_path
):
    """A site's daemon on tcp with CURVE: a known key leases ids and writes; a stranger's
    publisher is refused at the handshake, so it never even gets an id block."""
    from conftest import curve_site, free_port_pair
    from memory_bank.control import DaemonUnavailable
    from memory_bank.keys import client_curve

    keys, cfg = curve_site(tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_port_pair()}"
    start_daemon(pg_url, "--config", str(cfg), "--endpoint", endpoint)
    with pytest.raises(DaemonUnavailable):
        Publisher(
            pg_url,
            endpoint=endpoint,
            curve=client_curve(keys / "daemon.key", keys / "stranger.key_secret"),
            close_timeout=2.0,
        )
    pub = Publisher(
        pg_url, endpoint=endpoint, curve=client_curve(keys / "daemon.key", keys / "lab.key_secret")
    )
    lab_id = pub.log_event("E", "C", "authorized")
    assert pub.flush(10)
    pub.close()
    assert _stored_ids(pg_url) == [lab_id]


def _status(url: str) -> dict:
    return json.loads(
        subprocess.run(
            [sys.executable, "-m", "memory_bank", "status", "--json", "--db", url],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    )


def _wait_for_detach_waiting(url: str) -> None:
    """Until a DETACH PARTITION sits waiting for other transactions on the server."""
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while not conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'ALTER TABLE % DETACH PARTITION %'"
        ).fetchone():
            assert time.monotonic() < deadline, "retention never began detaching a day"
            time.sleep(0.1)


@contextlib.contextmanager
def _retention_running(url: str, *options: str):
    """`memorybank maintenance ... retention --days 1` in the background (killed at exit
    if a failed test leaves it waiting)."""
    run = subprocess.Popen(
        [sys.executable, "-m", "memory_bank", "maintenance", "--db", url, *options]
        + ["retention", "--days", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield run
    finally:
        run.kill()
        run.communicate()


def _reader_in_transaction(url: str) -> psycopg.Connection:
    """A reader whose transaction stays open, idle, after one query: as a psql session
    left in BEGIN."""
    reader = psycopg.connect(url)  # not autocommit: the SELECT opens a transaction
    # Ended by the server after a minute, so code that waits for it cannot hang the suite.
    reader.execute("SET idle_in_transaction_session_timeout = '60s'")
    reader.execute("SELECT count(*) FROM events")
    return reader


def test_retention_waiting_on_a_readers_transaction_never_stalls_ingest(pg_url, start_daemon):
    """DETACH ... CONCURRENTLY waits for every older transaction. The daemon runs it on a
    connection of its own: records keep committing, status answers and names the wait,
    and the run finishes once the reader's transaction ends."""
    start_daemon(pg_url)
    pub = Publisher(pg_url)
    old = time.time() - 10 * 86400
    for i in range(5):  # a day for retention to retire
        pub.log_event("OLD", "c", str(i), timestamp=old - i)
    assert pub.flush(30)
    reader = _reader_in_transaction(pg_url)
    with _retention_running(pg_url, "--json") as run:
        _wait_for_detach_waiting(pg_url)
        for batch in range(5):  # each flush returns once its records are committed
            for i in range(200):
                pub.log_event("NEW", "c", f"{batch}/{i}")
            assert pub.flush(30), f"nothing committed while the detach waited (batch {batch})"
        pub.close()
        deadline = time.monotonic() + 30
        while not (figures := _status(pg_url))["maintenance_waiting"]:  # said after 1 s
            assert time.monotonic() < deadline, figures
            time.sleep(0.2)
        assert figures["maintenance_running"] == "retention"
        assert "DETACH" in figures["maintenance_waiting"]
        waiting_for = f"pid {reader.info.backend_pid} (idle in transaction"
        assert waiting_for in figures["maintenance_waiting"]
        assert run.poll() is None  # still waiting: the reader still holds its transaction
        with psycopg.connect(pg_url) as conn:
            new = conn.execute("SELECT count(*) FROM events WHERE event_type = 'NEW'")
            assert new.fetchone()[0] == 1000
        reader.rollback()
        reader.close()
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert json.loads(out)["deleted"]["events"] == 5


def test_a_detach_that_waits_too_long_gives_up_and_the_next_run_finishes_it(pg_url):
    """Past its bound, a waiting detach ends the run with a reason (the day stays, pending),
    and the next run, once the reader is gone, finishes it."""
    from memory_bank import wire
    from memory_bank.store import StoreUnavailable
    from memory_bank.store.postgresql import PostgresStore

    store = PostgresStore(pg_url)
    store.lock_wait_seconds = 1.0
    old, block = time.time() - 10 * 86400, 1 << 32
    rows = [[block + i, old - i, "E", "c", "m", None] for i in range(1, 6)]
    store.apply([wire.Message(block, 1, 0, events=rows)], {})
    reader = _reader_in_transaction(pg_url)
    with pytest.raises(StoreUnavailable, match="next retention run finishes it"):
        _retention(store, {"events": time.time() - 86400})
    reader.rollback()
    reader.close()
    assert _retention(store, {"events": time.time() - 86400}) == {"events": 5}
    store.close()


def test_two_daemons_retiring_the_same_days_at_once_agree(pg_url):
    """Two daemons' retention runs start at the same moment over the same old days: one
    retires each day, the other counts it done; neither fails, nothing is counted twice."""
    import threading

    from memory_bank import wire
    from memory_bank.store.postgresql import PostgresStore
    from memory_bank.store.postgresql_schema import partition_name

    stores = [PostgresStore(pg_url), PostgresStore(pg_url)]
    now, block = time.time(), 1 << 32
    events, metrics = [], []
    for n, days_ago in enumerate((12, 11, 10, 9), start=1):
        for i in range(25):
            t = now - days_ago * 86400 - i
            events.append([block + n * 100 + i, t, "E", "c", "m", None])
            metrics.append([block + 10_000 + n * 100 + i, t, "current", 1.0, "A", None])
    stores[0].apply([wire.Message(block, 1, 0, events=events, metrics=metrics)], {})
    cutoffs = {"events": now - 7 * 86400, "metrics": now - 7 * 86400}
    start = threading.Barrier(2)
    deleted: list[dict] = [{}, {}]
    errors: list[Exception] = []

    def retire(k: int) -> None:
        try:
            start.wait()
            deleted[k] = _retention(stores[k], cutoffs)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=retire, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    for table in cutoffs:
        assert deleted[0][table] + deleted[1][table] == 100
    retired = [
        partition_name(table, int((now - days_ago * 86400) // 86400))
        for table in cutoffs
        for days_ago in (12, 11, 10, 9)
    ]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        left = conn.execute("SELECT relname FROM pg_class WHERE relname = ANY(%s)", (retired,))
        assert left.fetchall() == []
    for store in stores:
        store.close()


def test_maintenance_says_so_when_its_daemon_dies_mid_run(pg_url, start_daemon):
    """`memorybank maintenance` waits as long as the run takes, but not for a daemon that
    is gone: killed mid-run, the command exits 1 saying so."""
    daemon = start_daemon(pg_url)
    pub = Publisher(pg_url)
    pub.log_event("OLD", "c", "m", timestamp=time.time() - 10 * 86400)
    assert pub.flush(30)
    pub.close()
    reader = _reader_in_transaction(pg_url)  # holds the run in its detach
    with _retention_running(pg_url) as run:
        _wait_for_detach_waiting(pg_url)
        daemon.stop(signal.SIGKILL)
        out, err = run.communicate(timeout=60)
    reader.close()
    assert run.returncode == 1
    assert f"the daemon (pid {daemon.proc.pid}) stopped before 'retention' finished" in err
    assert "Traceback" not in err


def test_a_new_day_is_made_while_a_reader_holds_a_transaction(pg_url, start_daemon):
    """A row for a day with no partition yet needs one made; a reader's open transaction
    on the table must not hold that (and with it the whole batch) back."""
    start_daemon(pg_url)
    reader = _reader_in_transaction(pg_url)
    pub = Publisher(pg_url)
    pub.log_event("LATE", "c", "three days late", timestamp=time.time() - 3 * 86400)
    try:
        assert pub.flush(30), "the batch waited for the reader's transaction"
    finally:
        reader.close()
        pub.close()
    assert len(_stored_ids(pg_url)) == 1


WRITE_UNTIL_STOPPED = r"""
import sys, time
from pathlib import Path
from memory_bank import Publisher
db, stop, rate = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
pub = Publisher(db)
t0, i = time.monotonic(), 0
while not stop.exists():
    pub.log_event("E", "pub", str(i))
    if i % 3 == 0:
        pub.record_metric("current", float(i), "A")
    i += 1
    time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
assert pub.flush(60)
pub.close()
"""


def _sqlite_ids(path, table: str) -> set[int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return {r[0] for r in conn.execute(f"SELECT id FROM {table}")}


def _pg_ids(url: str, table: str) -> set[int]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(f"SELECT id FROM {table}")}


def test_migrating_a_database_a_daemon_still_writes_catches_up(tmp_path, pg_url, start_daemon):
    """Two publishers write (each into its own id block) while migrate runs; a rerun
    after they stop copies every row committed meanwhile, in whichever block, and the
    sessions and patterns that changed since the first copy."""
    source = tmp_path / "src.db"
    start_daemon(source)
    stop = tmp_path / "stop"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITE_UNTIL_STOPPED, str(source), str(stop), "300"])
        for _ in range(2)
    ]
    memory = MemoryBank(source)
    memory.start_session("S1")
    memory.record_pattern("P", {"k": 1})
    memory.flush()
    cmd = [sys.executable, "-m", "memory_bank", "migrate", "--from", str(source), "--to", pg_url]
    try:
        while len(_sqlite_ids(source, "events")) < 1000:
            time.sleep(0.1)
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        assert "snapshot: a daemon serves" in first.stdout
        copied_then = len(_pg_ids(pg_url, "events"))
        while len(_sqlite_ids(source, "events")) < copied_then + 1000:  # both keep writing
            assert all(w.poll() is None for w in writers)
            time.sleep(0.1)
        memory.end_session("S1", total_energy=5.0)
        memory.record_pattern("P", {"k": 1})
        memory.flush()
    finally:
        stop.touch()
        for writer in writers:
            assert writer.wait(timeout=120) == 0
        memory.close()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    report = _migrate_report(second.stdout)
    for table in ("events", "metrics"):
        assert _pg_ids(pg_url, table) == _sqlite_ids(source, table)
        assert report[table][0] == report[table][1] and report[table][3] == 0
    assert "complete: every row of" in second.stdout
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT status, total_energy FROM sessions WHERE session_id = 'S1'"
        ).fetchone() == ("COMPLETED", 5.0)
        assert conn.execute("SELECT frequency FROM patterns").fetchone() == (2,)
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert all(counts[2] == 0 for counts in _migrate_report(third.stdout).values())


def test_migrate_verifies_each_block_and_copies_a_row_committed_late_below_its_mark(
    tmp_path, pg_url
):
    """A row committed after a higher id of its own block (a publisher shared by threads
    can take an id and queue it a moment after a later one) is below that block's mark:
    the rerun's verification finds it and copies it."""
    from memory_bank import wire
    from memory_bank.store.migrate import Migration
    from memory_bank.store.sqlite import SqliteStore

    source = tmp_path / "src.db"
    store = SqliteStore(source)
    block = 3 << 32
    now = time.time()
    marks: dict[int, int] = {}
    store.apply(
        [
            wire.Message(
                block, 1, 0, events=[[block + i, now, "E", "c", str(i), None] for i in (1, 3)]
            )
        ],
        marks,
    )
    migration = Migration(source, pg_url)
    assert migration.run().complete
    migration.close()
    store.apply([wire.Message(block, 2, 0, events=[[block + 2, now, "E", "c", "2", None]])], marks)
    store.close()
    migration = Migration(source, pg_url)
    report = migration.run()
    migration.close()
    assert report.complete
    assert [(t.source, t.target, t.copied) for t in report.tables if t.table == "events"] == [
        (3, 3, 1)
    ]
    assert _pg_ids(pg_url, "events") == {block + 1, block + 2, block + 3}


def test_a_backlog_is_committed_in_fewer_larger_batches_and_nothing_is_lost(
    pg_url, start_daemon, tmp_path
):
    """A daemon that fell behind (its batch held by a lock while publishers went on) takes
    what is already waiting in batches of up to 4 x batch_rows, not one commit per
    batch_rows; every record lands once."""
    cfg = tmp_path / "small.toml"
    cfg.write_text("[daemon]\nbatch_rows = 10\n")
    daemon = start_daemon(pg_url, "--config", str(cfg))
    pub = Publisher(pg_url)
    ids = [pub.log_event("E", "pub", "before")]
    assert pub.flush(30)
    batches_before = _status(pg_url)["batches"]
    holder = psycopg.connect(pg_url)
    watcher = psycopg.connect(pg_url, autocommit=True)  # pg_stat_activity afresh each time
    try:
        holder.execute("LOCK TABLE mb_publishers IN EXCLUSIVE MODE")  # its batch waits here
        ids.append(pub.log_event("E", "pub", "held"))
        deadline = time.monotonic() + 30
        while not watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
            "'memorybank-daemon' AND wait_event_type = 'Lock'"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the daemon's batch never waited on the lock"
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        for i in range(400):  # a message each: the batch is made of many messages
            ids.append(pub.log_event("E", "pub", str(i), {"i": i}))
            while pub._sender.queue or pub._sender._has_unsent():  # handed to ZeroMQ
                assert time.monotonic() < deadline, "the publisher never sent its records"
                time.sleep(0.001)
    finally:
        holder.rollback()  # the held batch goes on, then the backlog
        holder.close()
        watcher.close()
    deadline = time.monotonic() + 60
    while (figures := _status(pg_url))["committed_records"] < len(ids):
        assert time.monotonic() < deadline, figures
        time.sleep(0.2)
    assert pub.flush(30)
    pub.close()
    assert sorted(_stored_ids(pg_url)) == sorted(ids)
    # 401 records at batch_rows = 10 would be 41 batches one batch_rows at a time.
    assert figures["batches"] - batches_before <= 20, figures
    assert daemon.stop() == 0


def test_a_database_written_by_a_newer_memorybank_is_refused_not_written(
    pg_url, tmp_path, start_daemon
):
    """As the SQLite store does with its user_version: a schema_version above this
    MemoryBank's is refused with a clear message, by the daemon and by migrate, and the
    database is left as it was."""
    from click.testing import CliRunner

    from conftest import query
    from memory_bank.cli import main

    start_daemon(pg_url).stop()
    query(pg_url, "UPDATE mb_meta SET value = '99' WHERE key = 'schema_version'")
    query(pg_url, "DROP TABLE mb_stream_log")  # what this version would make again
    daemon = start_daemon(pg_url, wait=False)
    assert daemon.proc.wait(60) == 2
    assert "database schema version 99 is newer than this MemoryBank" in daemon.log
    assert "upgrade memory_bank" in daemon.log
    source = tmp_path / "ev.db"
    with MemoryBank(source, embedded=True) as memory:
        memory.log_event("E", "C", "x")
    migrated = CliRunner().invoke(main, ["migrate", "--from", str(source), "--to", pg_url])
    assert migrated.exit_code == 1 and "is newer than this MemoryBank" in migrated.output
    assert query(pg_url, "SELECT to_regclass('mb_stream_log') IS NULL") == [(True,)]
    assert query(pg_url, "SELECT count(*) FROM events") == [(0,)]
