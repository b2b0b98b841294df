"""The viewer: the seed's memory_viewer (flags and interactive menu), plus what journalctl
users expect: time filters, --follow, machine-readable output, full streaming export, and
a terminal plot. Reads only, over read-only connections; formatting is formatting.py's.

    memory-viewer --db ev.db --summary            (the seed's flags, unchanged)
    memorybank view --events 50 --since 2h --severity HIGH -o jsonl
    memorybank view --follow
    memorybank view plot current --since 10m [--png current.png]
"""

from __future__ import annotations

import json
import shutil
import sys
import time

import click

from . import discovery, formatting
from .cli_common import (
    ErrorBoundary,
    click_option,
    db_option,
    output_option,
    remember_db,
    report,
    require_database,
)
from .cli_options import SUMMARY
from .export import export_size, write_export
from .store import Reader, open_reader
from .summary import firing_alerts, summary_lines, titled
from .timeutil import parse_when

STATS_WINDOWS = [
    ("last minute", 60),
    ("last 10 minutes", 600),
    ("last hour", 3600),
    ("last 24 hours", 86400),
    ("all time", None),
]


class Filters:
    """The filters every view shares (parsed once, from the command line or the menu)."""

    def __init__(
        self,
        reader: Reader,
        since=None,
        until=None,
        component=None,
        event_type=None,
        anomaly_type=None,
        severity=None,
        session=None,
    ):
        self.since = parse_when(since) if since else None
        self.until = parse_when(until) if until else None
        self.component, self.event_type = component, event_type
        self.anomaly_type, self.severity = anomaly_type, severity
        if session:
            found = reader.get_session(session)
            if found is None:
                raise click.UsageError(f"no session {session!r} in this database")
            self.since = max(self.since or found["start_time"], found["start_time"])
            if found["end_time"] is not None:
                self.until = min(self.until or found["end_time"], found["end_time"])


