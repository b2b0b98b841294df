"""`memorybank web` as a subprocess, and Debian's Chromium driven by Playwright, for tests."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlparse

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_session():
    """Headless Chromium for the life of a fixture (``yield from chromium_session()``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def launch_chromium(playwright):
    """Headless Chromium from the machine (Playwright cannot download its own here)."""
    import pytest

    if not os.path.exists(CHROMIUM):
        if os.environ.get("MEMORYBANK_REQUIRE_CHROMIUM"):
            pytest.fail(f"{CHROMIUM} is not installed, and this run requires it")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class WebServer:
    """`memorybank web --port 0` on a database; ``url`` once it listens."""

    def __init__(self, db, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memory_bank", "web", "--db", str(db), "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put("")

    def _wait_for_url(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line == "":
                raise AssertionError(f"memorybank web exited: {''.join(self.output)}")
            if line.startswith("serving ") and " on http://" in line:
                return line.rsplit(" on ", 1)[1].strip()
        raise AssertionError(f"memorybank web did not start: {''.join(self.output)}")

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, object]:
        """(status, headers, body as JSON when it is JSON, else text)."""
        request = urllib.request.Request(self.url.rstrip("/") + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, head, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            status, head, raw = exc.code, dict(exc.headers), exc.read()
        text = raw.decode()
        if head.get("content-type", "").startswith("application/json"):
            return status, head, json.loads(text)
        return status, head, text

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT, as Ctrl-C; returns the exit status (the server must not hang on streams)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("memorybank web did not stop within 20 s of SIGINT") from None


class SseClient:
    """A plain HTTP client reading /api/stream event by event (as EventSource does)."""

    def __init__(self, url: str, last_event_id: str | None = None, query: str = ""):
        parts = urlparse(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.conn.request("GET", "/api/stream" + query, headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.headers["content-type"].startswith("text/event-stream")

    def next_event(self, deadline: float | None = None) -> dict:
        """The next event with a name (comments and retry lines skipped); an AssertionError
        when none came by ``deadline`` (time.monotonic(); heartbeats keep the connection
        itself alive, so its read timeout never fires)."""
        fields: dict = {}
        while deadline is None or time.monotonic() < deadline:
            line = self.response.readline().decode()
            if line == "":
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line == "":
                if "event" in fields:
                    return fields
                fields = {}
                continue
            name, _, value = line.partition(":")
            if name:
                fields[name] = value.lstrip(" ")
        raise AssertionError("no event in time")

    def next_records(self, within: float | None = None) -> tuple[str, dict]:
        """The next ``records`` event; with ``within``, it must come in that many seconds."""
        return self.next_of("records", within)

    def next_of(self, kind: str, within: float | None = None) -> tuple[str, dict]:
        """(id, data) of the next ``kind`` event; with ``within``, it must come in that many
        seconds."""
        deadline = None if within is None else time.monotonic() + within
        while True:
            event = self.next_event(deadline)
            if event["event"] == kind:
                return event["id"], json.loads(event["data"])

    def close(self) -> None:
        self.conn.close()


def served_lab(request, tmp_path_factory, fill):
    """For a module fixture parametrized with "sqlite" and "postgresql": a daemon serving a
    fresh database of that store, filled by ``fill(db)``, and `memorybank web` over it.
    Yields (web, db, what fill returned)."""
    from conftest import DaemonProcess

    if request.param == "sqlite":
        db = tmp_path_factory.mktemp("lab") / "lab.db"
    else:
        db = request.getfixturevalue("pg_server").create_database("w" + uuid.uuid4().hex[:12])
    daemon = DaemonProcess(db).wait_ready()
    filled = fill(db)
    web = WebServer(db)
    yield web, db, filled
    assert web.stop() == 0, "".join(web.output)
    daemon.stop()
