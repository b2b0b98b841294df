"""The viewer, as people use it: the seed's flags and menu, filters, outputs, follow, plot."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
import pytest
from click.testing import CliRunner

from memory_bank import MemoryBank, wire
from memory_bank.cli import main
from memory_bank.store.sqlite import SqliteStore
from memory_bank.viewer import view

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def lab_db(tmp_path_factory):
    """A database the daemon built: two hours of a small lab."""
    from conftest import DaemonProcess

    db = tmp_path_factory.mktemp("viewer") / "lab.db"
    daemon = DaemonProcess(db).wait_ready()
    now = time.time()
    with MemoryBank(db) as memory:
        pub = memory.publisher
        for i in range(120):
            t = now - 7200 + i * 60
            pub.log_event("CAN_RX", "CHARGER", f"reading {i}", {"i": i}, timestamp=t)
            pub.log_event(
                "OCPP_BOOT" if i % 40 == 0 else "OCPP_COMMAND", "CSMS", f"command {i}", timestamp=t
            )
            pub.record_metric("current", 30.0 + i % 5, "A", timestamp=t)
        for i, severity in enumerate(["LOW", "MEDIUM", "HIGH", "CRITICAL", "HIGH"]):
            pub.record_anomaly(
                "CURRENT_LIMIT_FLUCTUATION" if i % 2 else "VOLTAGE_DROP",
                severity,
                f"anomaly {i}",
                {"i": i},
                100.0,
                32.0,
                timestamp=now - 3000 + i * 300,
            )
        pub.start_session("TXN_1", timestamp=now - 3600)
        pub.increment_session_anomaly_count("TXN_1", timestamp=now - 3000)
        pub.end_session("TXN_1", timestamp=now - 1800)
        pub.start_session("TXN_2", timestamp=now - 600)
        for _ in range(3):
            pub.record_pattern("ANOMALY_CYCLE", {"sequence": ["0A", "100A"]}, 0.9)
        assert memory.flush(20)
    daemon.stop()
    return db


def run(*args, db=None):
    result = CliRunner().invoke(view, [*(["--db", str(db)] if db else []), *args])
    return result


def test_seed_flags_show_the_seed_columns(lab_db):
    summary = run("--summary", db=lab_db)
    assert summary.exit_code == 0, summary.output
    assert "total events           240" in summary.output
    assert "anomalies by severity" in summary.output and "HIGH: 2" in summary.output
    assert "Recent events" in summary.output and "Recent anomalies" in summary.output
    events = run("--events", "7", db=lab_db).output.splitlines()
    assert events[1].split() == ["ID", "TIME", "TYPE", "COMPONENT", "MESSAGE", "DATA"]
    assert len(events) == 2 + 7
    anomalies = run("--anomalies", "20", db=lab_db).output
    for header in ("SEVERITY", "CURRENT", "EXPECTED", "DEVIATION"):
        assert header in anomalies
    assert anomalies.count("68.00") == 5
    sessions = run("--sessions", "10", db=lab_db).output
    assert "TXN_1" in sessions and "COMPLETED" in sessions and "ACTIVE" in sessions
    assert "1800.0" in sessions  # duration of TXN_1
    patterns = run("--patterns", db=lab_db).output
    assert "ANOMALY_CYCLE" in patterns and " 3 " in patterns
    stats = run("--stats", db=lab_db).output
    assert "last hour" in stats and "all time" in stats and "120" in stats
    assert "\x1b[" not in summary.output + anomalies  # plain when piped


def test_several_flags_at_once_and_the_memory_viewer_script(lab_db):
    result = subprocess.run(
        [str(BIN / "memory-viewer"), "--db", str(lab_db), "--sessions", "5", "--patterns"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "TXN_2" in result.stdout and "ANOMALY_CYCLE" in result.stdout


@pytest.mark.parametrize("output", ["json", "jsonl", "csv"])
def test_outputs_for_scripts(lab_db, output):
    result = run("--events", "30", "--output", output, db=lab_db)
    assert result.exit_code == 0, result.output
    if output == "json":
        rows = json.loads(result.output)
    elif output == "jsonl":
        rows = [json.loads(line) for line in result.output.splitlines()]
    else:
        rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 30
    assert {"id", "timestamp", "event_type", "component", "message"} <= set(rows[0])
    assert "Recent events" not in result.output


def test_filters(lab_db):
    def ids(*args):
        out = run(*args, "--output", "jsonl", db=lab_db).output
        return [json.loads(line) for line in out.splitlines()]

    assert {e["component"] for e in ids("--events", "500", "--component", "CSMS")} == {"CSMS"}
    assert {e["event_type"] for e in ids("--events", "500", "--type", "OCPP_BOOT")} == {"OCPP_BOOT"}
    assert len(ids("--events", "500", "--type", "OCPP_BOOT")) == 3
    recent = ids("--events", "500", "--since", "30m")
    assert 0 < len(recent) < 70 and all(e["timestamp"] >= time.time() - 1900 for e in recent)
    older = ids("--events", "500", "--until", "1h")
    assert all(e["timestamp"] < time.time() - 3500 for e in older)
    day = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() - 5400))
    assert len(ids("--events", "500", "--since", day)) < 240
    assert ids("--events", "500", "--since", "yesterday")
    assert [a["severity"] for a in ids("--anomalies", "50", "--severity", "high")] == [
        "HIGH",
        "HIGH",
    ]
    assert len(ids("--anomalies", "50", "--anomaly-type", "VOLTAGE_DROP")) == 3
    in_session = ids("--events", "500", "--session", "TXN_1")
    assert 55 <= len(in_session) <= 64  # 30 minutes of two events a minute
    bad = run("--events", "5", "--since", "last tuesday-ish", db=lab_db)
    assert bad.exit_code == 2 and "is not a time" in bad.output


def test_filters_alone_show_matching_events(lab_db):
    result = run("--component", "CHARGER", db=lab_db)
    assert result.exit_code == 0 and "CHARGER" in result.output and "CSMS" not in result.output


def test_tables_fit_the_terminal(lab_db, monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    result = run("--events", "5", db=lab_db)
    assert max(len(line) for line in result.output.splitlines()) <= 70


def test_export_every_table_in_full_streaming(tmp_path):
    """More rows than the seed's 10,000 cap; JSON parses whole, JSONL line by line; the
    export's memory stays flat however many rows there are."""
    db = tmp_path / "big.db"
    store = SqliteStore(db, synchronous="OFF")
    base = 1 << wire.ID_BLOCK_BITS
    now = time.time()
    for chunk in range(30):
        metrics = [
            [
                base + chunk * 10_000 + i,
                now - 3600 + i * 0.01,
                "current",
                1.0,
                "A",
                '{"connector_id": 1, "phase": "L1", "pad": "' + "x" * 100 + '"}',
            ]
            for i in range(10_000)
        ]
        store.apply([wire.Message(1, chunk + 1, chunk, metrics=metrics)], {})
    store.close()
    out = tmp_path / "all.jsonl"
    # The export in its own interpreter, reporting its own peak memory: VmHWM belongs to
    # the new address space (ru_maxrss would carry pytest's own peak across exec).
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom memory_bank.viewer import view\n"
            "try:\n    view.main(sys.argv[1:], standalone_mode=False)\nfinally:\n"
            "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "    print('PEAK_KB', hwm.split()[1], file=sys.stderr)\n",
            "--db",
            str(db),
            "--export",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 300_001 and json.loads(lines[-2])["table"] == "metrics"
    assert json.loads(lines[-1])["table"] == "summary"
    peak_mb = int(result.stderr.split("PEAK_KB")[1].split()[0]) / 1024
    assert peak_mb < 100, f"export peaked at {peak_mb:.0f} MB"
    as_json = tmp_path / "all.json"
    assert run("--export", str(as_json), db=db).exit_code == 0
    exported = json.loads(as_json.read_text())
    assert len(exported["metrics"]) == 300_000 and exported["events"] == []


