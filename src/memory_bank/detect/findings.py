"""What a detector reports: one finding, and how its severity and identity are derived."""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("SPIKE", "LEVEL_SHIFT", "DRIFT", "STUCK", "DROPOUT", "OSCILLATION")


@dataclass
class Finding:
    """One anomaly found in a metric stream.

    ``timestamp`` is the reading that started the departure (the spike, the first reading
    at the new level, the first of the repeated values, the last reading before the
    silence); ``window`` spans the evidence, its end being the reading (or, for a dropout,
    the data time) at which the detector decided.
    """

    kind: str
    timestamp: float
    stream: dict
    detector: str
    score: float
    threshold: float
    current_value: float
    expected_value: float
    window_start: float
    window_end: float
    readings: int
    extra: dict = field(default_factory=dict)

    @property
    def severity(self) -> str:
        """LOW just past the threshold, then MEDIUM, HIGH, CRITICAL at 2x, 4x, 8x it."""
        ratio = self.score / self.threshold if self.threshold > 0 else 1.0
        if ratio >= 8:
            return "CRITICAL"
        if ratio >= 4:
            return "HIGH"
        if ratio >= 2:
            return "MEDIUM"
        return "LOW"

    def key(self) -> tuple:
        """The finding's identity: the same kind on the same stream at the same reading."""
        return finding_key(self.kind, self.stream, self.timestamp)

    def description(self) -> str:
        where = stream_label(self.stream)
        what = {
            "SPIKE": f"{where} spiked to {self.current_value:g} (expected about "
            f"{self.expected_value:g})",
            "LEVEL_SHIFT": f"{where} shifted to {self.current_value:g} from "
            f"{self.expected_value:g}",
            "DRIFT": f"{where} drifted to {self.current_value:g} from {self.expected_value:g}",
            "STUCK": f"{where} stuck at {self.current_value:g} for {self.readings} readings",
            "DROPOUT": f"{where} stopped reporting: no reading for {self.current_value:.1f}s "
            f"(usually every {self.expected_value:.2g}s)",
            "OSCILLATION": f"{where} oscillates around {self.expected_value:g} "
            f"(swing to {self.current_value:g})",
        }
        return what[self.kind]

    def data(self, instance: str) -> dict:
        """The anomaly's pattern_data: the detector, its score and the window of evidence."""
        return {
            "detector": self.detector,
            "score": round(self.score, 3),
            "threshold": round(self.threshold, 3),
            "window": {
                "start": self.window_start,
                "end": self.window_end,
                "readings": self.readings,
            },
            "stream": self.stream,
            "instance": instance,
            **self.extra,
        }


def finding_key(kind: str, stream: dict, timestamp: float) -> tuple:
    return (
        kind,
        stream.get("metric"),
        stream.get("cp_id"),
        stream.get("connector_id"),
        round(float(timestamp), 6),
    )


def stream_label(stream: dict) -> str:
    parts = [str(stream.get("metric"))]
    for name in ("cp_id", "connector_id"):
        if stream.get(name) is not None:
            parts.append(f"{name}={stream[name]}")
    return " ".join(parts)
