"""The `memorybank` command: daemon, status, demo. Parses, calls the library, formats.

Every command runs inside one error boundary (cli_common.ErrorBoundary): a failure is one
line and an exit status, never a traceback; --db and -o are the shared options.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from . import __version__, discovery
from .cli_common import (
    ErrorBoundary,
    InputError,
    click_option,
    db_option,
    output_option,
    remember_db,
    require_database,
)
from .cli_options import ENDPOINT, JSON
from .control import DaemonUnavailable, wait_for_daemon
from .formatting import Column, record_lines, render
from .status import describe_run, status_lines


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


ENDPOINT_OPTION = click_option(
    ENDPOINT,
    help="The daemon's data endpoint, when several serve one PostgreSQL database "
    "(tcp://HOST:PORT: its control port is PORT+1).",
)


MIGRATE_COLUMNS = [
    Column("table", "TABLE"),
    Column("sqlite", "SQLITE", align_right=True),
    Column("postgresql", "POSTGRESQL", align_right=True),
    Column("copied", "COPIED", align_right=True),
    Column("missing", "MISSING", align_right=True),
]
JSON_ALIAS = click_option(JSON, help="Same as -o json.")


class Commands(ErrorBoundary):
    """The command group; commands kept in other modules are imported only when they run
    (or when --help lists them), so that `memorybank status` starts in a few ms."""

    ELSEWHERE = {
        "view": "memory_bank.viewer:view",
        "web": "memory_bank.web.command:web",
        "alerts": "memory_bank.alerts.command:alerts",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.ELSEWHERE})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.ELSEWHERE and name not in self.commands:
            module, attribute = self.ELSEWHERE[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


@click.group(cls=Commands)
@click.version_option(__version__, prog_name="memorybank")
def main() -> None:
    """MemoryBank: persistent telemetry memory for an EV-charging lab."""


def check_db_to_serve(db: str) -> None:
    """Refuse, before anything starts, a SQLite path in a missing folder or a file that is
    not a MemoryBank database (a daemon would write its tables into it)."""
    if discovery.is_url(db):
        return
    path = discovery.resolve_db_path(db)
    if not path.parent.is_dir():
        raise InputError(f"--db {db}: the folder {path.parent} does not exist; create it first")
    if path.exists():
        from .store import open_reader

        open_reader(path).check().close()


@main.command()
@db_option(None, "SQLite database path, or a postgresql:// URL, to serve.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: $MEMORYBANK_CONFIG).",
)
@click.option(
    "--endpoint",
    help="Data endpoint to bind: ipc://PATH, or tcp://HOST:PORT, which takes three ports: "
    "PORT (records), PORT+1 (control) and PORT+2 (live tail; with CURVE keys the tail "
    "stays on the local ipc folder).",
)
@click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
)
def daemon(db, config_path, endpoint, log_level) -> None:
    """Run the single writer for a database in the foreground."""
    from . import config as config_mod
    from .daemon import Daemon, DaemonSettings
    from .store import StoreRefused

    try:
        cfg = config_mod.load(config_path, db=db, endpoint=endpoint, log_level=log_level)
    except config_mod.ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    check_db_to_serve(cfg.db)
    _setup_logging(cfg.log_level)
    settings = DaemonSettings.from_config(cfg)

    def reload() -> DaemonSettings:
        """SIGHUP: read the same file again, with the same flags on top."""
        return DaemonSettings.from_config(
            config_mod.load(config_path, db=db, endpoint=endpoint, log_level=log_level)
        )

    try:
        status = Daemon(settings, reload=reload).run()
    except StoreRefused as exc:  # corrupt, a second name, too new: the input's fault
        raise InputError(str(exc)) from None
    sys.exit(status)


@main.command()
@click.option(
    "--dir",
    "directory",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where to write the key files.",
)
@click.option(
    "--name",
    default="memorybank",
    show_default=True,
    help="Base name: NAME.key (public) and NAME.key_secret (keep private).",
)
def keygen(directory, name) -> None:
    """Make a CURVE key pair for a daemon or a publisher.

    The daemon's configuration names its NAME.key_secret (security.curve_secret_key_file);
    each publisher's NAME.key goes into the daemon's curve_authorized_keys_dir.
    """
    from .keys import create_key_pair

    public_file, secret_file = create_key_pair(Path(directory), name)
    click.echo(f"public key:  {public_file}")
    click.echo(f"secret key:  {secret_file}  (mode 0600; never share it)")


@main.command()
@db_option()
@output_option
@JSON_ALIAS
@ENDPOINT_OPTION
def status(db, output, as_json, endpoint) -> None:
    """Show the figures of the daemon serving a database (exit 1 when none does)."""
    for line in status_lines(db, "json" if as_json else output, endpoint):
        click.echo(line)


@main.command()
@db_option()
@click.argument("job", type=click.Choice(["retention", "vacuum"]))
@click.option(
    "--days",
    type=click.FloatRange(min=0),
    default=None,
    help="retention: delete events, anomalies and metrics older than this "
    "(default: the configured per-table policy).",
)
@output_option
@JSON_ALIAS
@ENDPOINT_OPTION
def maintenance(db, job, days, output, as_json, endpoint) -> None:
    """Ask the daemon to run retention or VACUUM now, and wait for the result."""
    from .control import DaemonLost, run_maintenance

    try:
        reply = run_maintenance(db, job, days, endpoint)
    except DaemonLost as exc:
        raise click.ClickException(str(exc)) from None
    except DaemonUnavailable as exc:
        raise click.ClickException(
            f"{exc} — start one with 'memorybank daemon --db {db}'"
        ) from None
    run = reply.get("run")
    if run is None:
        raise click.ClickException(f"the daemon refused {job}: {reply.get('error')}")
    output = "json" if as_json else output
    if output == "table":
        click.echo(f"{job}: {describe_run(run)}")
    else:
        for line in record_lines(run, output):
            click.echo(line)
    if run["status"] != "ok":
        sys.exit(1)


@main.command()
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(dir_okay=False),
    callback=remember_db,
    help="SQLite database to copy (ours, or the seed's own).",
)
@click.option("--to", "target", required=True, help="postgresql:// URL to copy into.")
@click.option("--batch-rows", default=10_000, show_default=True, type=click.IntRange(min=1))
@output_option
def migrate(source, target, batch_rows, output) -> None:
    """Copy a SQLite database into PostgreSQL, in batches, and verify the copy; rerun to
    resume after a stop, or to catch up with what a daemon wrote to it meanwhile."""
    if not discovery.is_url(target):
        raise click.UsageError(f"--to must be a postgresql:// URL, not {target!r}")
    from .store.migrate import Migration

    migration = Migration(source, target, batch_rows)
    try:
        remaining = sum(migration.remaining().values())
        with click.progressbar(
            length=remaining, label="copying", file=sys.stderr, show_pos=True
        ) as bar:
            report = migration.run(lambda _table, rows: bar.update(rows))
    finally:
        migration.close()
    rows = [
        {
            "table": t.table,
            "sqlite": t.source,
            "postgresql": t.target,
            "copied": t.copied,
            "missing": t.missing,
        }
        for t in report.tables
    ]
    for line in render(rows, MIGRATE_COLUMNS, output):
        click.echo(line)
    # The verdict: after the table for people, on stderr beside machine-readable output.
    verdict = output != "table"
    shown = discovery.redact_url(target)
    if report.complete:
        click.echo(f"complete: every row of {migration.source} is in {shown}", err=verdict)
    else:
        missing = sum(t.missing for t in report.tables)
        click.echo(
            f"INCOMPLETE: {missing} row(s) of {migration.source} are not in {shown}", err=verdict
        )
    if report.alerts_busy:
        click.echo(
            f"alerts: a daemon runs the alerts of {shown}; the notifications and rule states "
            "were not copied beside it. Stop it and run migrate again.",
            err=verdict,
        )
    if report.live:
        click.echo(
            f"snapshot: a daemon serves {migration.source}; this run copied it as it "
            "was when the run began. Run migrate again to copy what it commits meanwhile "
            "(after stopping it, for the final copy).",
            err=verdict,
        )
    if not report.complete:
        sys.exit(1)


@main.command()
@db_option()
@click.option("--seconds", default=24.0, show_default=True, help="How long the lab runs.")
@click.option(
    "--cycle",
    default=8.0,
    show_default=True,
    help="Seconds per anomaly cycle (0 A -> 100 A -> start -> stop).",
)
def demo(db, seconds, cycle) -> None:
    """Run the lab: a daemon, an OCPP 1.6 CSMS, and a charge point driving a CAN charger.

    The CSMS and the charge point are separate processes
    (python -m memory_bank.demo.csms / memory_bank.demo.cp); Ctrl-C stops everything.
    """
    import tempfile

    from . import demo as _lab  # noqa: F401  (without the extra: says what to install)
    from .api import MemoryBank
    from .viewer import Viewer

    check_db_to_serve(db)
    _setup_logging("WARNING")
    # A path is resolved (the lab's processes run elsewhere); a postgresql:// URL is kept.
    path = db if discovery.is_url(db) else discovery.resolve_db_path(db)
    shown = discovery.display_name(db)
    started: list[subprocess.Popen] = []
    daemon_proc = None
    if discovery.daemon_running(discovery.location_key(path)):
        click.echo(f"using the daemon already serving {shown}")
    else:
        daemon_proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memory_bank",
                "daemon",
                "--db",
                str(path),
                "--log-level",
                "WARNING",
            ]
        )
        started.append(daemon_proc)
    try:
        if daemon_proc is not None:
            wait_for_daemon(path, timeout=15)
        ready = Path(tempfile.mkdtemp(prefix="mb-demo-")) / "port"
        csms = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memory_bank.demo.csms",
                "--db",
                str(path),
                "--cycle",
                str(cycle),
                "--ready-file",
                str(ready),
            ]
        )
        started.append(csms)
        deadline = time.monotonic() + 20
        while not ready.exists() or not ready.read_text():
            if csms.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException("the CSMS did not start; see its output above")
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{ready.read_text()}/CP_1"
        click.echo(
            f"lab running for {seconds:g}s on {shown}: CSMS on {url.rsplit('/', 1)[0]}, "
            f"charge point CP_1 with its charger on a virtual CAN bus..."
        )
        cp = subprocess.Popen(
            [sys.executable, "-m", "memory_bank.demo.cp", "--db", str(path), "--url", url]
        )
        started.append(cp)
        try:
            cp.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass
    except KeyboardInterrupt:
        click.echo("stopping...")
    finally:
        # The charge point first (the CSMS then ends its cycle), the daemon last.
        for proc in reversed(started[1:]):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    with MemoryBank(path) as memory:
        memory.flush()
    if daemon_proc is not None:
        daemon_proc.send_signal(signal.SIGTERM)
        daemon_proc.wait(timeout=30)
    viewer = Viewer(str(path))
    click.echo()
    viewer.summary()
    click.echo()
    viewer.sessions(20)
    failed = [p for p in started[1:] if p.returncode not in (0, -signal.SIGINT)]
    if failed:
        raise click.ClickException("a lab process failed; see its output above")


@main.command()
@db_option(None, "SQLite database path, or a postgresql:// URL, to read.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML configuration file ([detect] table; default: $MEMORYBANK_CONFIG).",
)
@click.option("--once", is_flag=True, help="Process what is committed now, then exit.")
@click.option("--sensitivity", type=float, help="Above 1 reports smaller departures.")
@ENDPOINT_OPTION
@click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
)
def detect(db, config_path, once, sensitivity, endpoint, log_level) -> None:
    """Find anomalies in the metrics and cycles in the events; publish them.

    Resumes after a restart where it stopped (its checkpoint is kept in the database)
    and never reports a finding twice. Without --once it follows new data.
    """
    from . import config as config_mod
    from .store import open_reader

    cfg = config_mod.load(
        config_path,
        db=db,
        endpoint=endpoint,
        log_level=log_level,
        detect_sensitivity=sensitivity,
    )
    _setup_logging(cfg.log_level)
    from .detect.instance import DetectorBusy
    from .detect.runner import Detection, DetectSettings

    settings = DetectSettings(
        instance=cfg.detect_instance,
        sensitivity=cfg.detect_sensitivity,
        warmup_readings=cfg.detect_warmup_readings,
        metrics=cfg.detect_metrics or [],
        poll_seconds=cfg.detect_poll_seconds,
        checkpoint_seconds=cfg.detect_checkpoint_seconds,
        cycle_min_period_s=cfg.detect_cycle_min_period_s,
    )
    require_database(cfg.db)
    open_reader(cfg.db).check().close()  # a file that is no MemoryBank database: exit 2
    try:
        detection = Detection(cfg.db, settings, endpoint=cfg.endpoint)
    except DetectorBusy as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        progress = detection.run(once=once, stop=stop)
    finally:
        detection.close()
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(progress.by_kind.items())) or "none"
    notes = [
        f"{n} {what}"
        for n, what in (
            (progress.skipped_duplicates, "found again but already stored"),
            (progress.late_readings, "readings behind their stream skipped"),
        )
        if n
    ]
    click.echo(
        f"detect: {progress.readings} readings, {progress.events} events; "
        f"{progress.findings} anomalies ({kinds}), {progress.patterns} pattern records"
        + "".join(f"; {note}" for note in notes),
        err=True,
    )


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
