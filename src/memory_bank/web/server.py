"""Serving the dashboard with uvicorn: the loopback rule, then the server until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket

import uvicorn

from ..store import open_reader
from .app import create_app

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TokenRequired(ValueError):
    """Listening beyond this machine without a token."""


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is on this machine alone."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_exposure(host: str, token: str | None) -> None:
    if token is None and not is_loopback(host):
        raise TokenRequired(
            f"--host {host} would serve the dashboard beyond this machine; give it a token "
            "(--token TOKEN, MEMORYBANK_WEB_TOKEN, or web.token in the configuration), "
            "or listen on 127.0.0.1"
        )


class _Server(uvicorn.Server):
    """uvicorn, ending the live streams first when asked to stop (they never end alone),
    exiting normally after SIGINT or SIGTERM (uvicorn re-raises the signal once stopped,
    which turns a requested stop into a failure), and saying where it listens."""

    def __init__(self, config: uvicorn.Config, app, on_ready=None):
        super().__init__(config)
        self.dashboard = app
        self.on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig, frame) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.dashboard.state.feed.close)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.on_ready(f"http://{f'[{host}]' if ':' in host else host}:{port}/")


def serve(location: str, host: str, port: int, token: str | None, on_ready=None) -> None:
    """Serve until SIGINT/SIGTERM. ``on_ready(url)`` is called once the port is bound."""
    check_exposure(host, token)
    app = create_app(location, open_reader(location).check(), token)  # not a database: fail now
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        lifespan="on",
    )
    server = _Server(config, app, on_ready)
    server.run()
    if not server.started:
        raise OSError(f"could not listen on {host}:{port} (see the message above)")
