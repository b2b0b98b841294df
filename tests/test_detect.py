"""`memorybank detect` against a real daemon: findings, resume without duplicates, learned
cycles with rising frequency, and the forecast through the API and the viewer."""

from __future__ import annotations

import json
import math
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import run_python
from memory_bank import MemoryBank, Publisher
from memory_bank.control import daemon_stats
from memory_bank.store import open_reader

HZ = 2.0
# Faults on CP_1's current: (kind, start s, end s); CP_2 and the voltages stay normal.
FAULTS = [
    ("SPIKE", 100.0, 100.0),
    ("LEVEL_SHIFT", 160.0, 180.0),
    ("STUCK", 230.0, 245.0),
    ("DROPOUT", 290.0, 300.0),
    ("OSCILLATION", 340.0, 360.0),
    ("DRIFT", 420.0, 520.0),
]


def lab_records(t0: float, seconds: float, rng: random.Random):
    """Readings (in time order) of two charge points; CP_2 starts and stops sessions."""
    out = []
    stuck = 0.0
    for k in range(int(seconds * HZ)):
        rel = k / HZ
        t = t0 + rel
        value = 32.0 + rng.gauss(0, 0.5)
        if rel == 100.0:
            value = 50.0
        elif 160 <= rel < 180:
            value = 22.0 + rng.gauss(0, 0.5)
        elif 230 <= rel < 245:
            value = stuck
        elif 340 <= rel < 360:
            value = 32.0 + 8 * math.sin(2 * math.pi * rel / 2.5 + 0.4) + rng.gauss(0, 0.5)
        elif 420 <= rel < 520:
            value = 32.0 + 6 * (rel - 420) / 100 + rng.gauss(0, 0.5)
        value = round(value, 2)
        if rel == 229.5:
            stuck = value
        if not 290 <= rel < 300:
            out.append((t, "current", value, "CP_1"))
            out.append((t, "voltage", round(230 + rng.gauss(0, 1), 1), "CP_1"))
        charging = int(rel // 20) % 2 == 0  # both regimes within the warm-up
        cp2 = round(32.0 + rng.gauss(0, 0.5), 2) if charging else 0.0
        out.append((t + 0.1, "current", cp2, "CP_2"))
    return out


def publish(location, records) -> None:
    pubs = {}
    for t, metric, value, cp in records:
        pub = pubs.get(cp) or pubs.setdefault(cp, Publisher(location))
        pub.record_metric(metric, value, "A", {"cp_id": cp, "connector_id": 1}, timestamp=t)
    for pub in pubs.values():
        assert pub.close(60)


def detect(location, config, *args: str, timeout: float = 120.0):
    return subprocess.run(
        [sys.executable, "-m", "memory_bank", "detect", "--db", str(location)]
        + ["--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "detect.toml"
    path.write_text("[detect]\nwarmup_readings = 60\ncycle_min_period_s = 1.0\n")
    return path


def findings(location, instance="detect") -> list[dict]:
    reader = open_reader(location)
    try:
        rows = list(reader.iter_anomalies(newest_first=False))
    finally:
        reader.close()
    return [r for r in rows if (r["pattern_data"] or {}).get("instance") == instance]


def keys(rows) -> list[tuple]:
    return sorted(
        (
            r["anomaly_type"],
            json.dumps(r["pattern_data"]["stream"], sort_keys=True),
            round(r["timestamp"], 6),
        )
        for r in rows
    )


def test_faults_found_with_kind_time_and_data_none_on_normal_streams(
    location, start_daemon, config
):
    start_daemon(location)
    t0 = time.time() - 3600
    publish(location, lab_records(t0, 600, random.Random(5)))
    run = detect(location, config, "--once")
    assert run.returncode == 0, run.stderr
    found = findings(location)
    cp1 = [f for f in found if f["pattern_data"]["stream"].get("cp_id") == "CP_1"]
    cp1 = [f for f in cp1 if f["pattern_data"]["stream"]["metric"] == "current"]
    # The charger's frame carries both readings: the voltage drops out with the current.
    volts_gone = [
        f
        for f in found
        if f["anomaly_type"] == "DROPOUT"
        and f["pattern_data"]["stream"] == {"metric": "voltage", "cp_id": "CP_1", "connector_id": 1}
        and t0 + 288 <= f["timestamp"] <= t0 + 300
    ]
    normal = [f for f in found if f not in cp1 and f not in volts_gone]
    assert len(volts_gone) == 1 and normal == [], normal
    for kind, start, end in FAULTS:
        hits = [
            f
            for f in cp1
            if f["anomaly_type"] == kind and t0 + start - 2 <= f["timestamp"] <= t0 + end + 2
        ]
        assert hits, (kind, [(f["anomaly_type"], f["timestamp"] - t0) for f in cp1])
        data = hits[0]["pattern_data"]
        assert data["detector"] and data["score"] > 0
        assert data["window"]["start"] <= data["window"]["end"]
        assert data["stream"] == {"metric": "current", "cp_id": "CP_1", "connector_id": 1}
        assert hits[0]["severity"] in ("LOW", "MEDIUM", "HIGH", "CRITICAL")
        assert hits[0]["current_value"] is not None and hits[0]["expected_value"] is not None
    # Each fault once: no second finding of a kind outside the faults.
    assert len(cp1) == len(FAULTS), [(f["anomaly_type"], f["timestamp"] - t0) for f in cp1]


def test_history_in_two_runs_has_no_dropout_at_the_end(location, start_daemon, config):
    # The first run's checkpoint is written now, an hour after the data: the second run
    # must not read it as an hour in which every stream fell silent.
    start_daemon(location)
    t0 = time.time() - 3600
    records = lab_records(t0, 600, random.Random(5))
    publish(location, [r for r in records if r[0] < t0 + 250])
    assert detect(location, config, "--once").returncode == 0
    publish(location, [r for r in records if r[0] >= t0 + 250])
    assert detect(location, config, "--once").returncode == 0
    dropouts = [
        (f["pattern_data"]["stream"]["metric"], f["pattern_data"]["stream"]["cp_id"])
        for f in findings(location)
        if f["anomaly_type"] == "DROPOUT"
    ]
    assert sorted(dropouts) == [("current", "CP_1"), ("voltage", "CP_1")]  # the fault's


def test_a_stream_still_warming_up_reports_no_dropout(db_path, start_daemon, config):
    # CP_3 idles at exactly 0 A through its first warm-up (60 readings): it has not shown
    # its noise, so its warm-up goes on, and its silence from 60 s to 90 s is no dropout;
    # its first session starts at 120 s. The detector judges readings' values stream by
    # stream after their arrivals (in time order): the warm-up decision must not wait.
    start_daemon(db_path)
    t0 = time.time() - 3600
    rng = random.Random(3)
    records = []
    for k in range(int(200 * HZ)):
        rel = k / HZ
        records.append((t0 + rel, "current", round(32.0 + rng.gauss(0, 0.5), 2), "CP_1"))
        if not 60 <= rel < 90:
            cp3 = round(32.0 + rng.gauss(0, 0.5), 2) if rel >= 120 else 0.0
            records.append((t0 + rel + 0.1, "current", cp3, "CP_3"))
    publish(db_path, records)
    run = detect(db_path, config, "--once")
    assert run.returncode == 0, run.stderr
    assert [(f["anomaly_type"], f["timestamp"] - t0) for f in findings(db_path)] == []


class Lines:
    """A process's stderr, line by line, as it comes (so a test can wait on what it says)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, args=(proc.stderr,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._arrived:
                self.lines.append(line)
                self._arrived.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        return found
                left = deadline - time.monotonic()
                assert left > 0 and self._arrived.wait(left), f"no {pattern!r} in {self.lines}"


def test_killed_while_its_findings_are_in_the_daemon_reports_nothing_twice(
    db_path, start_daemon, config, tmp_path
):
    # This daemon holds what it receives for 10 s unless someone asks for a commit.
    holding = tmp_path / "daemon.toml"
    holding.write_text("[daemon]\nbatch_seconds = 10\nbatch_rows = 1000000\n")
    daemon = start_daemon(db_path, "--config", str(holding))
    t0 = time.time() - 3600
    records = lab_records(t0, 600, random.Random(9))
    publish(db_path, [r for r in records if r[0] < t0 + 200])
    first = detect(db_path, config, "--once")  # ends with a checkpoint
    assert first.returncode == 0, first.stderr
    later = [r for r in records if r[0] >= t0 + 200]
    publish(db_path, later)
    # Follow mode, no checkpoint due for an hour: it finds, sends, and nothing commits.
    follow = tmp_path / "follow.toml"
    follow.write_text(config.read_text() + "poll_seconds = 0.1\ncheckpoint_seconds = 3600\n")
    follower = subprocess.Popen(
        [sys.executable, "-m", "memory_bank", "detect", "--db", str(db_path)]
        + ["--config", str(follow), "--log-level", "DEBUG"],
        stderr=subprocess.PIPE,
        text=True,
    )
    said = Lines(follower).wait_for(rf"so far {len(later)} readings, 0 events, (\d+) findings")
    sent = int(said[1])
    assert sent >= 3
    deadline = time.monotonic() + 30
    while daemon_stats(db_path)["queue_depth"] < sent:  # received, not committed
        assert time.monotonic() < deadline, daemon_stats(db_path)
    daemon.proc.send_signal(signal.SIGSTOP)  # nothing commits while the detector dies
    follower.send_signal(signal.SIGKILL)
    follower.wait(10)
    resumed = subprocess.Popen(
        [sys.executable, "-m", "memory_bank", "detect", "--db", str(db_path)]
        + ["--config", str(config), "--once", "--log-level", "INFO"],
        stderr=subprocess.PIPE,
        text=True,
    )
    # Once it waits for what the killed run sent (or, were it not to, has read what is
    # stored), the daemon goes on and commits the killed run's findings.
    Lines(resumed).wait_for("what the previous run sent|findings of this instance already")
    daemon.proc.send_signal(signal.SIGCONT)
    assert resumed.wait(120) == 0
    stored = keys(findings(db_path))
    assert len(stored) == len(set(stored)), "a finding was stored twice"
    # The same findings as one uninterrupted run over everything (another instance).
    other = tmp_path / "other.toml"
    other.write_text(config.read_text() + 'instance = "reference"\n')
    assert detect(db_path, other, "--once").returncode == 0
    assert stored == keys(findings(db_path, "reference"))


def cycle_events(pub: Publisher, start: float, cycles: int, period: float) -> list[float]:
    """The demo's cycle: 0 A, 100 A (an anomaly), start, stop; returns the anomaly times."""
    anomalies = []
    for n in range(cycles):
        t = start + n * period
        data = {"cp_id": "CP_1"}
        pub.log_event("OCPP_SET_PROFILE", "CSMS", "0A", {**data, "limit": 0}, timestamp=t)
        pub.log_event("OCPP_SET_PROFILE", "CSMS", "100A", {**data, "limit": 100}, timestamp=t + 1)
        pub.record_anomaly("CURRENT_LIMIT_FLUCTUATION", "HIGH", "0A → 100A",
                           {**data, "cycle": n}, 100.0, 32.0, timestamp=t + 1.01)  # fmt: skip
        pub.log_event("OCPP_REMOTE_START", "CSMS", "start", {**data, "txn": n}, timestamp=t + 2)
        pub.log_event("OCPP_REMOTE_STOP", "CSMS", "stop", {**data, "txn": n}, timestamp=t + 6)
        anomalies.append(t + 1.01)
    return anomalies


def test_cycle_learned_frequency_rises_and_forecast(db_path, start_daemon, config):
    start_daemon(db_path)
    # A minute's period: the cycle counts as stopped three periods after its last start,
    # and a loaded machine can take tens of seconds between the events and the forecast.
    period = 60.0
    start = time.time() - 22 * period - 3
    pub = Publisher(db_path)
    cycle_events(pub, start, 20, period)
    assert pub.close(30)
    assert detect(db_path, config, "--once").returncode == 0
    with MemoryBank(db_path) as memory:
        (pattern,) = memory.get_patterns(pattern_type="EVENT_CYCLE")
        data = pattern["pattern_data"]
        assert abs(data["period_s"] - period) <= 0.05 * period
        assert data["anomalies"][0]["anomaly_type"] == "CURRENT_LIMIT_FLUCTUATION"
        assert data["sequence"][0].startswith("OCPP_SET_PROFILE")
        first_frequency = pattern["frequency"]
        pub = Publisher(db_path)
        anomalies = cycle_events(pub, start + 20 * period, 2, period)
        assert pub.close(30)
        assert detect(db_path, config, "--once").returncode == 0
        (pattern,) = memory.get_patterns(pattern_type="EVENT_CYCLE")
        assert pattern["frequency"] == first_frequency + 2
        result = memory.forecast_anomaly(within_s=period)
    # the first anomaly of the cycle still to come
    expected = anomalies[-1] + math.ceil((result["now"] - anomalies[-1]) / period) * period
    assert result["next_at"] == pytest.approx(expected, abs=0.1 * period)
    assert result["probability"] > 0.5
    view = subprocess.run(
        [sys.executable, "-m", "memory_bank", "view", "--db", str(db_path), "--forecast"]
        + ["--within", str(period), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert view.returncode == 0, view.stderr
    shown = json.loads(view.stdout)
    upcoming = anomalies[-1] + math.ceil((shown["now"] - anomalies[-1]) / period) * period
    assert shown["next_at"] == pytest.approx(upcoming, abs=0.1 * period)
    table = subprocess.run(
        [sys.executable, "-m", "memory_bank", "view", "--db", str(db_path), "--forecast"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "CURRENT_LIMIT_FLUCTUATION" in table.stdout and "probability" in table.stdout


def test_bad_detect_config_is_refused_with_the_key(tmp_path, db_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[detect]\nsensitivity = -1\n")
    run = detect(db_path, bad, "--once")
    assert run.returncode == 2
    assert "detect.sensitivity" in run.stderr and "Traceback" not in run.stderr


def test_second_detector_of_the_same_instance_is_refused(db_path, start_daemon, config):
    config.write_text(config.read_text() + "poll_seconds = 0.1\ncheckpoint_seconds = 1\n")
    start_daemon(db_path)
    publish(db_path, lab_records(time.time() - 100, 20, random.Random(1)))
    follower = subprocess.Popen(
        [sys.executable, "-m", "memory_bank", "detect", "--db", str(db_path)]
        + ["--config", str(config)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not open_reader(db_path).get_events(event_type="DETECT_CHECKPOINT", limit=1):
            assert time.monotonic() < deadline and follower.poll() is None
        second = detect(db_path, config, "--once")
        assert second.returncode == 1
        assert "already reads" in second.stderr and "Traceback" not in second.stderr
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(30)


def test_detect_imports_nothing_heavy(db_path, start_daemon):
    # numpy is installed here (the benchmark's scenarios), so its absence is a choice.
    pytest.importorskip("numpy")
    start_daemon(db_path)
    run = run_python(
        "import runpy, sys\n"
        "sys.argv = ['memorybank', 'detect', '--db', sys.argv[1], '--once']\n"
        "try:\n"
        "    runpy.run_module('memory_bank', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = ('numpy', 'sklearn', 'river', 'scipy', 'pandas', 'matplotlib')\n"
        "print([m for m in heavy if m in sys.modules])\n",
        str(db_path),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
