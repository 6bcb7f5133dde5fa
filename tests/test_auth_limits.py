"""Abuse limits: FailureTracker and RateLimiter, driven by explicit ``now``."""

from __future__ import annotations

import pytest

from sipproxy.auth import FailureTracker, RateLimiter

IP = "ip:192.0.2.1"
OTHER = "ip:192.0.2.2"


class TestFailureTracker:
    def test_blocks_on_the_nth_failure_within_the_window(self) -> None:
        tracker = FailureTracker(max_failures=3, window=60.0, block_for=300.0)
        assert tracker.record_failure(IP, 0.0) is False
        assert tracker.record_failure(IP, 10.0) is False
        assert not tracker.is_blocked(IP, 10.0)
        assert tracker.record_failure(IP, 20.0) is True
        assert tracker.is_blocked(IP, 20.0)
        assert tracker.blocked_keys(20.0) == [IP]
        assert tracker.blocked_until(IP, 20.0) == 320.0
        assert tracker.blocks_total == 1
        assert not tracker.is_blocked(OTHER, 20.0)

    def test_failures_spread_beyond_the_window_never_block(self) -> None:
        tracker = FailureTracker(max_failures=3, window=60.0)
        for i in range(20):
            assert tracker.record_failure(IP, i * 30.0) is False
        assert not tracker.is_blocked(IP, 600.0)
        assert tracker.blocks_total == 0
        assert tracker.failures_total == 20

    def test_window_boundary_is_exclusive(self) -> None:
        tracker = FailureTracker(max_failures=2, window=60.0)
        tracker.record_failure(IP, 0.0)
        assert tracker.record_failure(IP, 60.0) is False
        assert tracker.record_failure(IP, 119.0) is True

    def test_unblocks_after_block_for(self) -> None:
        tracker = FailureTracker(max_failures=2, window=60.0, block_for=300.0)
        tracker.record_failure(IP, 0.0)
        tracker.record_failure(IP, 1.0)
        assert tracker.is_blocked(IP, 300.9)
        assert not tracker.is_blocked(IP, 301.0)
        assert tracker.blocked_keys(301.0) == []
        assert tracker.blocked_until(IP, 301.0) is None
        assert tracker.record_failure(IP, 302.0) is False

    def test_failures_while_blocked_do_not_extend_the_block(self) -> None:
        tracker = FailureTracker(max_failures=2, block_for=100.0)
        tracker.record_failure(IP, 0.0)
        tracker.record_failure(IP, 0.0)
        assert tracker.record_failure(IP, 50.0) is False
        assert tracker.blocked_until(IP, 50.0) == 100.0
        assert tracker.blocks_total == 1

    def test_failures_counts_those_within_the_window(self) -> None:
        tracker = FailureTracker(max_failures=3, window=60.0)
        assert tracker.failures("user:bob", 0.0) == 0
        tracker.record_failure("user:bob", 0.0)
        tracker.record_failure("user:bob", 30.0)
        assert tracker.failures("user:bob", 59.0) == 2
        assert tracker.failures("user:bob", 61.0) == 1
        assert tracker.failures("user:alice", 61.0) == 0

    def test_memory_is_bounded(self) -> None:
        tracker = FailureTracker(max_failures=5, window=60.0, max_keys=100)
        for i in range(10_000):
            tracker.record_failure(f"ip:198.51.100.{i}", float(i) / 1000)
        assert len(tracker) <= 100
        assert tracker.evictions_total == 10_000 - 100

    def test_old_entries_are_pruned(self) -> None:
        tracker = FailureTracker(max_failures=2, window=60.0, block_for=100.0)
        for i in range(50):
            tracker.record_failure(f"ip:198.51.100.{i}", 0.0)
        tracker.record_failure("ip:203.0.113.1", 0.0)
        tracker.record_failure("ip:203.0.113.1", 0.0)
        assert len(tracker) == 51
        assert not tracker.is_blocked(IP, 1_000.0)
        assert len(tracker) == 0

    @pytest.mark.parametrize("kwargs", [{"max_failures": 0}, {"window": 0}, {"block_for": -1}, {"max_keys": 0}])
    def test_bad_configuration(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError):
            FailureTracker(**kwargs)  # type: ignore[arg-type]


