"""Online anomaly detection for one metric stream, learned from the stream itself.

A stream is modelled as a few *regimes*: levels it sits at with their own noise (a charging
current: 0 A between sessions, 32 A during them). Each reading is placed in the regime it
fits; moving between learned regimes is normal, departing from all of them is not:

- SPIKE: one or two readings far out (robust z >= z_spike), then back in the same regime;
  also a visit of one or two readings to another regime (0 A for one reading mid-session).
- LEVEL_SHIFT: ``shift_run`` readings in a row outside every regime, flat (a new level), or
  entering a level first seen after warm-up (until it was visited ``learn_visits`` times).
- DRIFT: a two-sided CUSUM (Page) of the clipped z-scores crosses ``cusum_h``; the window
  since it left zero is tested for a trend (a step found this way is a LEVEL_SHIFT).
- STUCK: the same value repeated longer than the regime makes likely (from how often it
  repeats values, so a 0 A idle that is always exactly 0 never counts).
- DROPOUT: no reading for ``dropout_factor`` times the usual interval (or more, where the
  stream has shown longer gaps), judged against the data clock of every stream.
- OSCILLATION: ``osc_flips`` alternations of the deviation between above +osc_h and below
  -osc_h within ``osc_window`` readings.

Everything here is plain Python over floats: one reading costs a few microseconds, which is
what the throughput target needs (see bench/detect.py); numpy would cost more per call
than it saves on sequential recurrences.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .findings import Finding

LATE_TOLERANCE_S = 0.5  # readings this much older than the last are taken as simultaneous
MAX_REGIMES = 8
RATIO_BINS = 64  # gap/interval histogram: bins of 0.25 up to 16x, then one overflow bin


@dataclass(frozen=True)
class Settings:
    """Thresholds, all derived from one sensitivity knob (1.0 by default; 2.0 reports
    roughly what is half as far from normal, 0.5 only what is twice as far)."""

    sensitivity: float = 1.0
    warmup_readings: int = 240

    @property
    def z_spike(self) -> float:
        return 5.5 / self.sensitivity

    @property
    def z_shift(self) -> float:
        return 4.0 / self.sensitivity

    @property
    def cusum_h(self) -> float:
        return 14.0 / self.sensitivity

    @property
    def osc_h(self) -> float:
        return 3.5 / self.sensitivity

    @property
    def stuck_alpha(self) -> float:
        return 1e-7**self.sensitivity

    @property
    def dropout_factor(self) -> float:
        return max(2.0, 4.0 / self.sensitivity)

    shift_run: int = 4
    spike_max: int = 2
    spike_confirm: int = 2
    cusum_k: float = 0.5
    cusum_clip: float = 2.5
    osc_flips: int = 3
    osc_window: int = 24
    stuck_min: int = 4
    learn_visits: int = 3
    rearm: int = 20


class Regime:
    """A level the stream sits at: robust mean and scale, how often values repeat there."""

    __slots__ = ("mu", "sigma", "n", "pairs", "repeats", "visits", "novel", "stuck_at")

    def __init__(self, mu: float, sigma: float, novel: bool = False):
        self.mu = mu
        self.sigma = sigma
        self.n = 1
        self.pairs = 0
        self.repeats = 0
        self.visits = 1
        self.novel = novel
        self.stuck_at = 0  # run length that counts as stuck (0: recompute)

    def stuck_threshold(self, settings: Settings) -> int:
        if not self.stuck_at:
            p = (self.repeats + 1) / (self.pairs + 2)
            if p >= 0.999:
                self.stuck_at = 1 << 30
            else:
                need = 1 + math.ceil(math.log(settings.stuck_alpha) / math.log(p))
                self.stuck_at = max(settings.stuck_min, need)
        return self.stuck_at

    def to_state(self) -> list:
        return [self.mu, self.sigma, self.n, self.pairs, self.repeats, self.visits, self.novel]

    @classmethod
    def from_state(cls, state: list) -> Regime:
        r = cls(state[0], state[1], state[6])
        r.n, r.pairs, r.repeats, r.visits = state[2], state[3], state[4], state[5]
        return r


class StreamDetector:
    """The detectors of one stream. ``feed`` takes readings in time order and returns the
    findings they complete (usually none); ``overdue`` is asked about dropouts."""

    def __init__(self, stream: dict, settings: Settings):
        self.stream = stream
        self.s = settings
        self.n = 0
        self.late = 0
        self.regimes: list[Regime] = []
        self.cur = -1
        self.floor = 1e-9
        # the current visit to a regime, and the one before it
        self.prev = -1
        self.visit_len = 0
        self.visit_start = 0.0
        self.visit_x = 0.0
        # runs of identical values
        self.last_x: float | None = None
        self.run_len = 0
        self.run_start = 0.0
        self.stuck_open = False
        # outliers in a row, and a spike waiting for the stream to settle back
        self.out: list[tuple[float, float, float]] = []
        self.spike: tuple | None = None
        self.spike_after = 0
        self.spike_wait = 0
        self.local = 0.0  # the level of the last few ordinary readings (spikes jump from it)
        # CUSUM (both sides) and the recent deviations it is judged on
        self.sp = self.sn = 0.0
        self.sp_start = self.sn_start = 0.0
        self.recent: deque = deque(maxlen=600)
        self.drift_open = False
        self.calm = 0
        # oscillation: alternations above/below the band
        self.zz = 0
        self.flips: deque = deque(maxlen=settings.osc_flips)
        self.osc_open = False
        # arrivals
        self.last_ts: float | None = None
        self.interval: float | None = None
        self.gap_bins = [0] * (RATIO_BINS + 1)
        self.gaps = 0
        self.dropout_factor = settings.dropout_factor
        self.in_dropout = False

    # -- persistence (the checkpoint keeps the model, so a restart needs no new warm-up) --
    _SCALARS = (
        "n late cur floor prev visit_len visit_start visit_x last_x run_len run_start "
        "stuck_open spike spike_after spike_wait local sp sn sp_start sn_start drift_open calm "
        "zz osc_open last_ts interval gap_bins gaps dropout_factor in_dropout"
    ).split()

    def to_state(self) -> dict:
        state = {name: getattr(self, name) for name in self._SCALARS}
        state["regimes"] = [r.to_state() for r in self.regimes]
        state["out"] = self.out
        state["recent"] = list(self.recent)
        state["flips"] = list(self.flips)
        return state

    @classmethod
    def from_state(cls, stream: dict, settings: Settings, state: dict) -> StreamDetector:
        det = cls(stream, settings)
        for name in cls._SCALARS:
            setattr(det, name, state[name])
        if det.spike is not None:
            det.spike = tuple(det.spike)
        det.regimes = [Regime.from_state(r) for r in state["regimes"]]
        det.out = [tuple(o) for o in state["out"]]
        det.recent.extend(tuple(r) for r in state["recent"])
        det.flips.extend(tuple(f) for f in state["flips"])
        return det

    # -- the reading loop ------------------------------------------------------------
    def feed(self, ts: float, x: float) -> list[Finding] | None:
        last_ts = self.last_ts
        if last_ts is not None:
            gap = ts - last_ts
            if gap < 0:
                if gap < -LATE_TOLERANCE_S:
                    self.late += 1  # another publisher's reading, behind this stream's time
                    return None
                gap = 0.0
            self._arrival(gap)
        if last_ts is None or ts > last_ts:
            self.last_ts = ts
        self.n += 1
        if self.n <= self.s.warmup_readings:
            self._learn(ts, x)
            if self.n == self.s.warmup_readings:
                self._end_warmup()
            return None
        return self._detect(ts, x)

    def _arrival(self, gap: float) -> None:
        interval = self.interval
        if self.in_dropout:
            self.in_dropout = False  # back: the gap that ended was the dropout
            return
        if interval is None:
            if gap > 0:
                self.interval = gap
            return
        if gap < 3 * interval:
            self.interval = interval + 0.02 * (gap - interval)
        ratio_bin = int(gap / interval * 4) if interval > 0 else RATIO_BINS
        self.gap_bins[ratio_bin if ratio_bin < RATIO_BINS else RATIO_BINS] += 1
        self.gaps += 1
        if self.gaps % 2048 == 0:
            self._update_dropout_factor()

    def _update_dropout_factor(self) -> None:
        """Where the stream has shown longer gaps (more than one in a thousand), wait longer."""
        allowed = self.gaps / 1000.0
        seen = 0
        for i in range(RATIO_BINS, -1, -1):
            seen += self.gap_bins[i]
            if seen > allowed:
                quantile = (i + 1) / 4.0 if i < RATIO_BINS else 64.0
                self.dropout_factor = max(self.s.dropout_factor, 1.5 * quantile)
                return

    def _nearest(self, x: float, exclude: int = -1, known: bool = False) -> tuple[int, float]:
        """The regime ``x`` is closest to (in its own noise), and how far; ``known``: only
        among learned regimes (a level seen once in a fault is not where a reading goes)."""
        best, best_z = -1, math.inf
        floor = self.floor
        for i, r in enumerate(self.regimes):
            if i == exclude or (known and r.novel):
                continue
            z = abs(x - r.mu) / (r.sigma if r.sigma > floor else floor)
            if z < best_z:
                best, best_z = i, z
        return best, best_z

    def _learn(self, ts: float, x: float) -> None:
        """Warm-up: place the reading in a regime (or start one); report nothing."""
        i, z = self._nearest(x)
        if i < 0 or z > 6.0:
            sigma = max(abs(x) * 0.01, self.floor, 1e-6)
            self.regimes.append(Regime(x, sigma))
            i = len(self.regimes) - 1
            self._switch(i, ts, x)
        elif i != self.cur:
            self.regimes[i].visits += 1
            self._switch(i, ts, x)
        self.visit_len += 1
        r = self.regimes[i]
        r.n += 1
        d = x - r.mu
        r.mu += d / r.n
        r.sigma += (abs(d) * 1.2533 - r.sigma) / r.n
        self._runs(ts, x, r, learning=True)

    def _end_warmup(self) -> None:
        """Keep the regimes the stream really sat in (a warm-up spike is no regime), one
        per level (early on, before its noise was known, one level may have made two)."""
        keep = [r for r in self.regimes if r.n >= 10] or [max(self.regimes, key=lambda r: r.n)]
        current = self.regimes[self.cur]
        self.regimes = keep
        self._update_floor()
        merged: list[Regime] = []
        for r in sorted(keep, key=lambda r: r.mu):
            last = merged[-1] if merged else None
            if last is not None and r.mu - last.mu <= 3 * max(r.sigma, last.sigma, self.floor):
                total = last.n + r.n
                last.mu = (last.mu * last.n + r.mu * r.n) / total
                last.sigma = (last.sigma * last.n + r.sigma * r.n) / total
                last.pairs += r.pairs
                last.repeats += r.repeats
                last.visits += r.visits
                last.n = total
                if current is r:
                    current = last
            else:
                merged.append(r)
        keep = self.regimes = merged
        self.cur = keep.index(current) if current in keep else self._nearest(current.mu)[0]
        self.prev = -1
        for r in keep:
            r.stuck_at = 0
        self._update_dropout_factor()
        self._reset_shape()

    def _update_floor(self) -> None:
        """No regime is trusted to be quieter than half the noisiest one (0 A idle is
        exactly 0: its noise is borrowed from the charging level)."""
        sigmas = [r.sigma for r in self.regimes if r.n >= 30] or [r.sigma for r in self.regimes]
        top = max((abs(r.mu) for r in self.regimes), default=0.0)
        self.floor = max(0.5 * max(sigmas, default=0.0), 1e-6 * top, 1e-9)

    def _switch(self, i: int, ts: float, x: float) -> None:
        self.prev, self.cur = self.cur, i
        self.visit_len = 0
        self.visit_start, self.visit_x = ts, x
        self.local = self.regimes[i].mu
        self._reset_shape()

    def _reset_shape(self) -> None:
        self.sp = self.sn = 0.0
        self.recent.clear()
        self.zz = 0
        self.flips.clear()
        self.out = []
        self.spike = None

    def _runs(self, ts: float, x: float, r: Regime, learning: bool = False) -> Finding | None:
        """Runs of identical values; STUCK when one outlasts what the regime makes likely."""
        if x == self.last_x:
            self.run_len += 1
            threshold = 0 if learning else r.stuck_threshold(self.s)
            if learning or self.run_len < threshold:
                r.pairs += 1
                r.repeats += 1
                if r.pairs % 256 == 0:
                    r.stuck_at = 0
                return None
            if self.stuck_open:
                return None
            self.stuck_open = True
            return Finding(
                "STUCK",
                self.run_start,
                self.stream,
                "run-length",
                float(self.run_len),
                float(threshold),
                x,
                r.mu,
                self.run_start,
                ts,
                self.run_len,
                {"repeat_probability": round((r.repeats + 1) / (r.pairs + 2), 6)},
            )
        if self.last_x is not None:
            r.pairs += 1
            if r.pairs % 256 == 0:
                r.stuck_at = 0
        self.last_x = x
        self.run_len = 1
        self.run_start = ts
        self.stuck_open = False
        return None

    def _detect(self, ts: float, x: float) -> list[Finding] | None:
        s = self.s
        found: list[Finding] = []
        r = self.regimes[self.cur]
        sigma = r.sigma if r.sigma > self.floor else self.floor
        z = (x - r.mu) / sigma
        self.visit_len += 1
        stuck = self._runs(ts, x, r)
        if stuck is not None:
            found.append(stuck)
        if -s.z_shift <= z <= s.z_shift:
            self._in_band(ts, x, z, r, sigma, found)
        else:
            j, zj = self._nearest(x, exclude=self.cur, known=True)
            if j >= 0 and zj <= s.z_shift:
                self._enter(j, ts, x, found)
            else:
                self._outlier(ts, x, z, r, sigma, found)
        if self.cur >= 0 and self.regimes[self.cur] is r:
            self._shape(ts, x, z, r, sigma, found)
        return found or None

    def _in_band(self, ts, x, z, r: Regime, sigma, found) -> None:
        s = self.s
        settled = -2.5 < z < 2.5
        if self.out:
            out = self.out
            self.out = []
            peak = max(out, key=lambda o: abs(o[2]))
            jump = abs(peak[1] - self.local) / sigma
            if len(out) <= s.spike_max and abs(peak[2]) >= s.z_spike and jump >= s.z_spike:
                self.spike = (out[0][0], out[-1][0], peak, len(out))
                self.spike_after, self.spike_wait = (1 if settled else 0), 1
        elif self.spike is not None:
            # Back for good (settled twice), or swinging to the other side (an oscillation),
            # or lingering out there (not a spike).
            self.spike_wait += 1
            if settled:
                self.spike_after += 1
            elif (z > 0) != (self.spike[2][2] > 0) or self.spike_wait > 4:
                self.spike = None
            if self.spike is not None and self.spike_after >= s.spike_confirm:
                first, last, (_, peak_x, peak_z), count = self.spike
                self.spike = None
                if not (self.drift_open or self.osc_open):
                    found.append(
                        Finding(
                            "SPIKE",
                            first,
                            self.stream,
                            "regime-zscore",
                            abs(peak_z),
                            s.z_spike,
                            peak_x,
                            r.mu,
                            first,
                            ts,
                            count,
                        )
                    )
        if self.regimes[self.cur].novel and self.visit_len == s.shift_run:
            self._novel_level(ts, found)
        if settled:
            self.local += 0.25 * (x - self.local)
        # Learn the regime from ordinary readings only (not while a change is building,
        # nor from a run of repeated values).
        quiet = self.sp < s.cusum_h / 4 and self.sn < s.cusum_h / 4 and not self.drift_open
        if -3.0 < z < 3.0 and quiet and self.run_len < s.stuck_min:
            r.n += 1
            d = x - r.mu
            r.mu += d * max(1.0 / r.n, 0.002)
            r.sigma += (abs(d) * 1.2533 - r.sigma) * max(1.0 / r.n, 0.01)
            if r.n % 1024 == 0:
                self._update_floor()
                if r.novel and r.visits > s.learn_visits:
                    r.novel = False

    def _enter(self, j: int, ts: float, x: float, found) -> None:
        """The reading fits another regime: a change of regime, or the end of a short visit
        (one or two readings away and back: a spike)."""
        s = self.s
        if self.visit_len - 1 <= s.spike_max and j == self.prev and self.prev >= 0:
            back = self.regimes[j]
            sigma = back.sigma if back.sigma > self.floor else self.floor
            score = abs(self.visit_x - back.mu) / sigma
            if score >= s.z_spike:
                found.append(
                    Finding(
                        "SPIKE",
                        self.visit_start,
                        self.stream,
                        "regime-visit",
                        score,
                        s.z_spike,
                        self.visit_x,
                        back.mu,
                        self.visit_start,
                        ts,
                        self.visit_len - 1,
                    )
                )
        target = self.regimes[j]
        target.visits += 1
        if target.novel and target.visits > s.learn_visits:
            target.novel = False
        self._switch(j, ts, x)
        self.visit_len = 1

    def _novel_level(self, ts: float, found) -> None:
        """A visit to a level first seen after warm-up has lasted: report it."""
        r = self.regimes[self.cur]
        base = self.regimes[self.prev] if self.prev >= 0 else r
        sigma = base.sigma if base.sigma > self.floor else self.floor
        score = abs(r.mu - base.mu) / sigma
        found.append(
            Finding(
                "LEVEL_SHIFT",
                self.visit_start,
                self.stream,
                "regime-novel",
                score,
                self.s.z_shift,
                r.mu,
                base.mu,
                self.visit_start,
                ts,
                self.visit_len,
            )
        )

    def _outlier(self, ts, x, z, r: Regime, sigma, found) -> None:
        s = self.s
        self.spike = None
        out = self.out
        if out and (out[-1][2] > 0) != (z > 0):
            out.clear()
        out.append((ts, x, z))
        if len(out) < s.shift_run or self.drift_open:
            return  # during a drift, the departure is the drift's
        values = [o[1] for o in out[-s.shift_run :]]
        level = sum(values) / len(values)
        spread = (sum((v - level) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        flat = max(values) - min(values) <= 4 * sigma and spread <= 1.5 * sigma
        if not flat or abs(level - self.local) < s.z_shift * sigma:
            return  # not a new level (yet): an oscillation, or a ramp from where it was
        first = out[-s.shift_run][0]
        score = abs(level - r.mu) / sigma
        found.append(
            Finding(
                "LEVEL_SHIFT",
                first,
                self.stream,
                "regime-zscore",
                score,
                s.z_shift,
                level,
                r.mu,
                first,
                ts,
                s.shift_run,
            )
        )
        # The new level becomes a regime of its own (novel until visited often enough).
        again, z_again = self._nearest(level, exclude=self.cur)
        if again >= 0 and z_again <= s.z_shift and self.regimes[again].novel:
            back = self.regimes[again]
            back.visits += 1
            back.novel = back.visits <= s.learn_visits
            self._switch(again, first, level)
            self.visit_len = s.shift_run
            return
        fresh = Regime(level, r.sigma, novel=True)
        fresh.n = s.shift_run
        if len(self.regimes) >= MAX_REGIMES:
            evict = min(
                (i for i in range(len(self.regimes)) if i != self.cur),
                key=lambda i: (not self.regimes[i].novel, self.regimes[i].visits),
            )
            del self.regimes[evict]
            if self.cur > evict:
                self.cur -= 1
        self.regimes.append(fresh)
        self._switch(len(self.regimes) - 1, first, level)
        self.visit_len = s.shift_run

    def _shape(self, ts, x, z, r: Regime, sigma, found) -> None:
        """CUSUM for drift, alternations for oscillation (both on the clipped z-score)."""
        s = self.s
        n = self.n
        # oscillation
        if z > s.osc_h or z < -s.osc_h:
            side = 1 if z > 0 else -1
            if side != self.zz:
                self.zz = side
                flips = self.flips
                flips.append((n, ts, x))
                if (
                    len(flips) == s.osc_flips
                    and n - flips[0][0] <= s.osc_window
                    and not self.osc_open
                ):
                    self.osc_open = True
                    self.out = []
                    swing = max(abs(f[2] - r.mu) for f in flips)
                    found.append(
                        Finding(
                            "OSCILLATION",
                            flips[0][1],
                            self.stream,
                            "zigzag",
                            swing / sigma,
                            s.osc_h,
                            max((f[2] for f in flips), key=lambda v: abs(v - r.mu)),
                            r.mu,
                            flips[0][1],
                            ts,
                            n - flips[0][0] + 1,
                            {"alternations": len(flips)},
                        )
                    )
        elif self.osc_open and self.flips and n - self.flips[-1][0] > 2 * s.osc_window:
            self.osc_open = False
        # drift: two-sided CUSUM of the clipped deviation (a repeated value says nothing)
        if self.run_len >= s.stuck_min:
            return
        c = s.cusum_clip
        zc = c if z > c else (-c if z < -c else z)
        sp = self.sp + zc - s.cusum_k
        sn = self.sn - zc - s.cusum_k
        if sp <= 0:
            sp, self.sp_start = 0.0, ts
        if sn <= 0:
            sn, self.sn_start = 0.0, ts
        self.recent.append((ts, x))
        h = s.cusum_h
        if self.drift_open:
            sp, sn = min(sp, h), min(sn, h)
            if -2.0 < z < 2.0 and sp < h / 4 and sn < h / 4:
                self.calm += 1
                if self.calm >= s.rearm:
                    self.drift_open = False
            else:
                self.calm = 0
        elif (sp >= h or sn >= h) and not self.osc_open:
            start = self.sp_start if sp >= h else self.sn_start
            finding = self._drift(start, ts, x, r, sigma, max(sp, sn))
            if finding is not None:
                found.append(finding)
            self.drift_open = True
            self.calm = 0
        self.sp, self.sn = sp, sn

    def _drift(self, start, ts, x, r: Regime, sigma, score) -> Finding | None:
        """Trend or step? A least-squares line over the window since the CUSUM left zero:
        a slope that explains the rise is DRIFT, a flat window a (small) LEVEL_SHIFT."""
        window = [(t, v) for t, v in self.recent if t >= start]
        if len(window) < 3:
            window = list(self.recent)[-3:]
        m = len(window)
        mean_t = sum(t for t, _ in window) / m
        mean_v = sum(v for _, v in window) / m
        stt = sum((t - mean_t) ** 2 for t, _ in window)
        slope = sum((t - mean_t) * (v - mean_v) for t, v in window) / stt if stt > 0 else 0.0
        rise = slope * (window[-1][0] - window[0][0])
        level = mean_v
        # A step is off from its first readings on; a drift grows (first third near 0).
        sign = 1.0 if level >= r.mu else -1.0
        third = max(m // 3, 1)
        early = sum((v - r.mu) * sign for _, v in window[:third]) / third
        late = sum((v - r.mu) * sign for _, v in window[-third:]) / third
        trend = not (early >= 1.5 * sigma and early >= 0.6 * late)
        kind = "DRIFT" if trend else "LEVEL_SHIFT"
        current = level + rise / 2 if trend else level
        onset = window[0][0]
        return Finding(
            kind,
            onset,
            self.stream,
            "cusum",
            score,
            self.s.cusum_h,
            round(current, 6),
            r.mu,
            onset,
            ts,
            m,
            {"slope_per_s": round(slope, 6)} if trend else {},
        )

    # -- dropouts ---------------------------------------------------------------------
    def overdue(self, clock: float) -> Finding | None:
        """A DROPOUT when the data clock has passed the expected next reading by far."""
        if self.in_dropout or self.interval is None or self.n < self.s.warmup_readings:
            return None
        limit = self.last_ts + self.dropout_factor * self.interval
        if clock <= limit:
            return None
        self.in_dropout = True
        gap = clock - self.last_ts
        return Finding(
            "DROPOUT",
            self.last_ts,
            self.stream,
            "inter-arrival",
            gap / self.interval,
            self.dropout_factor,
            round(gap, 3),
            round(self.interval, 6),
            self.last_ts,
            clock,
            0,
            {"unit": "s"},
        )
