# -*- test-case-name: tests.test_transaction_client,tests.test_transaction_server -*-
"""Transaction timers T1, T2, T4 and the derived Timers A-M (RFC 3261 §17, Table 4; RFC 6026 §8.4).

Time reaches the transaction layer only through a :class:`Clock` passed in:
the reactor in production, ``twisted.internet.task.Clock`` in tests.  Nothing
here imports Twisted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Clock", "DelayedCall", "TimerSettings"]


class DelayedCall(Protocol):
    """The part of Twisted's ``IDelayedCall`` the transaction layer uses."""

    def cancel(self) -> None: ...

    def active(self) -> bool: ...


class Clock(Protocol):
    """The part of Twisted's ``IReactorTime`` the transaction layer uses (``task.Clock`` in tests)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> DelayedCall: ...


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """T1, T2, T4 and the 100 Trying delay; every other timer is derived from them (RFC 3261 Table 4).

    A timer whose method returns ``None`` is not started at all (the
    retransmission timers A, E and G on a reliable transport); ``0.0`` means
    "fire at once" (D, I, J and K on a reliable transport), which the
    transactions implement by taking the transition immediately.
    """

    t1: float = 0.5
    """RTT estimate (§17.1.1.1)."""
    t2: float = 4.0
    """The maximum retransmit interval for non-INVITE requests and INVITE responses (§17.1.2.2, §17.2.1)."""
    t4: float = 5.0
    """The maximum duration a message remains in the network (§17.1.2.2)."""
    trying_delay: float = 0.2
    """§17.2.1: an INVITE server transaction sends 100 Trying if the TU has not answered within 200 ms."""

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2:
            raise ValueError("TimerSettings needs 0 < T1 <= T2")
        if self.t4 <= 0 or self.trying_delay < 0:
            raise ValueError("TimerSettings needs T4 > 0 and trying_delay >= 0")

    def timeout(self) -> float:
        """64*T1: Timers B, F, H, J (unreliable), L and M."""
        return 64 * self.t1

    def a(self, reliable: bool) -> float | None:
        """Timer A, the first INVITE retransmission interval: T1, doubling (§17.1.1.2); UDP only."""
        return None if reliable else self.t1

    def b(self) -> float:
        """Timer B, INVITE transaction timeout: 64*T1 (§17.1.1.2)."""
        return self.timeout()

    def d(self, reliable: bool) -> float:
        """Timer D, wait time for response retransmits: > 32 s for UDP, 0 for reliable (§17.1.1.2).

        Taken as ``max(32, 64*T1)`` so that it still covers the server's Timer H when T1 is raised.
        """
        return 0.0 if reliable else max(32.0, self.timeout())

    def e(self, reliable: bool) -> float | None:
        """Timer E, the first non-INVITE retransmission interval: T1, doubling up to T2 (§17.1.2.2); UDP only."""
        return None if reliable else self.t1

    def f(self) -> float:
        """Timer F, non-INVITE transaction timeout: 64*T1 (§17.1.2.2)."""
        return self.timeout()

    def g(self, reliable: bool) -> float | None:
        """Timer G, the first INVITE final response retransmission interval: T1, doubling up to T2 (§17.2.1)."""
        return None if reliable else self.t1

    def h(self) -> float:
        """Timer H, wait time for ACK receipt: 64*T1 (§17.2.1)."""
        return self.timeout()

    def i(self, reliable: bool) -> float:
        """Timer I, wait time for ACK retransmits: T4 for UDP, 0 for reliable (§17.2.1)."""
        return 0.0 if reliable else self.t4

    def j(self, reliable: bool) -> float:
        """Timer J, wait time for non-INVITE request retransmits: 64*T1 for UDP, 0 for reliable (§17.2.2)."""
        return 0.0 if reliable else self.timeout()

    def k(self, reliable: bool) -> float:
        """Timer K, wait time for response retransmits: T4 for UDP, 0 for reliable (§17.1.2.2)."""
        return 0.0 if reliable else self.t4

    def l(self) -> float:  # noqa: E743 - the RFC's name
        """Timer L, wait time for INVITE retransmits in Accepted: 64*T1 (RFC 6026 §8.7)."""
        return self.timeout()

    def m(self) -> float:
        """Timer M, wait time for 2xx retransmits in Accepted: 64*T1 (RFC 6026 §8.4)."""
        return self.timeout()

    def next_interval(self, interval: float, *, cap: bool) -> float:
        """Double a retransmit interval; capped at T2 for Timers E and G, uncapped for Timer A."""
        doubled = 2 * interval
        return min(doubled, self.t2) if cap else doubled
