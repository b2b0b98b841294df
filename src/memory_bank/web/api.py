"""The JSON API: the viewer's data (the same reader queries, the same rows as `-o json`)
behind every part of the page. Endpoints parse, call the reader, and hand rows to the
viewer's own JSON rendering; bad input is a 4xx with ``{"error": message}``."""

from __future__ import annotations

import json
import math
import time

import click
from starlette.requests import Request
from starlette.responses import Response

from .. import formatting
from ..alerts import outbox
from ..alerts.reading import reader_query
from ..store import Reader
from ..store.sql import SESSION_METRICS
from ..summary import firing_alerts
from ..timeutil import parse_when
from ..viewer import Filters

SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
ALERT_STATES = ("firing", "all")
MAX_ROWS = 10_000  # one page of a list; exports are the viewer's job
MAX_POINTS = 5_000  # buckets of a chart: a screen is narrower than this
# Each call reads a bounded number of rows, whatever the database holds (the aim: p99 <=
# 100 ms on the benchmark's 10M rows; a scanned row costs about 0.5 us here):
ROW_BUDGET = 100_000  # rows a chart may scan (about 50 ms); above it, whole minutes
ROLLUP_ROWS = 3_000  # rollup rows a chart may read: minutes up to 50 h, then 10 minutes
EDGE_ROWS = 25_000  # rows a session's statistics may scan at each partial-minute end
MARKER_PIXELS = 6  # a chart's window is cut in slices this wide (points ~ pixels)...
MARKER_SLICES = 400  # ...at most this many, each shown by one anomaly with its count
SLICE_COUNT_UP_TO = 20  # a slice's anomalies are counted up to this ("20+"): zoom for more
SESSION_ANOMALIES = 100  # the newest anomalies of a session listed in its view...
SESSION_COUNT_UP_TO = 10_000  # ...and how many its window holds, counted up to this


