#!/usr/bin/env python3
"""What paho-mqtt itself costs per QoS 1 message, as the stream uses it, on this machine.

    python bench/paho_publish.py            # 20,000 messages a side, two rounds
    python bench/paho_publish.py --quick

A local Mosquitto; messages published in windows of 2,000 (the stream's WINDOW, the most it
keeps in flight) and each window waited on whole until the broker acknowledged every
message. The stream itself no longer waits a window out: its window slides, each
acknowledgement making room for the next message (bench/mqtt_stream.py measures the stream
so); this script keeps the whole-window wait to isolate paho's CPU per message. Two
ways of driving paho, alternated: its own network thread (``loop_start()``, as the stream
does) and ``loop()`` called from the publishing thread (no second thread, no wake-up per
message). Reported: CPU time of the process per message (all threads) and messages
acknowledged per second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import paho.mqtt.client as mqtt  # noqa: E402
from alerts import local_broker  # noqa: E402

WINDOW = 2000
TOPIC = "memorybank/metrics/current"
PAYLOAD = (
    b'{"id": 4294967299, "timestamp": 1795647500.05, "metric_name": "current", '
    b'"metric_value": 35.0, "unit": "A", "metadata": {"connector_id": 1}, '
    b'"created_at": "2026-11-26 01:00:00"}'
)


def client(port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
    c.max_inflight_messages_set(0)
    c.connect("127.0.0.1", port)
    return c


def measure(port: int, n: int, threaded: bool) -> tuple[float, float]:
    c = client(port, f"bench-{'thread' if threaded else 'loop'}")
    if threaded:
        c.loop_start()
    while not c.is_connected():
        time.sleep(0.01) if threaded else c.loop(0.01)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(0, n, WINDOW):
        infos = [c.publish(TOPIC, PAYLOAD, qos=1) for _ in range(WINDOW)]
        if threaded:
            for info in infos:
                info.wait_for_publish(30)
        else:
            while not all(info.is_published() for info in infos):
                c.loop(1.0)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if threaded:
        c.loop_stop()
    c.disconnect()
    return cpu / n * 1e6, n / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (4000, 1) if args.quick else (20_000, 2)
    with local_broker("mb-bench-paho-") as broker:
        for _ in range(rounds):
            for threaded in (True, False):
                cpu, rate = measure(broker.port, n, threaded)
                how = "paho's network thread" if threaded else "loop() in the caller  "
                print(f"{how}: {cpu:.1f} us CPU per message, {rate:,.0f} messages/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