class Viewer:
    """Each view: rows from the reader -> formatting.render -> echo."""

    def __init__(self, db: str, output: str = "table", color: bool | None = None):
        self.db = db
        self.path = discovery.location_key(db)
        self.name = discovery.display_name(db)
        require_database(db)  # exit status 2, and nothing is created
        self.reader = open_reader(db).check()
        self.output = output
        self.color = sys.stdout.isatty() if color is None else color
        self.width = shutil.get_terminal_size((120, 24)).columns

    def emit(self, rows, columns, title: str | None = None, empty="(none)") -> None:
        for line in titled(rows, columns, title, self.output, self.color, self.width, empty):
            click.echo(line, color=self.color)

    # -- the seed's views -------------------------------------------------------------
    def summary(self) -> None:
        lines = summary_lines(self.reader, self.output, self.color, self.width)
        for line in lines:
            click.echo(line, color=self.color)

    def firing_alerts(self) -> list[dict]:
        return firing_alerts(self.reader)

    def events(self, limit: int | None, f: Filters) -> None:
        rows = self.reader.iter_events(limit, f.since, f.until, f.event_type, f.component)
        self.emit(rows, formatting.EVENT_COLUMNS, f"Recent events (up to {limit})")

    def anomalies(self, limit: int | None, f: Filters) -> None:
        rows = self.reader.iter_anomalies(limit, f.since, f.until, f.anomaly_type, f.severity)
        self.emit(rows, formatting.ANOMALY_COLUMNS, f"Recent anomalies (up to {limit})")

    def sessions(self, limit: int) -> None:
        rows = (formatting.with_duration(s) for s in self.reader.get_recent_sessions(limit))
        self.emit(rows, formatting.SESSION_COLUMNS, f"Sessions (up to {limit})")

    def patterns(self) -> None:
        self.emit(self.reader.get_patterns(), formatting.PATTERN_COLUMNS, "Learned patterns")

    def forecast(self, within_s: float) -> None:
        """When the next anomaly is due, from the cycles `memorybank detect` learned."""
        from .detect.cycles import PATTERN_TYPE
        from .detect.forecast import forecast

        result = forecast(self.reader.get_patterns(pattern_type=PATTERN_TYPE), within_s)
        if self.output != "table":
            click.echo(json.dumps(result))
            return
        columns = [
            formatting.Column("anomaly_type", "ANOMALY"),
            formatting.Column("scope", "SCOPE", formatting.compact_json),
            formatting.Column("next_at", "NEXT AT", formatting.when),
            formatting.Column("next_in_s", "IN S", formatting.number, align_right=True),
            formatting.Column("probability", f"P(<{within_s:g}s)", formatting.number),
            formatting.Column("period_s", "PERIOD S", formatting.number, align_right=True),
            formatting.Column("confidence", "CONFIDENCE", formatting.number),
            formatting.Column("stale", "STALE", str),
        ]
        self.emit(result["patterns"], columns, "Anomaly forecast (learned cycles)")
        click.echo(
            f"probability of an anomaly within {within_s:g}s: {result['probability']:.0%}"
            + (f"; next due in {result['next_in_s']:.1f}s" if result["next_at"] else "")
        )

    def stats(self, metric: str, f: Filters) -> None:
        now = time.time()
        rows = []
        for label, seconds in STATS_WINDOWS:
            since = f.since if seconds is None else max(now - seconds, f.since or 0)
            stats = self.reader.get_metric_statistics(metric, since, f.until)
            rows.append({"window": label, **stats})
        self.emit(rows, formatting.STATS_COLUMNS, f"Statistics of '{metric}'")

    def export(self, path: str, fmt: str | None, f: Filters) -> dict[str, int]:
        """Every table in full, streamed; a progress bar on a terminal for large exports."""
        fmt = fmt or ("jsonl" if path.endswith(".jsonl") else "json")
        total = export_size(self.reader, f.since, f.until)
        with open(path, "w", encoding="utf-8") as out:
            if not (sys.stderr.isatty() and total > 10_000):
                return write_export(self.reader, out, f.since, f.until, fmt)
            label = f"exporting {total} rows"
            with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
                return write_export(self.reader, out, f.since, f.until, fmt, bar.update)

    # -- beyond the seed --------------------------------------------------------------
    def follow(self, f: Filters, backlog: int = 10) -> None:
        """Print the last lines, then events and anomalies as they are committed."""
        import zmq

        from . import sockets, wire

        info = discovery.read_daemon_info(self.path) or {}
        endpoint = info.get("tail_endpoint") or sockets.tail_endpoint_for(
            discovery.default_endpoints(self.path).data
        )
        ctx = zmq.Context()
        sub = sockets.follower_sub(ctx, endpoint)
        last = [
            ("event", e)
            for e in self.reader.iter_events(backlog, f.since, None, f.event_type, f.component)
        ]
        last += [
            ("anomaly", a)
            for a in self.reader.iter_anomalies(backlog, f.since, None, f.anomaly_type, f.severity)
        ]
        for kind, row in sorted(last, key=lambda kr: kr[1]["timestamp"])[-backlog:]:
            self._follow_line(kind, row)
        if not discovery.daemon_running(self.path):
            click.echo(f"-- no daemon serves {self.name} yet; waiting for one --", err=True)
        try:
            while True:
                if not sub.poll(500):
                    continue
                events, anomalies = wire.decode_tail(sub.recv())
                for e in events:
                    if self._wanted_event(e, f):
                        self._follow_line("event", e)
                for a in anomalies:
                    if f.anomaly_type in (None, a["anomaly_type"]) and f.severity in (
                        None,
                        a["severity"],
                    ):
                        self._follow_line("anomaly", a)
        except KeyboardInterrupt:
            pass
        finally:
            sub.close(0)
            ctx.term()

    @staticmethod
    def _wanted_event(e: dict, f: Filters) -> bool:
        return f.event_type in (None, e["event_type"]) and f.component in (None, e["component"])

    def _follow_line(self, kind: str, row: dict) -> None:
        if self.output in ("json", "jsonl"):
            click.echo(json.dumps({"kind": kind, **row}, default=str))
            return
        stamp = formatting.when(row["timestamp"])
        if kind == "event":
            text = f"{stamp} {row['component']:<8} {row['event_type']:<20} {row['message']}"
        else:
            severity = row["severity"]
            if self.color and severity in formatting.SEVERITY_STYLE:
                severity = click.style(severity, **formatting.SEVERITY_STYLE[severity])
            text = (
                f"{stamp} ANOMALY  {row['anomaly_type']:<20} {severity} {row['description'] or ''}"
            )
        click.echo(text[: self.width + 40] if self.color else text, color=self.color)

    def clean(self, days: float) -> None:
        """Through the daemon, never as a second writer."""
        from .control import clear_old_data

        deleted = clear_old_data(self.db, days)
        click.echo("deleted " + ", ".join(f"{n} {t}" for t, n in deleted.items()))


