"""When the next anomaly is due, from the learned cycles that include one.

A learned ``EVENT_CYCLE`` pattern that has an anomaly among its steps says: the cycle
recurs every ``period_s`` (give or take ``period_spread_s``), the anomaly comes
``offset_s`` after the cycle's first step, and the pattern's ``last_seen`` is when that
first step last happened. The next anomaly is expected at ``last_seen + offset_s + k *
period_s`` for the first k that is not yet past; each such time is uncertain by the spread
(growing with the number of cycles ahead), and the pattern's confidence (the share of its
steps seen in its last cycle) scales the probability. A cycle that has missed three
periods is taken as stopped (``stale``) and forecasts nothing.

Standard library only, like all of detection: the API and the viewer call this too.
"""

from __future__ import annotations

import math
import time

from .cycles import PATTERN_TYPE

STALE_PERIODS = 3.0


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def forecast(patterns: list[dict], within_s: float, now: float | None = None) -> dict:
    """The probability of an anomaly in ``[now, now + within_s]`` and when the next is due.

    ``patterns`` are rows of the patterns table (as ``Reader.get_patterns`` returns them).
    Returns ``{"now", "within_s", "probability", "next_at", "next_in_s", "patterns": [...]}``
    with one entry per learned cycle that includes an anomaly.
    """
    now = time.time() if now is None else float(now)
    entries = []
    for row in patterns:
        if row.get("pattern_type") != PATTERN_TYPE:
            continue
        data = row.get("pattern_data")
        if not isinstance(data, dict) or not data.get("anomalies") or not row.get("last_seen"):
            continue
        period = float(data["period_s"])
        if period <= 0:
            continue
        spread = max(float(data.get("period_spread_s") or 0.0), 0.01 * period)
        confidence = float(row.get("confidence") or 0.0)
        start = float(row["last_seen"])
        stale = now - start > STALE_PERIODS * period
        for anomaly in data["anomalies"]:
            entries.append(
                _entry(row, data, anomaly, start, period, spread, confidence, now, within_s, stale)
            )
    live = [e for e in entries if not e["stale"]]
    miss = 1.0
    for entry in live:
        miss *= 1.0 - entry["probability"]
    upcoming = [e for e in live if e["next_at"] is not None]
    first = min(upcoming, key=lambda e: e["next_at"], default=None)
    return {
        "now": now,
        "within_s": within_s,
        "probability": round(1.0 - miss, 4),
        "next_at": first["next_at"] if first else None,
        "next_in_s": round(first["next_at"] - now, 3) if first else None,
        "anomaly_type": first["anomaly_type"] if first else None,
        "patterns": entries,
    }


def _entry(row, data, anomaly, start, period, spread, confidence, now, within_s, stale) -> dict:
    offset = float(anomaly["offset_s"])
    # cycles ahead of the last seen one: the first whose anomaly is not clearly past
    k = max(0, math.ceil((now - (start + offset) - 2 * spread) / period))
    next_at = start + offset + k * period
    miss = 1.0
    step = k
    while not stale:
        at = start + offset + step * period
        sd = spread * math.sqrt(step + 1)
        if at - 4 * sd > now + within_s:
            break
        p = _normal_cdf((now + within_s - at) / sd) - _normal_cdf((now - at) / sd)
        miss *= 1.0 - confidence * max(0.0, min(1.0, p))
        step += 1
    return {
        "pattern_id": row.get("id"),
        "anomaly_type": anomaly["anomaly_type"],
        "scope": data.get("scope") or {},
        "period_s": period,
        "period_spread_s": float(data.get("period_spread_s") or 0.0),
        "confidence": confidence,
        "last_cycle_at": start,
        "next_at": None if stale else round(next_at, 3),
        "next_in_s": None if stale else round(next_at - now, 3),
        "probability": 0.0 if stale else round(1.0 - miss, 4),
        "stale": stale,
    }


__all__ = ["forecast", "STALE_PERIODS"]
