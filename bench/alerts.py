#!/usr/bin/env python3
"""Alerts and streams under load, in one run on this machine.

    python bench/alerts.py              # the full run (about a minute)
    python bench/alerts.py --quick      # a short form that keeps the benchmark working
    python bench/alerts.py --json out.json

(1) commit -> webhook POST received: a probe anomaly every 50 ms fires a rule whose
webhook is a local HTTP receiver, while two load processes publish 10,000 records/s in
all. Reported from the notification's ``at`` (stamped inside the batch's transaction, just
before its COMMIT) to the POST's arrival, and from the probe's publish call to the arrival.
(2) ingest with five rules and the MQTT stream of every committed record on, against the
same workload with them off, alternating daemons in the same run: records committed per
second, two publisher processes, and the daemon's CPU time per record (all its threads,
from when it is ready until the stream has sent everything: steadier than rates on a
shared machine).
Both sides do the same work up to the commit; the "on" side also evaluates the rules in
each batch's transaction, writes their outbox rows and the stream's log, delivers their
notifications and streams each record to Mosquitto (when installed; the report says when
it is not), once with one message per record and once with ``stream_batch = true``, each
with the stream in the daemon and, where the source has it, in a process of its own
(``stream_process = true``: that process's CPU is reported beside the daemon's, not in
it). For the stream: its rate (from the first publish call to the broker's last
acknowledgement) and how many records it was behind when the last one was committed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import LOAD, PUBLISHER, percentile  # noqa: E402

from memory_bank import Publisher  # noqa: E402
from memory_bank.control import daemon_stats, wait_for_daemon  # noqa: E402

PY = sys.executable

FIVE_RULES = """
[[alerts]]
name = "critical-anomaly"
when = "anomaly"
severity = ["HIGH", "CRITICAL"]
notify = ["hook"]

[[alerts]]
name = "overcurrent"
when = "metric"
metric = "current"
above = 80.0
for = "2s"
notify = ["hook"]

[[alerts]]
name = "anomaly-storm"
when = "rate"
anomaly_type = "CURRENT_LIMIT_FLUCTUATION"
count = 5
within = "1m"
notify = ["hook"]

[[alerts]]
name = "charger-silent"
when = "absence"
metric = "current"
for = "10s"
notify = ["hook"]