class ApiError(Exception):
    """Bad input, answered with its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def json_response(value, status: int = 200) -> Response:
    """An object as the viewer prints one (``json.dumps(..., default=str)``)."""
    return Response(json.dumps(value, default=str), status, media_type="application/json")


def rows_response(rows, columns) -> Response:
    """Rows exactly as `memorybank view -o json` renders them."""
    return Response(
        "\n".join(formatting.render(rows, columns, "json")), media_type="application/json"
    )


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _reader(request: Request) -> Reader:
    return request.app.state.reader


def _whole(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name}: expected a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name}: expected a whole number from {low} to {high}, got {value}")
    return value


def filters(request: Request, anomalies: bool = False) -> Filters:
    """The viewer's filters from the query string: since, until, type, component,
    severity, session. ``type`` is the event type, or the anomaly type for anomalies."""
    q = request.query_params
    severity = (q.get("severity") or "").upper() or None
    if severity is not None and severity not in SEVERITIES:
        raise ApiError(400, f"severity: expected one of {', '.join(SEVERITIES)}, got {severity!r}")
    kind = q.get("type") or None
    try:
        return Filters(
            _reader(request),
            since=q.get("since") or None,
            until=q.get("until") or None,
            component=q.get("component") or None,
            event_type=None if anomalies else kind,
            anomaly_type=kind if anomalies else None,
            severity=severity,
            session=q.get("session") or None,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    except click.UsageError as exc:
        raise ApiError(404, exc.format_message()) from None


def summary(request: Request) -> Response:
    return json_response(_reader(request).get_dashboard_summary())


def events(request: Request) -> Response:
    f = filters(request)
    limit = _whole(request, "limit", 100, 1, MAX_ROWS)
    rows = _reader(request).iter_events(limit, f.since, f.until, f.event_type, f.component)
    return rows_response(rows, formatting.EVENT_COLUMNS)


def anomalies(request: Request) -> Response:
    f = filters(request, anomalies=True)
    limit = _whole(request, "limit", 100, 1, MAX_ROWS)
    rows = _reader(request).iter_anomalies(limit, f.since, f.until, f.anomaly_type, f.severity)
    return rows_response(rows, formatting.ANOMALY_COLUMNS)


def sessions(request: Request) -> Response:
    limit = _whole(request, "limit", 50, 1, MAX_ROWS)
    rows = (formatting.with_duration(s) for s in _reader(request).get_recent_sessions(limit))
    return rows_response(rows, formatting.SESSION_COLUMNS)


def session(request: Request) -> Response:
    """One session: its row, its metrics' statistics over its window, its anomalies (the
    newest, and how many; those recorded in its window, as `view --session` shows them)."""
    reader = _reader(request)
    session_id = request.path_params["session_id"]
    row = reader.get_session(session_id)
    if row is None:
        raise ApiError(404, f"no session {session_id!r} in this database")
    start, end = row["start_time"], row["end_time"]
    # Its window includes its end, as end_session's own statistics do (a microsecond is
    # the finest time either store keeps).
    window_end = (end if end is not None else time.time()) + 1e-6
    statistics, covered_since, covered_until = reader.metric_statistics(
        SESSION_METRICS, start, window_end, EDGE_ROWS
    )
    return json_response(
        {
            "session": formatting.with_duration(row),
            "window": {"since": start, "until": window_end},
            "statistics": statistics,
            "statistics_window": {"since": covered_since, "until": covered_until},
            "anomalies": list(reader.iter_anomalies(SESSION_ANOMALIES, start, window_end)),
            "anomaly_count": reader.count_up_to(
                "anomalies", start, window_end, SESSION_COUNT_UP_TO
            ),
            "anomaly_count_up_to": SESSION_COUNT_UP_TO,
        }
    )


def patterns(request: Request) -> Response:
    q = request.query_params
    min_frequency = _whole(request, "min_frequency", 1, 1, 1 << 62)
    limit = _whole(request, "limit", 100, 1, MAX_ROWS)
    rows = _reader(request).get_patterns(q.get("type") or None, min_frequency)[:limit]
    return rows_response(rows, formatting.PATTERN_COLUMNS)


def metric_names(request: Request) -> Response:
    return json_response(_reader(request).metric_names())


def _unit(reader: Reader, name: str, buckets: list[dict], origin: float, width: float):
    """The unit of a row in the first bucket with data: one bucket to look through, where
    a search of the whole window would pass every row of denser metrics (no name index)."""
    if not buckets:
        return None
    start = origin + buckets[0]["bucket"] * width
    rows = reader.get_metrics(name, start, 1, start + width)
    return rows[0]["unit"] if rows else None


def bucket_grid(
    since: float, until: float, points: int, minimum: float = 0.0
) -> tuple[float, float, int]:
    """(origin, width, count): at most ``points`` buckets, ``minimum`` seconds wide or more,
    covering [since, until). Buckets of a minute or more are whole minutes (whole
    ``minimum``s, when that is a rollup's slice of more than a minute) on a grid of their
    width, so a chart refreshed a few seconds later keeps its buckets, and the store can
    answer from its rollups."""
    width = max((until - since) / points, minimum)
    if width < 60:
        return since, width, points
    step = max(60, minimum)
    width = math.ceil(width / step) * step
    while True:
        origin = math.floor(since / width) * width
        count = math.ceil((until - origin) / width)
        if count <= points:
            return origin, width, count
        width += step


def rollup_slice(reader: Reader, window: float) -> float:
    """The finest rollup slice of which a chart of ``window`` reads at most ROLLUP_ROWS
    (the coarsest when none is that few); a minute where the store keeps no rollup."""
    tiers = reader.rollup_seconds()
    for seconds in tiers:
        if window / seconds <= ROLLUP_ROWS:
            return seconds
    return tiers[-1] if tiers else 60


def metric(request: Request) -> Response:
    """A metric over a window, bucketed in SQL (avg, min, max, count per bucket), with the
    anomalies of the window: what the chart draws. The window is cut in slices a marker
    wide; each slice holding anomalies is shown by its most severe (of its newest few) and
    how many it holds, so every part of a week with anomalies is marked in bounded time;
    zooming in shows more of them."""
    reader = _reader(request)
    name = request.path_params["name"]
    q = request.query_params
    now = time.time()
    try:
        since = parse_when(q.get("since") or "1h", now)
        until = parse_when(q["until"], now) if q.get("until") else now
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    if until <= since:
        raise ApiError(400, "until must be later than since")
    points = _whole(request, "points", 1000, 1, MAX_POINTS)
    # Finer than a minute only where the window holds few enough rows to scan quickly;
    # denser windows are drawn from whole slices of the store's rollups (a minute, or 10
    # minutes over days), or whole minutes of rows where it keeps none.
    rows = reader.estimate_metric_rows(name, since, until)
    minimum = rollup_slice(reader, until - since) if (rows or 0) > ROW_BUDGET else 0
    origin, width, count = bucket_grid(since, until, points, minimum)
    buckets = reader.metric_buckets(name, origin, origin + count * width, count)
    slices = min(MARKER_SLICES, max(1, points // MARKER_PIXELS))
    marked = reader.anomaly_slices(since, until, slices, SLICE_COUNT_UP_TO)[::-1]
    slice_seconds = (until - since) / slices
    return json_response(
        {
            "metric": name,
            "unit": _unit(reader, name, buckets, origin, width),
            "since": since,
            "until": until,
            "points": points,
            "origin": origin,
            "bucket_seconds": width,
            "buckets": buckets,
            "anomalies": [m["anomaly"] for m in marked],
            "anomaly_slices": [
                {
                    "since": since + m["slice"] * slice_seconds,
                    "until": since + (m["slice"] + 1) * slice_seconds,
                    "count": m["count"],
                }
                for m in marked
            ],
            "anomaly_count_up_to": SLICE_COUNT_UP_TO,
        }
    )


def alerts(request: Request) -> Response:
    """``state=firing`` (the default): the rules firing now, per group, as `memorybank
    alerts --firing -o json` lists them; ``state=all``: the recent notifications, newest
    first, a row per sink, as `memorybank alerts -o json`. Both with their ``severity``."""
    q = request.query_params
    state = (q.get("state") or "firing").lower()
    if state not in ALERT_STATES:
        raise ApiError(400, f"state: expected one of {', '.join(ALERT_STATES)}, got {state!r}")
    limit = _whole(request, "limit", 50, 1, MAX_ROWS)
    rule = q.get("rule") or None
    reader = _reader(request)
    if state == "all":
        return json_response(outbox.recent(reader_query(reader), limit, rule))
    return json_response([a for a in firing_alerts(reader) if rule in (None, a["rule"])][:limit])
