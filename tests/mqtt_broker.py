"""A real Mosquitto broker on a free loopback port, with persistence so that it can be
stopped and started again under load (a persistent subscriber keeps its queue)."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest


def mosquitto_binary() -> str | None:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_mosquitto() -> str:
    binary = mosquitto_binary()
    if binary is None:
        if os.environ.get("MEMORYBANK_REQUIRE_MOSQUITTO"):
            pytest.fail("mosquitto is not installed, and this run requires it")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    return binary


class Broker:
    def __init__(self, binary: str, folder: Path, port: int):
        self.binary, self.folder, self.port = binary, folder, port
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "max_queued_messages 0\n"
            # Run as root, mosquitto drops to the user 'mosquitto', which cannot write its
            # persistence here (the subscriber's session would not survive a restart).
            f"user {getpass.getuser()}\n"
            f"log_dest file {folder}/mosquitto.log\n"
        )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Broker:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert self.proc.poll() is None, (self.folder / "mosquitto.log").read_text()
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


class Subscriber:
    """A persistent-session subscriber (QoS 1) recording (topic, payload) in arrival order."""

    def __init__(self, broker: Broker, topic: str = "memorybank/#"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="memorybank-test-sub", clean_session=False
        )
        self.client.reconnect_delay_set(0.05, 0.2)

        def on_connect(client, _userdata, _flags, _reason, _props):
            client.subscribe(topic, qos=1)

        def on_subscribe(*_args):
            subscribed.set()

        def on_message(_client, _userdata, message):
            with self.lock:
                self.messages.append((message.topic, message.payload))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "could not subscribe"

    def received(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