[[alerts]]
name = "frame-storm"
when = "rate"
event_type = "CAN_RX"
count = 1000
within = "1s"
notify = ["hook"]
"""
PROBE_RULE = """
[[alerts]]
name = "probe"
when = "anomaly"
anomaly_type = "PROBE"
group = "probe"
notify = ["hook"]
"""

# The stream in a process of its own (stream_process), where the source has it: the same
# five rules and stream, once per message kind.
PROCESS_SIDES = {
    "on_process": "stream_process = true\n",
    "on_process_batch": "stream_batch = true\nstream_process = true\n",
}


def process_streams() -> bool:
    """Whether the memory_bank measured has ``stream_process`` (main's source may not)."""
    from memory_bank.alerts import rules

    return "stream_process" in rules.Sink.__dataclass_fields__


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """The webhook's other side: arrival time of each notification, by id."""

    def __init__(self):
        self.arrivals: list[tuple[float, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.arrivals.append((time.time(), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


class Mosquitto:
    def __init__(self, folder: Path):
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.folder = folder
        self.port = free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
        )
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def available_mosquitto() -> bool:
    return bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())


@contextmanager
def local_broker(prefix: str):
    """A Mosquitto in a temporary folder of its own (``.folder``), removed afterwards."""
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(broker.folder, ignore_errors=True)


def process_cpu(pid: int) -> float | None:
    """A process's CPU time (user + system, all its threads; Linux), None once it ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The running child processes of ``pid`` (the stream's, with ``stream_process``)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += map(int, (task / "children").read_text().split())
        except OSError:
            pass
    return found


class Daemon:
    def __init__(self, db: Path, config: Path | None):
        args = [PY, "-m", "memory_bank", "daemon", "--db", str(db), "--log-level", "WARNING"]
        if config is not None:
            args += ["--config", str(config)]
        self.proc = subprocess.Popen(args)
        wait_for_daemon(db, timeout=60)
        deadline = time.monotonic() + 60
        while not all(  # a stream process has started (its imports are its start-up too)
            s.get("process", {}).get("ready", True)
            for s in (daemon_stats(db).get("alerts") or {}).get("streams", {}).values()
        ):
            assert time.monotonic() < deadline, "the stream's process did not start"
            time.sleep(0.02)
        self._started = self._cpu()

    def _cpu(self) -> dict[int, float]:
        return {
            pid: cpu
            for pid in [self.proc.pid, *children(self.proc.pid)]
            if (cpu := process_cpu(pid)) is not None
        }

    def cpu_seconds(self) -> tuple[float, float] | None:
        """The daemon's CPU time (user + system; Linux), all its threads, since it was
        ready, and its child processes' (a stream's): on a shared machine a steadier
        measure of its work than the wall clock. Its start-up (imports, connections:
        bench/run.py measures it) is left out, so the figure is the work per record, not
        shared out over however many records ran. Read before the daemon stops."""
        now = self._cpu()
        if self.proc.pid not in now:
            return None
        spent = {pid: cpu - self._started.get(pid, 0.0) for pid, cpu in now.items()}
        own = spent.pop(self.proc.pid)
        return own, sum(spent.values())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


# -- (1) commit -> POST received --------------------------------------------------------
def latency(work: Path, rate: float, seconds: float, probes: int) -> dict:
    receiver = Receiver()
    cfg = work / "latency.toml"
    cfg.write_text(PROBE_RULE + f'\n[sinks.hook]\ntype = "webhook"\nurl = "{receiver.url}"\n')
    db = work / "latency.db"
    daemon = Daemon(db, cfg)
    loads = [
        subprocess.Popen([PY, "-c", LOAD, str(db), str(seconds + 2), str(rate / 2), str(HERE)])
        for _ in range(2)
    ]
    time.sleep(1.0)
    sent: dict[int, float] = {}
    with Publisher(db) as pub:
        gap = seconds / probes
        for k in range(probes):
            sent[k] = time.time()
            pub.record_anomaly("PROBE", "HIGH", "probe", {"probe": k})
            time.sleep(gap)
        pub.flush(60)
    for load in loads:
        load.wait(timeout=600)
    deadline = time.monotonic() + 30
    while len(receiver.arrivals) < probes and time.monotonic() < deadline:
        time.sleep(0.05)
    committed = daemon_stats(db)["committed_records"]
    daemon.stop()
    receiver.server.shutdown()
    from datetime import datetime

    from_commit, from_call = [], []
    for arrived, body in receiver.arrivals:
        at = datetime.fromisoformat(body["at"]).timestamp()
        from_commit.append((arrived - at) * 1000)
        from_call.append((arrived - sent[body["record"]["pattern_data"]["probe"]]) * 1000)
    return {
        "load_rate_per_second": round(rate),
        "load_committed": committed,
        "probes": probes,
        "received": len(receiver.arrivals),
        "commit_to_post_p50_ms": round(percentile(from_commit, 0.5), 2),
        "commit_to_post_p99_ms": round(percentile(from_commit, 0.99), 2),
        "commit_to_post_max_ms": round(max(from_commit), 2),
        "call_to_post_p50_ms": round(percentile(from_call, 0.5), 2),
        "call_to_post_p99_ms": round(percentile(from_call, 0.99), 2),
    }


# -- (2) ingest with alerts and the stream on / off ---------------------------------------
def ingest(work: Path, label: str, config: Path | None, per_publisher: int) -> dict:
    """Records committed per second; with a stream, also how far behind it was when the
    last record was committed, and its own rate (every record acknowledged by the broker)."""
    db = work / f"ingest-{label}.db"
    daemon = Daemon(db, config)
    start_at = time.time() + 1.0
    procs = [
        subprocess.Popen(
            [PY, "-c", PUBLISHER, str(db), str(per_publisher), repr(start_at), str(HERE), "memory"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    reports = [json.loads(p.communicate(timeout=1800)[0]) for p in procs]
    first = min(r["first_call"] for r in reports)
    last = max(r["acked"] for r in reports)
    out = {"ingest": 2 * per_publisher / (last - first)}
    streams = (daemon_stats(db).get("alerts") or {}).get("streams")
    if streams:
        out["stream_pending_at_end"] = sum(s["pending"] for s in streams.values())
        deadline = time.monotonic() + 600
        while any(s["pending"] for s in streams.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
            streams = daemon_stats(db)["alerts"]["streams"]
        published = sum(s["published"] for s in streams.values())
        out["stream"] = published / (time.time() - first)
    cpu = daemon.cpu_seconds()
    if cpu is not None:
        out["daemon_cpu_us_per_record"] = cpu[0] / (2 * per_publisher) * 1e6
        out["stream_process_cpu_us_per_record"] = cpu[1] / (2 * per_publisher) * 1e6
    daemon.stop()
    return out


def ingest_ratio(work: Path, per_publisher: int, rounds: int) -> dict:
    """Off, the five rules alone, on (one message per streamed record) and on with
    ``stream_batch = true`` (one JSON array per topic and committed batch), each also with
    ``stream_process = true`` where the source has it, alternated round by round."""
    receiver = Receiver()
    broker = Mosquitto(work) if available_mosquitto() else None
    sinks = f'\n[sinks.hook]\ntype = "webhook"\nurl = "{receiver.url}"\n'
    configs: dict[str, Path | None] = {"off": None, "rules": work / "rules.toml"}
    configs["rules"].write_text(FIVE_RULES + sinks)  # what the rules alone cost
    if broker is not None:
        sinks += (
            f'\n[sinks.broker]\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
            'stream = ["events", "anomalies", "metrics"]\n'
        )
    sides = {"on": "", "on_batch": "stream_batch = true\n"}
    if broker is not None and process_streams():  # the stream in the daemon, or apart
        sides = {side: f"{options}stream_process = false\n" for side, options in sides.items()}
        sides |= PROCESS_SIDES
    elif broker is None:
        del sides["on_batch"]
    for side, options in sides.items():
        configs[side] = work / f"{side}.toml"
        configs[side].write_text(FIVE_RULES + sinks + options)
    results: dict[str, list[dict]] = {side: [] for side in configs}
    for r in range(rounds):
        for side, config in configs.items():
            results[side].append(ingest(work, f"{side}{r}", config, per_publisher))
    if broker is not None:
        broker.stop()
    receiver.server.shutdown()
    off = statistics.median(x["ingest"] for x in results["off"])
    out = {
        "records_per_side_per_round": 2 * per_publisher,
        "rounds": rounds,
        "off_records_per_second": round(off),
        "mqtt_stream": "on" if broker is not None else "not measured (no mosquitto)",
        "notifications_received": len(receiver.arrivals),
    }
    for side in configs:
        if side == "off":
            continue
        rate = statistics.median(x["ingest"] for x in results[side])
        out[f"{side}_records_per_second"] = round(rate)
        out[f"{side}_over_off"] = round(rate / off, 3)
        if "daemon_cpu_us_per_record" in results[side][0]:
            cpu = {
                k: statistics.median(x["daemon_cpu_us_per_record"] for x in results[k])
                for k in ("off", side)
            }
            out["off_daemon_cpu_us_per_record"] = round(cpu["off"], 1)
            out[f"{side}_daemon_cpu_us_per_record"] = round(cpu[side], 1)
            out[f"{side}_stream_process_cpu_us_per_record"] = round(
                statistics.median(x["stream_process_cpu_us_per_record"] for x in results[side]),
                1,
            )
        if "stream" in results[side][0]:
            out[f"{side}_stream_records_per_second"] = round(
                statistics.median(x["stream"] for x in results[side])
            )
            out[f"{side}_stream_behind_at_last_commit"] = max(
                x["stream_pending_at_end"] for x in results[side]
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mb-bench-alerts-"))
    try:
        if args.quick:
            results = {
                "latency": latency(work, 10_000, 2.0, 20),
                "ingest": ingest_ratio(work, 20_000, 1),
            }
        else:
            results = {
                "latency": latency(work, 10_000, 20.0, 400),
                "ingest": ingest_ratio(work, 100_000, 3),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lat, ing = results["latency"], results["ingest"]
    print(
        f"commit -> webhook POST at {lat['load_rate_per_second']} rec/s background: "
        f"p50 {lat['commit_to_post_p50_ms']} ms, p99 {lat['commit_to_post_p99_ms']} ms, "
        f"max {lat['commit_to_post_max_ms']} ms ({lat['received']}/{lat['probes']} probes; "
        f"publish call -> POST p99 {lat['call_to_post_p99_ms']} ms)"
    )
    stream = f"five rules + MQTT stream ({ing['mqtt_stream']}"
    for side, what in (
        ("rules", "five rules alone (webhook sink, no stream)"),
        ("on", f"{stream}, one message per record)"),
        ("on_batch", f"{stream}, stream_batch)"),
        ("on_process", f"{stream}, one message per record, stream_process)"),
        ("on_process_batch", f"{stream}, stream_batch, stream_process)"),
    ):
        if f"{side}_records_per_second" not in ing:
            continue
        line = (
            f"ingest with {what}: "
            f"{ing[side + '_records_per_second']} rec/s against {ing['off_records_per_second']} "
            f"off: {ing[side + '_over_off']}x"
        )
        if side + "_daemon_cpu_us_per_record" in ing:
            line += (
                f"; daemon CPU {ing[side + '_daemon_cpu_us_per_record']} us/record against "
                f"{ing['off_daemon_cpu_us_per_record']} off"
            )
            if "process" in side:
                line += f" (+ {ing[side + '_stream_process_cpu_us_per_record']} its stream's)"
        if side + "_stream_records_per_second" in ing:
            line += (
                f"; stream {ing[side + '_stream_records_per_second']} rec/s acknowledged (first "
                f"publish call to last acknowledgement), "
                f"{ing[side + '_stream_behind_at_last_commit']} behind at the last commit"
            )
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
