"""`memorybank alerts`: the recent notifications (rule, state, time, delivered or pending,
attempts), and `memorybank alerts test RULE`, a test notification through a rule's sinks."""

from __future__ import annotations

import time
import uuid

import click

from .. import config as config_mod
from .. import discovery
from ..cli_common import InputError, db_option, output_option, require_database
from ..formatting import Column, render, when

ALERT_COLUMNS = [
    Column("at", "TIME", when),
    Column("rule", "RULE"),
    Column("state", "STATE"),
    Column("sink", "SINK"),
    Column("status", "DELIVERY"),
    Column("attempts", "ATTEMPTS", str, align_right=True),
    Column("id", "ID"),
    Column("last_error", "LAST ERROR", lambda v: v or "", flexible=True),
    Column("summary", "SUMMARY", lambda v: v or "", flexible=True),
]
FIRING_COLUMNS = [
    Column("rule", "RULE"),
    Column("group", "GROUP"),
    Column("since", "FIRING SINCE", when),
    Column("summary", "SUMMARY", lambda v: v or "", flexible=True),
]
TEST_COLUMNS = [
    Column("sink", "SINK"),
    Column("type", "TYPE"),
    Column("result", "RESULT", flexible=True),
]


def _outbox_query(db: str):
    """The database's read-only query (its errors are the viewer's)."""
    from ..store import open_reader
    from .reading import reader_query

    if discovery.is_url(db):
        return reader_query(open_reader(db).check())
    require_database(db)
    return reader_query(open_reader(discovery.resolve_db_path(db)).check())


@click.group(invoke_without_command=True)
@db_option()
@output_option
@click.option("--limit", "-n", type=click.IntRange(1), default=50, show_default=True)
@click.option("--rule", help="Only this rule's notifications.")
@click.option("--firing", is_flag=True, help="The rules firing now instead (per group).")
@click.pass_context
def alerts(ctx, db, output, limit, rule, firing) -> None:
    """Recent notifications, newest first: rule, state, time, delivery, attempts."""
    if ctx.invoked_subcommand is not None:
        return
    from . import outbox

    query = _outbox_query(db)
    if firing:
        rows = outbox.firing(query)
        for line in render(rows, FIRING_COLUMNS, output, empty="(nothing firing)"):
            click.echo(line)
        return
    rows = outbox.recent(query, limit, rule)
    if output == "table":
        for row in rows:
            row.pop("record", None)
    for line in render(rows, ALERT_COLUMNS, output, empty="(no notifications)"):
        click.echo(line)


@alerts.command("test")
@click.argument("rule_name", metavar="RULE")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: $MEMORYBANK_CONFIG).",
)
@output_option
def test_rule(rule_name, config_path, output) -> None:
    """Send a test notification through RULE's sinks (exit 1 if one fails)."""
    from .evaluation import Notification
    from .outbox import body_of
    from .rules import parse
    from .sinks import make_sink

    cfg = config_mod.load(config_path)
    config = parse(cfg.alerts, cfg.sinks)
    rule = next((r for r in config.rules if r.name == rule_name), None)
    if rule is None:
        known = ", ".join(r.name for r in config.rules) or "none"
        raise InputError(f"no alert rule {rule_name!r} in the configuration (rules: {known})")
    note = Notification(rule, "", "firing", time.time(), None, rule.table, "test notification")
    body = body_of(note, uuid.uuid4().hex, test=True)
    results, failed = [], 0
    for name in rule.notify:
        sink_config = config.sinks[name]
        try:
            sink = make_sink(sink_config)
            try:
                sink.send(body)
            finally:
                sink.close()
            result = f"delivered (id {body['id']})"
        except ImportError:
            raise
        except Exception as exc:  # reported per sink, the others still tried
            failed += 1
            result = f"FAILED: {exc}"
        results.append({"sink": name, "type": sink_config.type, "result": result})
    for line in render(results, TEST_COLUMNS, output):
        click.echo(line)
    if failed:
        raise click.ClickException(f"{failed} of {len(results)} sink(s) failed")


def status_lines(figures: dict | None, width: int):
    """`memorybank status` lines for the alerts: rules, and per sink its queue and errors."""
    if not figures:
        return
    yield f"{'alert rules':<{width}}  {figures['rules']} ({figures['firing']} firing)"
    for name, sink in sorted(figures["sinks"].items()):
        line = (
            f"{sink['pending']} pending, {sink['delivered']} delivered, "
            f"{sink['failures']} failed attempts, {sink['dropped']} dropped"
        )
        if sink["last_error"]:
            state = "failing" if sink["failing"] else "recovered"
            line += f"; last error {when(sink['last_error_at'])} ({state}): {sink['last_error']}"
        yield f"{'sink ' + name:<{width}}  {line}"
    for name, stream in sorted((figures.get("streams") or {}).items()):
        line = (
            f"{stream['published']} published, {stream['pending']} pending, "
            f"{stream['dropped']} deleted before they were streamed"
        )
        if stream["last_error"]:
            line += f"; failing: {stream['last_error']}"
        process = stream.get("process")  # stream_process
        if process:
            line += f"; in process {process['pid']}, restarted {process['restarts']} time(s)"
        yield f"{'stream ' + name:<{width}}  {line}"
