"""Running unattended: scheduled maintenance through the writer, systemd, reload, status."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from memory_bank import MemoryBank, Publisher, config
from memory_bank.cli import main
from memory_bank.control import daemon_stats

UNIT = Path(__file__).parent.parent / "systemd" / "memorybank.service"


def _write_config(path: Path, **sections) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_verifies(tmp_path):
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=",
        "RuntimeDirectory=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "UMask=",
        "ExecReload=",
    ):
        assert line in text, line
    # verify checks that ExecStart exists: point it at this installation's command.
    local = tmp_path / "memorybank.service"
    local.write_text(
        text.replace(
            "/opt/memorybank/bin/memorybank", str(Path(sys.executable).with_name("memorybank"))
        )
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "memorybank.service" not in result.stderr, result.stderr


def test_notify_protocol_ready_watchdog_stopping(db_path, start_daemon, tmp_path):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(10)
    daemon = start_daemon(db_path, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    seen: list[str] = []
    while not ("READY=1" in seen and seen.count("WATCHDOG=1") >= 2):
        seen += listener.recv(4096).decode().split("\n")
    assert daemon.stop(signal.SIGTERM) == 0
    try:
        while "STOPPING=1" not in seen:
            seen += listener.recv(4096).decode().split("\n")
    finally:
        listener.close()
    ready, stopping = seen.index("READY=1"), seen.index("STOPPING=1")
    watchdogs = [i for i, field in enumerate(seen) if field == "WATCHDOG=1"]
    assert ready < watchdogs[0] and watchdogs[-1] < stopping
    assert any(f.startswith("STATUS=") for f in seen)
    assert f"MAINPID={daemon.proc.pid}" in seen


def test_sighup_reloads_and_refuses_a_bad_file(db_path, start_daemon, tmp_path):
    cfg = _write_config(tmp_path / "mb.toml", maintenance={"retention_schedule": "0 3 * * *"})
    daemon = start_daemon(db_path, "--config", str(cfg))
    assert daemon_stats(db_path)["next_maintenance"]["retention"].endswith("03:00:00+00:00")
    pub = Publisher(db_path)
    sent = 0
    for step in range(3):
        if step == 1:
            _write_config(
                cfg, maintenance={"retention_schedule": "30 4 * * *"}, logging={"level": "DEBUG"}
            )
            daemon.proc.send_signal(signal.SIGHUP)
        if step == 2:
            cfg.write_text("[maintenance]\nretention_schedule = 'every night'\n")
            daemon.proc.send_signal(signal.SIGHUP)
        for _ in range(2000):
            pub.log_event("E", "C", "during reload")
            sent += 1
        time.sleep(0.5)
    assert pub.flush(20)
    pub.close()
    stats = daemon_stats(db_path)
    assert stats["next_maintenance"]["retention"].endswith("04:30:00+00:00")
    assert stats["committed_records"] == sent
    assert "reload refused, keeping the running configuration" in daemon.log
    assert "maintenance.retention_schedule" in daemon.log
    assert daemon.proc.poll() is None


def _age(days: float) -> float:
    return time.time() - days * 86400


def test_maintenance_cli_runs_through_the_daemon_and_is_recorded(db_path, daemon):
    pub = Publisher(db_path)
    for i in range(3000):
        pub.log_event("E", "C", "x" * 200, timestamp=_age(10))
        pub.record_metric("current", float(i), "A", timestamp=_age(10))
    pub.log_event("E", "C", "fresh")
    assert pub.flush(20)
    pub.close()
    runner = CliRunner()
    result = runner.invoke(
        main, ["maintenance", "--db", str(db_path), "retention", "--days", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)
    assert run["deleted"] == {"events": 3000, "anomalies": 0, "metrics": 3000}
    assert run["trigger"] == "request" and run["status"] == "ok"
    result = runner.invoke(main, ["maintenance", "--db", str(db_path), "vacuum"])
    assert result.exit_code == 0, result.output
    assert "reclaimed" in result.output
    status = runner.invoke(main, ["status", "--db", str(db_path)])
    assert "last retention" in status.output and "events 3000" in status.output
    assert "last vacuum" in status.output and "next vacuum" in status.output
    figures = daemon_stats(db_path)
    assert figures["last_maintenance"]["vacuum"]["bytes_reclaimed"] > 0
    conn = sqlite3.connect(db_path)
    jobs = [r[0] for r in conn.execute("SELECT job FROM mb_maintenance ORDER BY id")]
    assert jobs == ["retention", "vacuum"]
    assert [r[0] for r in conn.execute("SELECT message FROM events")] == ["fresh"]


def test_retention_policy_per_table(db_path, start_daemon, tmp_path):
    cfg = _write_config(
        tmp_path / "mb.toml",
        maintenance={"retention_days": 30, "metrics_days": 1, "sessions_days": 2},
    )
    start_daemon(db_path, "--config", str(cfg))
    pub = Publisher(db_path)
    pub.log_event("E", "C", "three days old", timestamp=_age(3))
    pub.record_metric("current", 1.0, "A", timestamp=_age(3))
    pub.start_session("OLD", timestamp=_age(3))
    pub.start_session("NEW")
    pub.record_pattern("P", {"a": 1}, timestamp=_age(100))
    assert pub.flush(10)
    pub.close()
    result = CliRunner().invoke(main, ["maintenance", "--db", str(db_path), "retention", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["deleted"] == {
        "events": 0,
        "anomalies": 0,
        "metrics": 1,
        "sessions": 1,
    }
    with MemoryBank(db_path) as memory:
        assert [s["session_id"] for s in memory.get_recent_sessions()] == ["NEW"]
        assert len(memory.get_events()) == 1 and len(memory.get_patterns()) == 1


def test_a_run_missed_while_down_runs_at_start(db_path, start_daemon, tmp_path):
    daemon = start_daemon(db_path)
    pub = Publisher(db_path)
    pub.log_event("E", "C", "ten days old", timestamp=_age(10))
    assert pub.flush(10)
    pub.close()
    daemon.stop()
    conn = sqlite3.connect(db_path)
    conn.execute(
        "UPDATE mb_meta SET value = ? WHERE key = 'maintenance_since'", (str(_age(2)),)
    )  # nightly 03:00 has passed since, with nobody running
    conn.commit()
    conn.close()
    start_daemon(db_path)
    deadline = time.time() + 20
    while "retention" not in daemon_stats(db_path)["last_maintenance"]:
        assert time.time() < deadline
        time.sleep(0.1)
    last = daemon_stats(db_path)["last_maintenance"]
    assert last["retention"]["trigger"] == "catch-up"
    assert last["retention"]["deleted"]["events"] == 1
    while "vacuum" not in daemon_stats(db_path)["last_maintenance"]:
        assert time.time() < deadline
        time.sleep(0.1)  # the default vacuum_schedule: after retention
    # ... and only once: a restart now finds nothing missed.
    start_count = (
        sqlite3.connect(db_path).execute("SELECT count(*) FROM mb_maintenance").fetchone()[0]
    )
    assert start_count == 2


def test_config_is_found_in_the_standard_places(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMORYBANK_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    user_file = tmp_path / "xdg" / "memorybank" / "memorybank.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("[daemon]\nbatch_rows = 111\n")
    assert config.load().batch_rows == 111
    (tmp_path / "memorybank.toml").write_text("[daemon]\nbatch_rows = 222\n")
    assert config.load().batch_rows == 222
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("[daemon]\nbatch_rows = 333\n")
    monkeypatch.setenv("MEMORYBANK_CONFIG", str(explicit))
    assert config.load().batch_rows == 333
    assert config.load(batch_rows=444).batch_rows == 444  # a flag beats every file
    monkeypatch.setenv("MEMORYBANK_LOG_LEVEL", "debug")
    assert config.load().log_level == "DEBUG"
    (tmp_path / "bad.toml").write_text("[maintenance]\nmetrics_days = -1\n")
    with pytest.raises(config.ConfigError, match="maintenance.metrics_days"):
        config.load(tmp_path / "bad.toml")
    assert os.environ["MEMORYBANK_CONFIG"] == str(explicit)
