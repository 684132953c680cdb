"""Token buckets and keyed limiters, on an injected clock."""

from __future__ import annotations

import pytest

from signaling_shared.errors import RateLimited
from signaling_shared.ratelimit import KeyedRateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_refills_at_rate() -> None:
    """A bucket gives `burst` tokens at once, then `rate` per second."""
    bucket = TokenBucket(rate=2.0, burst=3, updated=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)


def test_keyed_limiter_isolates_keys_and_reports_wait() -> None:
    """One key exhausting its bucket does not limit another key."""
    clock = Clock()
    limiter = KeyedRateLimiter(rate=1.0, burst=2, clock=clock)
    assert limiter.hit("a") is None
    assert limiter.hit("a") is None
    wait = limiter.hit("a")
    assert wait == pytest.approx(1.0)
    assert limiter.hit("b") is None
    clock.now += 1.0
    assert limiter.hit("a") is None


def test_enforce_raises_rate_limited_with_retry_after() -> None:
    """enforce() raises the typed RATE_LIMITED error with a retry hint."""
    limiter = KeyedRateLimiter.per_minute(60, 1, clock=Clock())
    limiter.enforce("ip", "sign-ins")
    with pytest.raises(RateLimited) as raised:
        limiter.enforce("ip", "sign-ins")
    assert raised.value.retry_after == pytest.approx(1.0)
    assert "sign-ins" in raised.value.reason


def test_keyed_limiter_forgets_idle_keys() -> None:
    """Buckets that have refilled are pruned, so memory tracks active keys only."""
    clock = Clock()
    limiter = KeyedRateLimiter(rate=10.0, burst=1, clock=clock, prune_every=4)
    for key in ("a", "b", "c"):
        limiter.hit(key)
    assert len(limiter) == 3
    clock.now += 10.0
    limiter.hit("d")  # the 4th call prunes
    assert len(limiter) == 1