class TestRateLimiter:
    def test_allows_burst_then_refuses(self) -> None:
        limiter = RateLimiter(rate=1.0, burst=5.0)
        assert [limiter.allow(IP, 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
        assert limiter.allowed_total == 5
        assert limiter.rejections_total == 2
        assert limiter.allow(OTHER, 0.0)

    def test_refills_over_time(self) -> None:
        limiter = RateLimiter(rate=2.0, burst=4.0)
        for _ in range(4):
            assert limiter.allow(IP, 0.0)
        assert not limiter.allow(IP, 0.0)
        assert limiter.allow(IP, 0.5)
        assert not limiter.allow(IP, 0.5)
        assert [limiter.allow(IP, 2.5) for _ in range(5)] == [True] * 4 + [False]

    def test_refill_is_capped_at_burst(self) -> None:
        limiter = RateLimiter(rate=10.0, burst=3.0)
        limiter.allow(IP, 0.0)
        assert [limiter.allow(IP, 1_000.0) for _ in range(4)] == [True] * 3 + [False]

    def test_cost(self) -> None:
        limiter = RateLimiter(rate=1.0, burst=10.0)
        assert limiter.allow(IP, 0.0, cost=8.0)
        assert not limiter.allow(IP, 0.0, cost=3.0)
        assert limiter.allow(IP, 0.0, cost=2.0)

    def test_multiplier_raises_the_limit(self) -> None:
        limiter = RateLimiter(rate=1.0, burst=5.0)
        plain = sum(limiter.allow("ip:plain", 0.0) for _ in range(100))
        trusted = sum(limiter.allow("ip:trusted", 0.0, rate_multiplier=4.0) for _ in range(100))
        assert (plain, trusted) == (5, 20)
        assert not limiter.allow("ip:plain", 0.5)
        assert [limiter.allow("ip:trusted", 0.5, rate_multiplier=4.0) for _ in range(3)] == [True, True, False]

    def test_clock_stepping_back_grants_nothing(self) -> None:
        limiter = RateLimiter(rate=1.0, burst=2.0)
        limiter.allow(IP, 10.0)
        limiter.allow(IP, 10.0)
        assert not limiter.allow(IP, 5.0)
        assert not limiter.allow(IP, 10.5)
        assert limiter.allow(IP, 11.0)

    def test_memory_stays_bounded_with_many_keys(self) -> None:
        limiter = RateLimiter(rate=1.0, burst=10.0, max_keys=1_000)
        for i in range(50_000):
            limiter.allow(f"ip:{i}", 0.0)
        assert len(limiter) == 1_000
        assert limiter.evictions_total == 49_000

    def test_idle_buckets_are_dropped(self) -> None:
        limiter = RateLimiter(rate=1.0, burst=10.0)
        for i in range(500):
            limiter.allow(f"ip:{i}", 0.0)
        assert len(limiter) == 500
        limiter.allow(IP, 10.0)
        assert len(limiter) == 1
        assert limiter.evictions_total == 0

    @pytest.mark.parametrize("kwargs", [{"rate": 0.0, "burst": 1.0}, {"rate": 1.0, "burst": 0.0}])
    def test_bad_configuration(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError):
            RateLimiter(**kwargs)  # type: ignore[arg-type]

    def test_bad_arguments(self) -> None:
        limiter = RateLimiter(rate=1.0, burst=1.0)
        with pytest.raises(ValueError):
            limiter.allow(IP, 0.0, rate_multiplier=0.0)
        with pytest.raises(ValueError):
            limiter.allow(IP, 0.0, cost=-1.0)
