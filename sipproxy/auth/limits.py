"""Abuse limits: failed-authentication blocking and per-source rate limits.

Pure and clock-free: every call takes ``now`` (seconds, non-decreasing in
normal use; a step backwards is tolerated, never trusted to refill). Memory is
bounded: idle state is pruned from the oldest end on every call, and past
``max_keys`` the least recently used key is evicted (counted in
``evictions_total``). RFC 3261 §26.1.5 and §26.4.4 leave denial-of-service
defence to the implementation; keys are the caller's choice, such as
``"ip:192.0.2.1"`` or ``"user:bob"``.
"""

from __future__ import annotations

from collections import OrderedDict, deque

__all__ = ["FailureTracker", "RateLimiter"]


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


class FailureTracker:
    """Block a key after ``max_failures`` failures within ``window`` seconds.

    A block lasts ``block_for`` seconds. A success forgets nothing: failures
    age out after ``window`` (else a guesser holding one account could
    interleave logins), and callers reject blocked keys before verifying.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        block_for: float = 300.0,
        max_keys: int = 100_000,
    ) -> None:
        _check_positive("max_failures", max_failures)
        _check_positive("window", window)
        _check_positive("block_for", block_for)
        _check_positive("max_keys", max_keys)
        self.max_failures = max_failures
        self.window = float(window)
        self.block_for = float(block_for)
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked: OrderedDict[str, float] = OrderedDict()
        self.failures_total = 0
        self.blocks_total = 0
        self.evictions_total = 0

    def __len__(self) -> int:
        """Keys held in memory, failing or blocked."""
        return len(self._failures) + len(self._blocked)

    def record_failure(self, key: str, now: float) -> bool:
        """Count a failure; True when it is the one that starts a block."""
        self._prune(now)
        self.failures_total += 1
        if self._blocked_until(key, now) is not None:
            return False
        times = self._failures.pop(key, None)
        if times is None:
            times = deque(maxlen=self.max_failures)
        times.append(now)
        while now - times[0] >= self.window:
            times.popleft()
        if len(times) >= self.max_failures:
            self._block(key, now)
            return True
        self._failures[key] = times
        self._evict_excess(self._failures)
        return False

    def failures(self, key: str, now: float) -> int:
        """Failures of ``key`` within the window at ``now`` (0 while it is blocked)."""
        self._prune(now)
        times = self._failures.get(key)
        return sum(1 for t in times if now - t < self.window) if times is not None else 0

    def is_blocked(self, key: str, now: float) -> bool:
        """Whether ``key`` is blocked at ``now``."""
        self._prune(now)
        return self._blocked_until(key, now) is not None

    def blocked_until(self, key: str, now: float) -> float | None:
        """When the block on ``key`` ends (for Retry-After), or None."""
        self._prune(now)
        return self._blocked_until(key, now)

    def blocked_keys(self, now: float) -> list[str]:
        """Keys blocked at ``now``, oldest block first."""
        self._prune(now)
        return [key for key, until in self._blocked.items() if now < until]

    def _blocked_until(self, key: str, now: float) -> float | None:
        until = self._blocked.get(key)
        return until if until is not None and now < until else None

    def _block(self, key: str, now: float) -> None:
        self._blocked.pop(key, None)
        self._blocked[key] = now + self.block_for
        self.blocks_total += 1
        self._evict_excess(self._blocked)

    def _prune(self, now: float) -> None:
        while self._failures:
            key, times = next(iter(self._failures.items()))
            if now - times[-1] < self.window:
                break
            del self._failures[key]
        while self._blocked:
            key, until = next(iter(self._blocked.items()))
            if now < until:
                break
            del self._blocked[key]

    def _evict_excess(self, table: OrderedDict[str, deque[float]] | OrderedDict[str, float]) -> None:
        while len(table) > self.max_keys:
            table.popitem(last=False)
            self.evictions_total += 1


class RateLimiter:
    """Token bucket per key: ``burst`` tokens, refilled at ``rate`` per second.

    ``rate_multiplier`` scales both rate and burst for one call, so a source
    that holds an authenticated binding can be allowed more. A bucket idle for
    ``burst / rate`` seconds is full again, so it is dropped: a new bucket
    starts full, which makes dropping it invisible.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        _check_positive("rate", rate)
        _check_positive("burst", burst)
        _check_positive("max_keys", max_keys)
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._idle_after = self.burst / self.rate
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.allowed_total = 0
        self.rejections_total = 0
        self.evictions_total = 0

    def __len__(self) -> int:
        """Buckets held in memory."""
        return len(self._buckets)

    def allow(self, key: str, now: float, cost: float = 1.0, rate_multiplier: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if it holds that many."""
        _check_positive("rate_multiplier", rate_multiplier)
        if cost < 0:
            raise ValueError(f"cost must not be negative, got {cost!r}")
        self._prune(now)
        tokens, updated = self._refill(key, now, rate_multiplier)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
            self.allowed_total += 1
        else:
            self.rejections_total += 1
        self._buckets[key] = (tokens, updated)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
            self.evictions_total += 1
        return allowed

    def _refill(self, key: str, now: float, multiplier: float) -> tuple[float, float]:
        capacity = self.burst * multiplier
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            return capacity, now
        tokens, updated = bucket
        elapsed = max(0.0, now - updated)
        return min(capacity, tokens + elapsed * self.rate * multiplier), max(updated, now)

    def _prune(self, now: float) -> None:
        while self._buckets:
            key, (_, updated) = next(iter(self._buckets.items()))
            if now - updated < self._idle_after:
                break
            del self._buckets[key]
