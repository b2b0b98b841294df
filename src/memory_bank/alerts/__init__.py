"""Alerts and streams: rules evaluated on each committed batch, notifications written to an
outbox in the batch's own transaction, delivered afterwards to sinks (webhook, Apprise,
MQTT), and the committed records streamed to MQTT.

Lives on the write side (only the writer knows what was committed) but outside the writer:
the daemon attaches an ``AlertEngine`` to the store (``store.batch_hook``) and drives it
from its loop; see ``engine.py`` for the hook's contract. Readers use ``outbox.recent`` and
``outbox.firing``. docs/alerts.md is the user's guide.
"""

from __future__ import annotations

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)

if TYPE_CHECKING:
    from .rules import AlertsConfig, Rule, RuleError, Sink, parse

__all__ = ["AlertsConfig", "Rule", "RuleError", "Sink", "attach", "parse"]


def attach(store, config: AlertsConfig):
    """An engine evaluating ``config``'s rules on every batch ``store`` commits, with its
    delivery workers started; None when the configuration has no rules and no sinks."""
    if config.empty:
        _retire_states(store, config)
        return None
    from .engine import AlertEngine

    engine = AlertEngine(store, config)
    store.batch_hook = engine
    return engine


def _retire_states(store, config: AlertsConfig) -> None:
    """No rules: the states of the rules configured before are retired (resolved, logged;
    engine.py) where this daemon is the database's only writer, SQLite. On PostgreSQL a
    daemon without rules may write beside the one that runs the alerts, whose states
    these are: it leaves them alone."""
    import sqlite3

    if not isinstance(store.conn, sqlite3.Connection):
        return
    try:
        if store.conn.execute("SELECT 1 FROM mb_alert_state LIMIT 1").fetchone() is None:
            return
    except sqlite3.OperationalError:  # no such table: alerts never ran on this file
        return
    from .engine import AlertEngine

    AlertEngine(store, config).stop()


def __getattr__(name: str):
    """The rules' names, loaded on first use: readers of the outbox (the viewer's summary)
    never need them."""
    if name in ("AlertsConfig", "Rule", "RuleError", "Sink", "parse"):
        from . import rules

        return getattr(rules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