def test_empty_and_missing_databases(tmp_path):
    missing = tmp_path / "nope.db"
    for command in (
        [str(BIN / "memory-viewer"), "--db", str(missing), "--summary"],
        [str(BIN / "memorybank"), "view", "--db", str(missing), "--events", "5"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert "no database at" in result.stderr
    assert not missing.exists() and list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty.db"
    SqliteStore(empty).close()
    for flags in (
        ["--summary"],
        ["--events", "5"],
        ["--anomalies", "5"],
        ["--sessions", "5"],
        ["--patterns"],
        ["--stats"],
        ["--export", str(tmp_path / "e.json")],
    ):
        result = run(*flags, db=empty)
        assert result.exit_code == 0, (flags, result.output)
    assert "(none)" in run("--events", "5", db=empty).output


def test_follow_shows_commits_live(db_path, daemon):
    with MemoryBank(db_path) as memory:
        memory.log_event("OCPP_BOOT", "CSMS", "before follow")
    # Ctrl-C as a terminal delivers it: a harness started in the background (a shell
    # without job control) hands its children SIGINT ignored, which exec keeps.
    command = [str(BIN / "memorybank"), "view", "--db", str(db_path), "--follow", "-o", "jsonl"]
    follower = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.argv[1], sys.argv[1:])",
            *command,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(json.loads(line)) for line in follower.stdout], daemon=True
    ).start()
    first = lines.get(timeout=60)
    assert first["message"] == "before follow"  # the backlog comes first
    # The subscription reaches the daemon some time after the backlog is shown: probes
    # until one comes through, then what the test watches.
    with MemoryBank(db_path) as memory:
        deadline = time.monotonic() + 60
        while True:
            memory.log_event("PROBE", "TEST", "probe")
            assert memory.flush(10)
            try:
                if lines.get(timeout=0.5).get("message") == "probe":
                    break
            except queue.Empty:
                assert time.monotonic() < deadline, "the follower never showed a live commit"
        memory.log_event("CAN_RX", "CP", "live one")
        memory.record_anomaly("SPIKE", "CRITICAL", "live anomaly")
    seen: list[dict] = []
    while len(seen) < 2:
        line = lines.get(timeout=60)
        if line.get("message") != "probe":  # probes still on their way
            seen.append(line)
    assert {(s["kind"], s.get("message") or s.get("description")) for s in seen} == {
        ("event", "live one"),
        ("anomaly", "live anomaly"),
    }
    follower.send_signal(signal.SIGINT)
    assert follower.wait(timeout=60) == 0


