"""Online anomaly detection for one metric stream, learned from the stream itself.

A stream is modelled as a few *regimes*: levels it sits at with their own noise (a charging
current: 0 A between sessions, 32 A during them). Warm-up learns them, and goes on while
the stream has not yet shown its noise (an idle 0 A that is always exactly 0). Each reading
is placed in the regime it fits; moving between learned regimes is normal, departing from
all of them is not:

- SPIKE: one or two readings far out (robust z >= z_spike), then back in the same regime;
  also a visit of one or two readings to another regime (0 A for one reading mid-session).
- LEVEL_SHIFT: ``shift_run`` readings in a row outside every regime, flat (a new level), or
  entering a level first seen after warm-up (until it was visited ``learn_visits`` times).
  The new level becomes a regime. A flat run soon after as large a swing the other way is
  the top of a slow oscillation, not a new level, unless it lasts.
- DRIFT: a two-sided CUSUM (Page) of the clipped z-scores crosses ``cusum_h``; the window
  since it left zero is tested for a trend (a step found this way is a LEVEL_SHIFT).
- STUCK: the same value repeated longer than the regime makes likely (from how often it
  repeats values, so a 0 A idle that is always exactly 0 never counts).
- DROPOUT: no reading for ``dropout_factor`` times the usual interval (or more, where the
  stream has shown longer gaps), judged against the data clock of every stream.
- OSCILLATION: ``osc_flips`` alternations of the deviation between above +osc_h and below
  -osc_h within ``osc_window`` readings, or two that both reach a spike's size.

One departure, one kind: a DRIFT or an OSCILLATION opens an *episode* during which no
other kind (spike, level shift, drift) is reported, until the stream has been calm for
``rearm`` readings (or a drift has come to rest at a new level, which becomes a regime).

Everything here is plain Python over floats: one reading costs a few microseconds, which is
what the throughput target needs (see bench/detect.py); numpy would cost more per call
than it saves on sequential recurrences.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import cached_property

from .findings import Finding

LATE_TOLERANCE_S = 0.5  # readings this much older than the last are taken as simultaneous
MAX_REGIMES = 8
MAX_WARMUPS = 10  # a stream whose values never vary stops warming up after this many
PLATEAU = 120  # readings: a drift that has been flat this long has stopped
RATIO_BINS = 64  # gap/interval histogram: bins of 0.25 up to 16x, then one overflow bin


@dataclass(frozen=True)
class Settings:
    """Thresholds, all derived from one sensitivity knob (1.0 by default; 2.0 reports
    roughly what is half as far from normal, 0.5 only what is twice as far). Derived ones
    are computed once: the detectors read them for every reading."""

    sensitivity: float = 1.0
    warmup_readings: int = 240

    @cached_property
    def z_spike(self) -> float:
        return 5.5 / self.sensitivity

    @cached_property
    def z_shift(self) -> float:
        return 4.0 / self.sensitivity

    @cached_property
    def cusum_h(self) -> float:
        return 14.0 / self.sensitivity

    @cached_property
    def cusum_quiet(self) -> float:
        """Below this on both sides the CUSUM sees no change building: the regime learns."""
        return self.cusum_h / 4

    @cached_property
    def osc_h(self) -> float:
        return 3.5 / self.sensitivity

    @cached_property
    def stuck_alpha(self) -> float:
        return 1e-7**self.sensitivity

    @cached_property
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
    """The detectors of one stream. ``feed`` (or ``arrive``, then ``judge``) takes readings
    in time order and returns the findings they complete (usually none); ``overdue`` is
    asked about dropouts."""

    # Slots: a stream's state in one compact object (hundreds of streams take turns).
    __slots__ = (
        "stream s n arrived warm late regimes cur floor prev visit_len visit_start visit_x "
        "last_x run_len run_start stuck_open out spike spike_after spike_wait local sp sn "
        "sp_start sn_start recent zz flips above_n below_n above_z below_z episode calm "
        "last_ts interval gap_bins gaps dropout_factor in_dropout"
    ).split()

    def __init__(self, stream: dict, settings: Settings):
        self.stream = stream
        self.s = settings
        self.n = 0  # readings judged
        self.arrived = 0  # readings arrived (ahead of n while values wait to be judged)
        self.warm = settings.warmup_readings  # readings learned before anything is reported
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
        # oscillation: alternations above/below the band, and when each side was last seen
        self.zz = 0
        self.flips: deque = deque(maxlen=settings.osc_flips)
        self.above_n = self.below_n = -(1 << 30)
        self.above_z = self.below_z = 0.0  # how far that last excursion went
        # The departure being reported (DRIFT or OSCILLATION): no other kind is reported for
        # it until the stream has been calm for ``rearm`` readings.
        self.episode: str | None = None
        self.calm = 0
        # arrivals
        self.last_ts: float | None = None
        self.interval: float | None = None
        self.gap_bins = [0] * (RATIO_BINS + 1)
        self.gaps = 0
        self.dropout_factor = settings.dropout_factor
        self.in_dropout = False

    # -- persistence (the checkpoint keeps the model, so a restart needs no new warm-up) --
    _SCALARS = (
        "n warm late cur floor prev visit_len visit_start visit_x last_x run_len run_start "
        "stuck_open spike spike_after spike_wait local sp sn sp_start sn_start episode calm "
        "zz above_n below_n above_z below_z last_ts interval gap_bins gaps dropout_factor "
        "in_dropout"
    ).split()

    def to_state(self) -> dict:
        state = {name: getattr(self, name) for name in self._SCALARS}
        state["regimes"] = [r.to_state() for r in self.regimes]
        state["out"] = self.out
        state["recent"] = self._recent_needed()
        state["flips"] = list(self.flips)
        return state

    def _recent_needed(self) -> list:
        """Of the recent readings, what a later verdict can still look at: those since the
        CUSUM last left zero, the last few, and during a drift the plateau window (a
        checkpoint of hundreds of streams stays small)."""
        recent = list(self.recent)
        since = min(self.sp_start, self.sn_start)
        keep = max(3, PLATEAU if self.episode == "DRIFT" else 0)
        first = len(recent) - keep
        while first > 0 and recent[first - 1][0] >= since:
            first -= 1
        return recent[max(first, 0) :]

    @classmethod
    def from_state(cls, stream: dict, settings: Settings, state: dict) -> StreamDetector:
        det = cls(stream, settings)
        for name in cls._SCALARS:
            setattr(det, name, state[name])
        if det.spike is not None:
            det.spike = tuple(det.spike)
        det.arrived = det.n  # a checkpoint is taken with every value judged
        det.regimes = [Regime.from_state(r) for r in state["regimes"]]
        det.out = [tuple(o) for o in state["out"]]
        det.recent.extend(tuple(r) for r in state["recent"])
        det.flips.extend(tuple(f) for f in state["flips"])
        return det

    # -- the reading loop ------------------------------------------------------------
    def feed(self, ts: float, x: float) -> list[Finding] | None:
        """One reading: its arrival, then its value."""
        return self.judge(ts, x) if self.arrive(ts) else None

    def arrive(self, ts: float) -> int:
        """The arrival half of a reading: what dropouts are judged on (gaps, the data time
        of the last reading, how many came). 0: a late reading, skipped; 1: its value goes
        on to ``judge``; 2: the same, and the warm-up decision falls on it, so every value
        that arrived must be judged before this stream's ``deadline`` is asked again.

        The two halves share no state but that decision, so a caller may judge the values
        of many streams later, grouped per stream (each stream's state then stays in the
        cache: nearly twice as fast at hundreds of streams), and ask about dropouts in time order
        meanwhile: the findings are the same."""
        last_ts = self.last_ts
        if last_ts is None:
            self.last_ts = ts
        else:
            gap = ts - last_ts
            if gap < 0:
                if gap < -LATE_TOLERANCE_S:
                    self.late += 1  # another publisher's reading, behind this stream's time
                    return 0
                gap = 0.0
            else:
                self.last_ts = ts
            interval = self.interval
            if self.in_dropout:
                self.in_dropout = False  # back: the gap that ended was the dropout
            elif interval is None:
                if gap > 0:
                    self.interval = gap
            else:
                if gap < 3 * interval:
                    self.interval = interval + 0.02 * (gap - interval)
                ratio_bin = int(gap / interval * 4) if interval > 0 else RATIO_BINS
                self.gap_bins[ratio_bin if ratio_bin < RATIO_BINS else RATIO_BINS] += 1
                gaps = self.gaps = self.gaps + 1
                if gaps % 2048 == 0:
                    self._update_dropout_factor()
        arrived = self.arrived = self.arrived + 1
        return 2 if arrived == self.warm else 1

    def judge(self, ts: float, x: float) -> list[Finding] | None:
        """The value half of a reading that ``arrive`` let on, in the same order."""
        n = self.n = self.n + 1
        if n <= self.warm:
            self._learn(ts, x)
            if self.n == self.warm:
                if self._noise_known() or self.n >= MAX_WARMUPS * self.s.warmup_readings:
                    self._end_warmup()
                else:
                    self.warm += self.s.warmup_readings
            return None
        return self._detect(ts, x)

    def _noise_known(self) -> bool:
        """Has the stream shown its noise? A warm-up that saw only an idle 0 A (always
        exactly 0) cannot tell how far a charging current may wander: it goes on."""
        return any(r.n >= 10 and r.pairs - r.repeats >= 10 for r in self.regimes)

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
                if self.episode is None:
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
        if self.visit_len == s.shift_run and self.regimes[self.cur].novel and not self.episode:
            self._novel_level(ts, found)
        if settled:
            self.local += 0.25 * (x - self.local)
        # Learn the regime from ordinary readings only (not while a change is building,
        # nor from a run of repeated values).
        quiet = s.cusum_quiet
        if (
            -3.0 < z < 3.0
            and self.sp < quiet
            and self.sn < quiet
            and self.episode is None
            and self.run_len < s.stuck_min
        ):
            n = r.n = r.n + 1
            rate = 1.0 / n
            d = x - r.mu
            r.mu += d * (rate if rate > 0.002 else 0.002)
            r.sigma += (abs(d) * 1.2533 - r.sigma) * (rate if rate > 0.01 else 0.01)
            if n % 1024 == 0:
                self._update_floor()
                if r.novel and r.visits > s.learn_visits:
                    r.novel = False

    def _enter(self, j: int, ts: float, x: float, found) -> None:
        """The reading fits another regime: a change of regime, or the end of a short visit
        (one or two readings away and back: a spike)."""
        s = self.s
        if (
            self.visit_len - 1 <= s.spike_max
            and j == self.prev
            and self.prev >= 0
            and self.episode is None
        ):
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
        if len(out) < s.shift_run or self.episode:
            return  # during a drift or an oscillation, the departure is theirs
        values = [o[1] for o in out[-s.shift_run :]]
        level = sum(values) / len(values)
        spread = (sum((v - level) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        flat = max(values) - min(values) <= 4 * sigma and spread <= 1.5 * sigma
        if not flat or abs(level - self.local) < s.z_shift * sigma:
            return  # not a new level (yet): an oscillation, or a ramp from where it was
        # The other side as far out lately: the flat top of a slow swing, not a new level,
        # unless it stays longer than half the slowest swing the oscillation test looks for.
        other_n, other_z = (self.below_n, self.below_z) if z > 0 else (self.above_n, self.above_z)
        if (
            self.n - other_n <= s.osc_window
            and other_z >= 0.5 * abs(level - r.mu) / sigma
            and len(out) < s.osc_window // 2
        ):
            return
        first = out[-s.shift_run][0]
        found.append(
            Finding(
                "LEVEL_SHIFT",
                first,
                self.stream,
                "regime-zscore",
                abs(level - r.mu) / sigma,
                s.z_shift,
                level,
                r.mu,
                first,
                ts,
                s.shift_run,
            )
        )
        self._adopt(level, r.sigma, first, s.shift_run)

    def _adopt(self, level: float, sigma: float, since: float, readings: int) -> None:
        """A new level becomes a regime of its own (novel until visited often enough)."""
        s = self.s
        again, z_again = self._nearest(level, exclude=self.cur)
        if again >= 0 and z_again <= s.z_shift and self.regimes[again].novel:
            back = self.regimes[again]  # not yet trusted: its level starts afresh
            back.mu, back.n = level, readings
            back.visits += 1
            back.novel = back.visits <= s.learn_visits
            self._switch(again, since, level)
            self.visit_len = readings
            return
        fresh = Regime(level, sigma, novel=True)
        fresh.n = readings
        if len(self.regimes) >= MAX_REGIMES:
            evict = min(
                (i for i in range(len(self.regimes)) if i != self.cur),
                key=lambda i: (not self.regimes[i].novel, self.regimes[i].visits),
            )
            del self.regimes[evict]
            if self.cur > evict:
                self.cur -= 1
        self.regimes.append(fresh)
        self._switch(len(self.regimes) - 1, since, level)
        self.visit_len = readings

    def _shape(self, ts, x, z, r: Regime, sigma, found) -> None:
        """CUSUM for drift, alternations for oscillation (both on the clipped z-score)."""
        s = self.s
        n = self.n
        # oscillation
        osc_h = s.osc_h
        if z > osc_h or z < -osc_h:
            side = 1 if z > 0 else -1
            if side > 0:
                self.above_z = max(z, self.above_z) if self.above_n == n - 1 else z
                self.above_n = n
            else:
                self.below_z = max(-z, self.below_z) if self.below_n == n - 1 else -z
                self.below_n = n
            flips = self.flips
            if side != self.zz:
                self.zz = side
                flips.append((n, ts, x))
                judge = True
            else:
                # The swing goes on growing: it may only now reach a spike's size.
                judge = z >= s.z_spike or z <= -s.z_spike
            if judge and self.episode != "OSCILLATION":
                swings = self._swings(n, z, side)
                if swings:
                    self._open("OSCILLATION")
                    self.out = []
                    first = flips[-swings]
                    swung = [f[2] for f in list(flips)[-swings:]] + [x]
                    peak = max(swung, key=lambda v: abs(v - r.mu))
                    found.append(
                        Finding(
                            "OSCILLATION",
                            first[1],
                            self.stream,
                            "zigzag",
                            abs(peak - r.mu) / sigma,
                            s.osc_h,
                            peak,
                            r.mu,
                            first[1],
                            ts,
                            n - first[0] + 1,
                            {"alternations": swings},
                        )
                    )
        # drift: two-sided CUSUM of the clipped deviation (a repeated value says nothing,
        # nor does a level just adopted, whose mean is still a rough estimate)
        if self.run_len >= s.stuck_min:
            return
        if r.n < s.rearm:
            self.sp = self.sn = 0.0
            return
        c = s.cusum_clip
        zc = c if z > c else (-c if z < -c else z)
        k = s.cusum_k
        sp = self.sp + zc - k
        sn = self.sn - zc - k
        if sp <= 0:
            sp, self.sp_start = 0.0, ts
        if sn <= 0:
            sn, self.sn_start = 0.0, ts
        self.recent.append((ts, x))
        h = s.cusum_h
        if self.episode:
            sp, sn = min(sp, h), min(sn, h)
            if -2.0 < z < 2.0 and sp < s.cusum_quiet and sn < s.cusum_quiet:
                self.calm += 1
                if self.calm >= s.rearm:
                    self.episode = None
            else:
                self.calm = 0
                if self.episode == "DRIFT" and n % s.rearm == 0 and self._plateau(r, sigma):
                    return  # the drift stopped at a new level, which is now a regime
        elif sp >= h or sn >= h:
            start = self.sp_start if sp >= h else self.sn_start
            self.sp, self.sn = min(sp, h), min(sn, h)
            found.append(self._drift_or_step(start, ts, r, sigma, max(sp, sn)))
            return  # a step moved the stream to a new regime (and reset the CUSUM)
        self.sp, self.sn = sp, sn

    def _swings(self, n: int, z: float, side: int) -> int:
        """How many alternations make this an oscillation (0: not yet): ``osc_flips`` within
        ``osc_window`` readings, or two in half that window that both reach a spike's size
        (a spike does not swing back as far; noise does not go that far twice)."""
        s = self.s
        flips = self.flips
        if len(flips) >= s.osc_flips and n - flips[-s.osc_flips][0] <= s.osc_window:
            return s.osc_flips
        other = self.below_z if side > 0 else self.above_z
        if (
            len(flips) >= 2
            and n - flips[-2][0] <= s.osc_window // 2
            and min(abs(z), other) >= s.z_spike
        ):
            return 2
        return 0

    def _plateau(self, r: Regime, sigma: float) -> bool:
        """A drift that stopped away from the regime: the last ``PLATEAU`` readings flat
        (their halves within half a sigma) and more than a sigma off, where the CUSUM never
        calms down. Its level becomes a regime (reported already, as the drift), so the
        stream is watched again."""
        if len(self.recent) < PLATEAU:
            return False
        tail = list(self.recent)[-PLATEAU:]
        half = PLATEAU // 2
        early = sum(v for _, v in tail[:half]) / half
        late = sum(v for _, v in tail[half:]) / half
        if abs(late - early) >= 0.5 * sigma or abs(late - r.mu) < sigma:
            return False
        self.episode = None
        self._adopt(late, r.sigma, tail[half][0], half)
        return True

    def _open(self, kind: str) -> None:
        self.episode = kind
        self.calm = 0

    def _drift_or_step(self, start, ts, r: Regime, sigma, score) -> Finding:
        """Trend or step? A step is off from its first readings on, a drift grows (the
        first third of the window since the CUSUM left zero still near the regime's level).
        A drift opens an episode; a step is a LEVEL_SHIFT and its level becomes a regime.
        Until a drift has grown, the two look alike: a small step is called a drift."""
        window = [(t, v) for t, v in self.recent if t >= start]
        if len(window) < 3:
            window = list(self.recent)[-3:]
        m = len(window)
        mean_t = sum(t for t, _ in window) / m
        level = sum(v for _, v in window) / m
        stt = sum((t - mean_t) ** 2 for t, _ in window)
        slope = sum((t - mean_t) * (v - level) for t, v in window) / stt if stt > 0 else 0.0
        sign = 1.0 if level >= r.mu else -1.0
        third = max(m // 3, 1)
        early = sum((v - r.mu) * sign for _, v in window[:third]) / third
        late = sum((v - r.mu) * sign for _, v in window[-third:]) / third
        onset = window[0][0]
        if early >= 1.5 * sigma and early >= 0.6 * late:
            finding = Finding(
                "LEVEL_SHIFT", onset, self.stream, "cusum", score, self.s.cusum_h,
                round(level, 6), r.mu, onset, ts, m,
            )  # fmt: skip
            self._adopt(level, r.sigma, onset, m)
            return finding
        self._open("DRIFT")
        return Finding(
            "DRIFT", onset, self.stream, "cusum", score, self.s.cusum_h,
            round(level + slope * (window[-1][0] - window[0][0]) / 2, 6), r.mu, onset, ts, m,
            {"slope_per_s": round(slope, 6)},
        )  # fmt: skip

    # -- dropouts ---------------------------------------------------------------------
    def deadline(self) -> float:
        """The data time past which this stream's silence is a dropout (inf: none due)."""
        if (
            self.in_dropout
            or self.interval is None
            or self.last_ts is None
            or self.arrived < self.warm
        ):
            return math.inf
        return self.last_ts + self.dropout_factor * self.interval

    def overdue(self, clock: float) -> Finding | None:
        """A DROPOUT when the data clock has passed the expected next reading by far."""
        last_ts, interval = self.last_ts, self.interval
        if clock <= self.deadline() or last_ts is None or interval is None:
            return None
        self.in_dropout = True
        gap = clock - last_ts
        return Finding(
            "DROPOUT",
            last_ts,
            self.stream,
            "inter-arrival",
            gap / interval,
            self.dropout_factor,
            round(gap, 3),
            round(interval, 6),
            last_ts,
            clock,
            0,
            {"unit": "s"},
        )
