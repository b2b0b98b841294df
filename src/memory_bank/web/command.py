"""The `memorybank web` command (click only: the web stack is imported when it runs).

Failures go through the CLI's error boundary: a missing extra, a bad setting, listening
beyond loopback without a token and a missing database are one line each.
"""

from __future__ import annotations

import click

from .. import config as config_mod
from .. import discovery
from ..cli_common import db_option, require_database


@click.command()
@db_option(default=None, help="SQLite database path, or a postgresql:// URL, to show.")
@click.option("--host", help="Address to listen on (default 127.0.0.1; others need --token).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default 8080; 0: any free).")
@click.option(
    "--token",
    help="Require this token on every request (needed beyond loopback; "
    "also MEMORYBANK_WEB_TOKEN or web.token in the configuration).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: $MEMORYBANK_CONFIG).",
)
def web(db, host, port, token, config_path) -> None:
    """Serve the dashboard: summary, charts, live feed, sessions, patterns, JSON API."""
    from ..cli import _setup_logging
    from .server import serve  # ImportError without the extra: the boundary names it

    cfg = config_mod.load(config_path, db=db, web_host=host, web_port=port, web_token=token)
    _setup_logging(cfg.log_level)
    location = cfg.db
    require_database(location)

    def ready(url: str) -> None:
        click.echo(f"serving {discovery.display_name(location)} on {url}", err=True)

    serve(location, cfg.web_host, cfg.web_port, cfg.web_token, on_ready=ready)