def test_terminal_plot_and_png(lab_db, tmp_path):
    text = CliRunner().invoke(
        main, ["view", "--db", str(lab_db), "plot", "current", "--since", "3h"]
    )
    assert text.exit_code == 0, text.output
    assert "current" in text.output and "anomalies (5)" in text.output
    assert len(text.output.splitlines()) >= 15
    png = tmp_path / "current.png"
    result = CliRunner().invoke(
        main, ["view", "plot", "current", "--since", "3h", "--png", str(png), "--db", str(lab_db)]
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (1000, 400)
        colors = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert len(colors) > 50  # lines, fills and labels, not a blank canvas
    assert sum(n for n, c in colors if c != (255, 255, 255)) > 2000


def test_interactive_menu_through_a_terminal(lab_db, tmp_path, start_daemon):
    import shutil

    db = tmp_path / "menu.db"  # option 9 deletes: work on a copy of the lab
    shutil.copy(lab_db, db)
    start_daemon(db)
    export = tmp_path / "menu.json"
    child = pexpect.spawn(
        str(BIN / "memory-viewer"),
        ["--db", str(db)],
        encoding="utf-8",
        timeout=30,
        dimensions=(50, 160),
    )
    child.logfile_read = open(tmp_path / "menu.log", "w")  # noqa: SIM115 (kept for a failure)
    steps = [
        ("1", [], "total events"),
        ("2", [("How many events", "5")], "CAN_RX"),
        ("3", [("How many anomalies", "5")], "\x1b["),  # severity in colour on a terminal
        ("4", [("How many sessions", "5")], "TXN_1"),
        ("5", [], "ANOMALY_CYCLE"),
        ("6", [], "last 24 hours"),
        (
            "7",
            [("Component", "CSMS"), ("Event type", "OCPP_BOOT"), ("How many", "10")],
            "OCPP_BOOT",
        ),
        ("8", [("Export to file", str(export))], "exported"),
        ("9", [("how many days", "30"), ("[y/N]", "n")], "nothing deleted"),
        ("9", [("how many days", "0.04"), ("[y/N]", "y")], "deleted"),
    ]
    for choice, answers, expected in steps:
        child.expect_exact("Choose an option [0]: ")
        child.sendline(choice)
        for prompt, answer in answers:
            child.expect_exact(prompt)
            child.sendline(answer)
        child.expect_exact(expected)
    child.expect("Choose an option")
    child.sendline("0")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert json.loads(export.read_text())["sessions"]
    with MemoryBank(db) as memory:  # option 9 went through the daemon: the last hour is left
        remaining = memory.get_events(limit=1000)
        assert remaining and len(remaining) < 240
        assert min(e["timestamp"] for e in remaining) >= time.time() - 0.04 * 86400 - 60


def test_menu_clean_without_a_daemon_says_how_to_start_one(tmp_path):
    db = tmp_path / "lone.db"
    SqliteStore(db).close()
    result = CliRunner().invoke(view, ["--db", str(db)], input="9\n7\ny\n0\n")
    assert result.exit_code == 0
    assert "memorybank daemon --db" in result.output
    assert os.path.exists(db)
