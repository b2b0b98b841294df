"""Rate-limited logging, for lines a misbehaving peer could repeat without end."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """At most ``burst`` lines per ``interval``; then one line saying how many were
    suppressed (journald's rate limiting)."""

    def __init__(self, logger: logging.Logger, burst: int, interval: float):
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._window_start = 0.0
        self._count = 0
        self._suppressed = 0

    def warning(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            if self._suppressed:
                self.logger.warning(
                    "suppressed %d similar message(s) in the last %gs",
                    self._suppressed,
                    self.interval,
                )
            self._window_start, self._count, self._suppressed = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            self.logger.warning(fmt, *args)
        else:
            self._suppressed += 1
