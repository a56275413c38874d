"""A token bucket per caller: ``per_minute`` requests a minute, up to that many at once, then 429."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MAX_CALLERS = 10_000  # the least recently seen caller's bucket goes first past this


class RateLimiter:
    def __init__(self, *, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0  # tokens a second
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, at)

    def allow(self, caller: str) -> float:
        """0 when ``caller`` may go on (one token spent); otherwise the seconds until it may."""
        now = self._clock()
        tokens, at = self._buckets.pop(caller, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self._rate
        self._buckets[caller] = (tokens - 1 if wait == 0 else tokens, now)
        while len(self._buckets) > MAX_CALLERS:
            self._buckets.popitem(last=False)
        return wait
