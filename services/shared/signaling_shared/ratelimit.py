"""Token buckets, alone or keyed (per IP, per room, per identity).

Pure and clock-injected, so limits are tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from signaling_shared.errors import RateLimited

Clock = Callable[[], float]


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; each event takes one."""

    rate: float
    burst: int
    tokens: float = field(default=-1.0)
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens (at most ``burst``) if there are that many."""
        cost = min(cost, float(self.burst))
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens (at most ``burst``) are available."""
        cost = min(cost, float(self.burst))
        self._refill(now)
        return 0.0 if self.tokens >= cost else (cost - self.tokens) / self.rate

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class KeyedRateLimiter:
    """One bucket per key, created on first use and forgotten once full again.

    Memory stays bounded by the keys active within roughly ``burst / rate`` seconds.
    """

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic, prune_every: int = 1024) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_every = prune_every
        self._calls = 0

    @classmethod
    def per_minute(cls, per_minute: float, burst: int, *, clock: Clock = time.monotonic) -> KeyedRateLimiter:
        return cls(per_minute / 60.0, burst, clock=clock)

    def hit(self, key: str) -> float | None:
        """Take a token for ``key``: None if allowed, else the seconds to wait."""
        now = self._clock()
        self._calls += 1
        if self._calls % self._prune_every == 0:
            self._prune(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, updated=now)
        if bucket.take(now):
            return None
        return bucket.retry_after(now)

    def enforce(self, key: str, what: str) -> None:
        """Take a token for ``key`` or raise RateLimited saying ``what`` was limited."""
        wait = self.hit(key)
        if wait is not None:
            raise RateLimited(f"too many {what}, retry in {max(wait, 1.0):.0f} s", retry_after=wait)

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.is_full(now)]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
