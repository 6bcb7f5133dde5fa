# -*- test-case-name: tests.test_transaction_client,tests.test_transaction_server -*-
"""Transaction timers T1, T2, T4 and the derived Timers A-M (RFC 3261 §17, Table 4; RFC 6026 §8.4).

Time reaches the transaction layer only through a :class:`Clock` passed in:
the reactor in production, ``twisted.internet.task.Clock`` in tests.  Nothing
here imports Twisted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipproxy.net import Clock, DelayedCall

__all__ = ["Clock", "DelayedCall", "LingerQueues", "Lingering", "TimerSettings"]


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """T1, T2, T4 and the 100 Trying delay; every other timer is derived from them (RFC 3261 Table 4).

    The retransmission timers A, E and G start at T1 and double (see
    :meth:`next_interval`); they do not run on a reliable transport.  A value
    of ``0.0`` means "fire at once" (D, I, J and K on a reliable transport),
    which the transactions implement by taking the transition immediately.
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

    def b(self) -> float:
        """Timer B, INVITE transaction timeout: 64*T1 (§17.1.1.2)."""
        return self.timeout()

    def d(self, reliable: bool) -> float:
        """Timer D, wait time for response retransmits: > 32 s for UDP, 0 for reliable (§17.1.1.2).

        Taken as ``max(32, 64*T1)`` so that it still covers the server's Timer H when T1 is raised.
        """
        return 0.0 if reliable else max(32.0, self.timeout())

    def f(self) -> float:
        """Timer F, non-INVITE transaction timeout: 64*T1 (§17.1.2.2)."""
        return self.timeout()

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


class Lingering:
    """One timer in a :class:`LingerQueues` queue: what ``callLater`` would return (``cancel``, ``active``)."""

    __slots__ = ("arg", "at", "callback", "live", "queue")

    def __init__(self, queue: _Queue, at: float, callback: Callable[[Any], object], arg: object) -> None:
        self.queue, self.at, self.callback, self.arg, self.live = queue, at, callback, arg, True

    def cancel(self) -> None:
        if self.live:
            self.live = False
            self.queue.cancelled(self)

    def active(self) -> bool:
        return self.live


class _Queue:
    """The timers of one duration, in deadline order (FIFO), and one clock call for the first live one."""

    __slots__ = ("call", "clock", "entries", "live")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.entries: deque[Lingering] = deque()
        self.live = 0
        self.call: DelayedCall | None = None

    def add(self, delay: float, callback: Callable[[Any], object], arg: object) -> Lingering:
        entry = Lingering(self, self.clock.seconds() + delay, callback, arg)
        self.entries.append(entry)
        self.live += 1
        if self.call is None:
            self.call = self.clock.callLater(delay, self.fire)
        return entry

    def cancelled(self, entry: Lingering) -> None:
        self.live -= 1
        if self.live == 0:
            self._stop()
        elif entry is self.entries[0]:
            self._drop_dead_heads()
            self._rearm()

    def fire(self) -> None:
        """The clock call: the first live entry is due, and every later one whose deadline has passed too."""
        self.call = None
        entries = self.entries
        self._drop_dead_heads()
        failure: Exception | None = None
        first = True
        now = self.clock.seconds()
        while entries and (first or entries[0].at <= now):
            first = False
            entry = entries.popleft()
            if not entry.live:
                continue
            entry.live = False
            self.live -= 1
            try:
                entry.callback(entry.arg)
            except Exception as error:  # the others still fire; the first error is raised at the end
                failure = failure or error
        self._drop_dead_heads()
        self._rearm()  # for the head: a callback that started a timer here armed the call for its own deadline
        if failure is not None:
            raise failure

    def _drop_dead_heads(self) -> None:
        entries = self.entries
        while entries and not entries[0].live:
            entries.popleft()

    def _rearm(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        if self.entries:
            self.call = self.clock.callLater(max(0.0, self.entries[0].at - self.clock.seconds()), self.fire)
        else:
            self.live = 0

    def _stop(self) -> None:
        self.entries.clear()
        self._rearm()


class LingerQueues:
    """Timers that hold finished transactions (D, I, J, K, L, M): one FIFO and one clock call per duration.

    Every UDP non-INVITE server transaction waits Timer J (32 s) after its
    final response: thousands at a time on a busy registrar.  With one
    ``callLater`` each, every start pushes a ``DelayedCall`` (four
    garbage-collected objects) through the reactor's heap; timers of one
    duration end in the order they start, so a queue per duration does the
    same with one reactor call per queue.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._queues: dict[float, _Queue] = {}

    def call_later(self, delay: float, callback: Callable[[Any], object], arg: object) -> Lingering:
        """Call ``callback(arg)`` in ``delay`` seconds; the handle's ``cancel()`` stops it."""
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = _Queue(self.clock)
        return queue.add(delay, callback, arg)
