"""A real HTTP receiver for webhook tests: records every JSON POST; can be stopped and
started again on the same port (a receiver that goes away and comes back)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, port: int):
        self.port = port
        self.bodies: list[dict] = []
        self.arrived: list[float] = []  # time.time() of each POST, in order
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.bodies.append(body)
                    receiver.arrived.append(time.time())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def received(self) -> list[dict]:
        with self.lock:
            return list(self.bodies)

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "notifications") -> list:
        """Wait until ``predicate(bodies)`` holds; fail with what arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bodies = self.received()
            if predicate(bodies):
                return bodies
            time.sleep(0.02)
        raise AssertionError(f"{what} did not arrive in {timeout}s; got {len(self.received())}")
