"""The ASGI application: the page, its static files, the JSON API and the live stream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from pathlib import Path

import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..store import Reader, StoreUnavailable
from . import api
from .alerts import AlertFollower
from .auth import TokenGate
from .live import LiveFeed, StreamFilter, stream

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
# Reader threads: each holds one read-only connection; a page makes a handful of calls.
READER_THREADS = 8


def _endpoint(handler):
    """A reader call in a worker thread (the store is synchronous), errors as JSON."""

    async def endpoint(request: Request) -> Response:
        try:
            return await run_in_threadpool(handler, request)
        except api.ApiError as exc:
            return api.error_response(exc.status, str(exc))
        except StoreUnavailable as exc:
            return api.error_response(503, str(exc))
        except Exception as exc:  # still JSON, and logged with its traceback
            log.exception("%s failed", request.url.path)
            return api.error_response(500, f"{type(exc).__name__}: {exc}")

    return endpoint


async def _stream(request: Request) -> Response:
    q = request.query_params
    wanted = StreamFilter(
        q.get("type") or None, q.get("component") or None, (q.get("severity") or "").upper() or None
    )
    feed: LiveFeed = request.app.state.feed
    return StreamingResponse(
        stream(feed, wanted, request.headers.get("last-event-id")),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _status(request: Request) -> Response:
    feed: LiveFeed = request.app.state.feed
    return api.json_response(
        {
            "database": feed.name,
            "version": __version__,
            **feed.status(),
            "streams": len(feed.subscribers),
            "last_event_id": feed.event_id(feed.seq),
        }
    )


FIRST_SUMMARY = '<script id="first-summary" type="application/json"></script>'


async def _page(request: Request) -> Response:
    """The page, with the summary inside it: its cards are filled from the first response,
    not from a request that waits for the page's scripts and competes with the chart's."""
    page = request.app.state.page
    try:
        summary = await run_in_threadpool(request.app.state.reader.get_dashboard_summary)
    except Exception as exc:  # the page still loads, and its cards ask the API
        log.warning("the page goes without its summary: %s", exc)
    else:
        data = json.dumps(summary, default=str).replace("<", "\\u003c")  # no "</script>"
        page = page.replace(FIRST_SUMMARY, FIRST_SUMMARY.replace("><", f">{data}<"))
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


class PackagedFiles:
    """The page's scripts, styles and chart library, read once from the package and served
    from memory with an ETag. Starlette's StaticFiles stats and reads each file on worker
    threads (the readers' 8), about 4 ms of CPU a file here; a page load asks for eight, so
    under load its first paint waited on them."""

    TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

    def __init__(self, folder: Path):
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                body = path.read_bytes()
                kind = self.TYPES.get(path.suffix, "text/plain")
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                self.files[path.relative_to(folder).as_posix()] = (body, kind, etag)

    async def __call__(self, scope, receive, send) -> None:
        found = self.files.get(scope["path_params"]["path"])
        if found is None:
            raise HTTPException(404, f"no file {scope['path']!r} here")
        body, kind, etag = found
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if Request(scope).headers.get("if-none-match") == etag:
            response = Response(status_code=304, headers=headers)
        else:
            response = Response(body, media_type=kind, headers=headers)
        await response(scope, receive, send)


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # the handler of HTTPException only
    return api.error_response(exc.status_code, exc.detail)


def create_app(location: str, reader: Reader, token: str | None = None) -> Starlette:
    """The dashboard over ``reader`` (read queries on ``location``), guarded by ``token``."""
    feed = LiveFeed(location, summarize=reader.get_dashboard_summary, alerts=AlertFollower(reader))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        anyio.to_thread.current_default_thread_limiter().total_tokens = READER_THREADS
        await asyncio.to_thread(feed.place_alerts)
        follower = asyncio.create_task(feed.run())
        try:
            yield
        finally:
            feed.close()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(follower, 5)
            reader.close()

    routes = [
        Route("/", _page),
        Route("/api/summary", _endpoint(api.summary)),
        Route("/api/events", _endpoint(api.events)),
        Route("/api/anomalies", _endpoint(api.anomalies)),
        Route("/api/sessions", _endpoint(api.sessions)),
        Route("/api/sessions/{session_id:path}", _endpoint(api.session)),
        Route("/api/patterns", _endpoint(api.patterns)),
        Route("/api/alerts", _endpoint(api.alerts)),
        Route("/api/metrics", _endpoint(api.metric_names)),
        Route("/api/metrics/{name:path}", _endpoint(api.metric)),
        Route("/api/stream", _stream),
        Route("/api/status", _status),
        Route("/static/{path:path}", PackagedFiles(STATIC), methods=["GET", "HEAD"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TokenGate, token=token)],
        exception_handlers={HTTPException: _not_found},
        lifespan=lifespan,
    )
    app.state.reader = reader
    app.state.feed = feed
    app.state.page = (STATIC / "index.html").read_text(encoding="utf-8")
    return app
