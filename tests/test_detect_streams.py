"""The per-stream detectors on readings with known faults: one kind per departure, and a
stream that stays watched after a fault (bench/detect.py measures them at scale)."""

from __future__ import annotations

import math
import random

from memory_bank.detect.streams import Settings, StreamDetector

HZ = 2.0


def charging(rng: random.Random, seconds: float) -> list[float]:
    return [round(32.0 + rng.gauss(0, 0.5), 2) for _ in range(int(seconds * HZ))]


def run(values: list[float]) -> list[tuple[str, float]]:
    """Every finding as (kind, seconds from the first reading to the reading it names)."""
    detector = StreamDetector({"metric": "current"}, Settings())
    found = []
    for k, value in enumerate(values):
        for finding in detector.feed(k / HZ, value) or []:
            found.append((finding.kind, finding.timestamp))
    return found


def test_warmup_goes_on_until_the_stream_has_shown_its_noise():
    # The warm-up (2 minutes) sees only an idle 0 A; the first session starts after it.
    rng = random.Random(1)
    values = [0.0] * 300 + charging(rng, 400)
    values[900] = 50.0  # a spike, 150 s into the session
    assert run(values) == [("SPIKE", 450.0)]


def test_the_flat_tops_of_a_slow_oscillation_are_not_level_shifts():
    rng = random.Random(2)
    values = charging(rng, 300)
    for k in range(400, 520):  # 60 s at a 5 s period, 4 A: flat for 2 s at each top
        values[k] += 4.0 * math.sin(2 * math.pi * (k - 400) / (5 * HZ))
    assert run(values) == [("OSCILLATION", 200.5)]


def test_an_oscillation_is_decided_when_its_second_swing_grows_to_a_spike_s_size():
    # Out 8 sigma, back, then a swing the other way that starts at 4.4 sigma (an
    # alternation, not yet a spike's size) and grows to 8 sigma on its next reading: that
    # reading decides, not the third swing's.
    rng = random.Random(4)
    values = charging(rng, 300)
    swings = {400: 4.0, 401: 4.0, 402: 0.0, 403: -2.2, 404: -4.0, 405: -4.0, 406: 0.0}
    swings.update({407: 0.0, 408: 0.0, 409: 4.0, 410: 4.0})
    for k, offset in swings.items():
        values[k] = 32.0 + offset
    detector = StreamDetector({"metric": "current"}, Settings())
    found = []
    for k, value in enumerate(values):
        for f in detector.feed(k / HZ, value) or []:
            found.append((f.kind, f.timestamp, f.window_end))
    assert found == [("OSCILLATION", 200.0, 202.0)]


def test_a_stream_is_watched_again_after_an_oscillation_and_a_session_end():
    rng = random.Random(3)
    values = [0.0] * 60 + charging(rng, 300)  # the warm-up sees idle and charging
    for k in range(560, 650):  # until just before the session ends
        values[k] += 6.0 * math.sin(2 * math.pi * (k - 560) / (2.5 * HZ))
    values += [0.0] * 120 + charging(rng, 200)  # the session ends, another starts
    values[-100] = 50.0
    found = run(values)
    assert [kind for kind, _ in found] == ["OSCILLATION", "SPIKE"], found


def test_a_drift_that_comes_to_rest_leaves_the_stream_watched():
    rng = random.Random(4)
    values = charging(rng, 1500)
    for k in range(600, len(values)):  # +3 A over 100 s, then it stays there
        values[k] = round(values[k] + 3.0 * min(1.0, (k - 600) / 200), 2)
    values[2500] = 50.0
    found = run(values)
    assert [kind for kind, _ in found] == ["DRIFT", "SPIKE"], found
    assert found[1][1] == 1250.0
