"""A metric over time with anomalies marked: in the terminal (works over SSH, where the
seed's matplotlib window does not) or as a PNG file."""

from __future__ import annotations

import datetime as dt
import time

from .store import Reader


def _series(reader: Reader, metric: str, since: float, until: float, points: int):
    rows = reader.metric_buckets(metric, since, until, points)
    xs = [r["first_t"] for r in rows]
    return xs, [r["avg"] for r in rows], [r["min"] for r in rows], [r["max"] for r in rows]


def _anomaly_times(reader: Reader, since: float, until: float) -> list[float]:
    return [a["timestamp"] for a in reader.iter_anomalies(limit=2000, since=since, until=until)]


def terminal_plot(
    reader: Reader,
    metric: str,
    since: float,
    until: float | None,
    width: int,
    height: int,
    color: bool,
) -> str:
    """The plot as text (plotext), anomalies as vertical marks."""
    import plotext as plt

    until = until or time.time()
    xs, avg, low, high = _series(reader, metric, since, until, max(width - 12, 10))
    if not xs:
        return f"no '{metric}' metrics between {_hm(since)} and {_hm(until)}"
    plt.clear_figure()
    plt.plotsize(width, height)
    if not color:
        plt.theme("clear")
    dates = [dt.datetime.fromtimestamp(x).strftime("%d/%m/%Y %H:%M:%S") for x in xs]
    plt.date_form("d/m/Y H:M:S")
    plt.plot(dates, avg, label=metric, marker="braille")
    if any(lo != hi for lo, hi in zip(low, high, strict=True)):
        plt.plot(dates, high, label="max", marker="dot")
    marks = _anomaly_times(reader, since, until)
    top = max(high)
    if marks:
        plt.scatter(
            [dt.datetime.fromtimestamp(t).strftime("%d/%m/%Y %H:%M:%S") for t in marks],
            [top] * len(marks),
            marker="x",
            label=f"anomalies ({len(marks)})",
            color="red" if color else None,
        )
    plt.title(f"{metric}  {_hm(since)} → {_hm(until)}")
    return plt.build()


def png_plot(
    reader: Reader,
    metric: str,
    since: float,
    until: float | None,
    path: str,
    unit: str | None = None,
) -> int:
    """Write the same picture as a PNG; returns the number of points drawn."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError('--png needs matplotlib: pip install "memory_bank[png]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    until = until or time.time()
    xs, avg, low, high = _series(reader, metric, since, until, 2000)
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    times = [dt.datetime.fromtimestamp(x) for x in xs]
    if xs:
        # matplotlib plots datetimes through its unit converters; its stubs admit numbers only.
        ax.fill_between(times, low, high, alpha=0.25, label="min–max")  # type: ignore[arg-type]
        ax.plot(times, avg, linewidth=1.2, label=metric)  # type: ignore[arg-type]
    for i, t in enumerate(_anomaly_times(reader, since, until)):
        ax.axvline(
            dt.datetime.fromtimestamp(t),  # type: ignore[arg-type]
            color="red",
            alpha=0.5,
            linewidth=0.8,
            label="anomaly" if i == 0 else None,
        )
    ax.set_title(f"{metric}: {_hm(since)} → {_hm(until)}")
    ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing in the window: no legend to show
        ax.legend(loc="upper right")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return len(xs)


def _hm(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