def _filters(reader, since, until, component, event_type, anomaly_type, severity, session):
    try:
        return Filters(reader, since, until, component, event_type, anomaly_type, severity, session)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(
    cls=ErrorBoundary,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@db_option()
@click_option(SUMMARY, help="Overall statistics and recent activity.")
@click.option("--events", type=click.IntRange(min=1), metavar="N", help="Last N events.")
@click.option("--anomalies", type=click.IntRange(min=1), metavar="N", help="Last N anomalies.")
@click.option("--sessions", type=click.IntRange(min=1), metavar="N", help="Last N sessions.")
@click.option("--patterns", is_flag=True, help="Learned patterns.")
@click.option("--alerts", "firing", is_flag=True, help="Alert rules firing now.")
@click.option("--forecast", is_flag=True, help="When the next anomaly is due (learned cycles).")
@click.option(
    "--within", type=click.FloatRange(min=0), default=60.0, help="--forecast horizon (s)."
)
@click.option("--stats", is_flag=True, help="Statistics of the current (or --metric).")
@click.option("--export", "export_path", metavar="FILE", help="Export every table to FILE.")
@click.option(
    "--export-format",
    type=click.Choice(["json", "jsonl"]),
    help="Export format (default: by FILE's extension, else json).",
)
@click.option("--since", help='Only from then: "10m", "2h", "yesterday", "2026-11-24 10:00".')
@click.option("--until", help="Only before then (same forms as --since).")
@click.option("--component", help="Events of this component (CSMS, CP, CHARGER...).")
@click.option("--type", "event_type", help="Events of this type (OCPP_BOOT, CAN_RX...).")
@click.option("--anomaly-type", help="Anomalies of this type.")
@click.option(
    "--severity",
    type=click.Choice(["LOW", "MEDIUM", "HIGH", "CRITICAL"], case_sensitive=False),
    help="Anomaly severity.",
)
@click.option("--session", help="Only during this session's time window.")
@click.option("--metric", default="current", show_default=True, help="Metric for --stats.")
@click.option("--follow", "-f", is_flag=True, help="Live tail of events and anomalies.")
@output_option
@click.pass_context
def view(
    ctx,
    db,
    summary,
    events,
    anomalies,
    sessions,
    patterns,
    firing,
    forecast,
    within,
    stats,
    export_path,
    export_format,
    since,
    until,
    component,
    event_type,
    anomaly_type,
    severity,
    session,
    metric,
    follow,
    output,
) -> None:
    """View what MemoryBank kept (the seed's memory_viewer, and more).

    With no flag, the seed's interactive menu.
    """
    ctx.ensure_object(dict)
    ctx.obj["db"] = db
    if ctx.invoked_subcommand is not None:
        return
    viewer = Viewer(db, output)
    f = _filters(
        viewer.reader,
        since,
        until,
        component,
        event_type,
        anomaly_type,
        severity and severity.upper(),
        session,
    )
    chosen = False
    if summary:
        viewer.summary()
        chosen = True
    for flag, show in (
        (events, lambda n: viewer.events(n, f)),
        (anomalies, lambda n: viewer.anomalies(n, f)),
        (sessions, viewer.sessions),
    ):
        if flag:
            show(flag)
            chosen = True
    if patterns:
        viewer.patterns()
        chosen = True
    if firing:
        from .alerts.command import FIRING_COLUMNS

        viewer.emit(viewer.firing_alerts(), FIRING_COLUMNS, "Alerts firing", "(nothing firing)")
        chosen = True
    if forecast:
        viewer.forecast(within)
        chosen = True
    if stats:
        viewer.stats(metric, f)
        chosen = True
    if export_path:
        counts = viewer.export(export_path, export_format, f)
        click.echo(
            f"exported {sum(counts.values())} rows to {export_path}: "
            + ", ".join(f"{n} {t}" for t, n in counts.items()),
            err=output != "table",
        )
        chosen = True
    if follow:
        viewer.follow(f)
        chosen = True
    if not chosen and (
        since or until or component or event_type or anomaly_type or severity or session
    ):
        viewer.events(50, f)  # filters alone: show matching events, as journalctl does
        chosen = True
    if not chosen:
        menu(viewer)


@view.command()
@click.argument("metric")
@click.option("--since", default="10m", show_default=True, help="Start of the plot.")
@click.option("--until", help="End of the plot (default: now).")
@click.option("--png", "png_path", metavar="FILE", help="Write the plot as a PNG image.")
@click.option(
    "--db",
    "db_override",
    metavar="PATH|URL",
    callback=remember_db,
    help="Database (also accepted before 'plot').",
)
@click.pass_context
def plot(ctx, metric, since, until, png_path, db_override) -> None:
    """Draw METRIC over time in the terminal, anomalies marked (or --png FILE)."""
    from .plot import png_plot, terminal_plot

    viewer = Viewer(db_override or ctx.obj["db"])
    try:
        since_ts = parse_when(since)
        until_ts = parse_when(until) if until else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if png_path:
        points = png_plot(viewer.reader, metric, since_ts, until_ts, png_path)
        click.echo(f"wrote {png_path} ({points} points)")
        return
    size = shutil.get_terminal_size((100, 30))
    click.echo(
        terminal_plot(
            viewer.reader,
            metric,
            since_ts,
            until_ts,
            size.columns,
            max(size.lines - 4, 15),
            viewer.color,
        ),
        color=viewer.color,
    )


MENU = """
MemoryBank Viewer — {db}
  1. Show Summary
  2. Show Recent Events
  3. Show Recent Anomalies
  4. Show Sessions
  5. Show Learned Patterns
  6. Show Current Statistics
  7. Search Events
  8. Export Data
  9. Clean Old Data
  0. Exit"""


def menu(viewer: Viewer) -> None:
    """The seed's interactive menu, options 1-9 and 0. A failing option is reported as the
    command line reports failures (one line), and the menu goes on."""
    none = Filters(viewer.reader)

    def search() -> None:
        component = click.prompt("Component (blank: any)", default="", show_default=False)
        event_type = click.prompt("Event type (blank: any)", default="", show_default=False)
        f = Filters(viewer.reader, component=component or None, event_type=event_type or None)
        viewer.events(click.prompt("How many", default=50, type=int), f)

    def export() -> None:
        path = click.prompt("Export to file", default="memory_export.json")
        counts = viewer.export(path, None, none)
        click.echo(f"exported {sum(counts.values())} rows to {path}")

    def clean() -> None:
        days = click.prompt("Delete data older than how many days", default=7, type=float)
        if click.confirm(
            f"Delete events, anomalies and metrics older than {days:g} days?", default=False
        ):
            viewer.clean(days)
        else:
            click.echo("nothing deleted")

    options = {
        "1": viewer.summary,
        "2": lambda: viewer.events(click.prompt("How many events", default=20, type=int), none),
        "3": lambda: viewer.anomalies(
            click.prompt("How many anomalies", default=20, type=int), none
        ),
        "4": lambda: viewer.sessions(click.prompt("How many sessions", default=10, type=int)),
        "5": viewer.patterns,
        "6": lambda: viewer.stats("current", none),
        "7": search,
        "8": export,
        "9": clean,
    }
    while True:
        click.echo(MENU.format(db=viewer.name))
        try:
            choice = click.prompt("Choose an option", type=str, default="0").strip()
        except (click.Abort, EOFError):
            click.echo()
            return
        if choice == "0":
            return
        if choice not in options:
            click.echo(f"unknown option {choice!r}; choose 0-9")
            continue
        try:
            options[choice]()
        except (click.Abort, EOFError):
            click.echo()
            return
        except Exception as exc:
            report(exc, click.get_current_context(silent=True))


def memory_viewer() -> None:
    """The `memory-viewer` console script: the seed's command line, exactly."""
    view.main(prog_name="memory-viewer")
