"""The viewer's summary (``memory-viewer --summary``, the menu's option 1) as lines of text.

Click-free, so that the console script can answer ``memory-viewer --summary`` without
loading click (cli_fast); the viewer echoes the very same lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from . import formatting
from .store import Reader


def titled(
    rows: Iterable[dict],
    columns: list[formatting.Column],
    title: str | None,
    output: str,
    color: bool,
    width: int,
    empty: str = "(none)",
) -> Iterator[str]:
    """A view: its title (in a table for people), then its rows in ``output``."""
    if title and output == "table":
        yield formatting.style(title, bold=True) if color else title
    yield from formatting.render(rows, columns, output, color, width, empty)


def firing_alerts(reader: Reader) -> list[dict]:
    """The alert rules firing now, per group (the daemon's alerts)."""
    from .alerts import outbox
    from .alerts.reading import reader_query

    return outbox.firing(reader_query(reader))


def summary_lines(reader: Reader, output: str, color: bool, width: int) -> Iterator[str]:
    """Overall figures, the last events and anomalies, and the alerts firing."""
    summary = reader.get_dashboard_summary()
    if output != "table":
        yield from formatting.record_lines(summary, output)
        return
    yield from formatting.summary_lines(summary, color)
    yield ""
    yield from titled(
        reader.iter_events(limit=5), formatting.EVENT_COLUMNS, "Recent events", output, color, width
    )
    yield ""
    yield from titled(
        reader.iter_anomalies(limit=5),
        formatting.ANOMALY_COLUMNS,
        "Recent anomalies",
        output,
        color,
        width,
    )
    firing = firing_alerts(reader)
    if firing:
        from .alerts.command import FIRING_COLUMNS  # (loads click: only while alerts fire)

        yield ""
        yield from titled(firing, FIRING_COLUMNS, "Alerts firing", output, color, width)
