# -*- test-case-name: tests.test_security_congestion -*-
"""Admission by how long work waits: shed new requests before the queue outlives the phones' timers.

RFC 3261 §21.5.4 lets an overloaded server answer ``503 Service
Unavailable`` with ``Retry-After`` (§20.33); §26.1.5 leaves the when to the
implementation.  This module decides when, from one signal: **how long a
message waited before the server got to it**.

Why the wait, and how it is measured
------------------------------------
A UDP server collapses when its queue outlives the clients' retransmission
timer: a request still queued at Timer A/E (T1 = 500 ms, §17.1.1.2,
§17.1.2.2) has a copy queued behind it, every copy is work, and the queue
grows faster still (the issue's 2,030 of 10,000 calls, and a next step that
failed on the seconds of stale requests the socket buffer still held).  The
quantity to control is therefore the queue's wait, in seconds, not the CPU
or the message rate (which is what the REGISTER and call ramps push to the
limit without harm: a short queue is the price of a full core).

- **UDP**: the kernel stamps every datagram as it arrives
  (``SO_TIMESTAMPNS``); :mod:`sipproxy.transport.udp` reads the stamp with
  ``recvmsg`` and the wait is *now - stamp*, measured exactly, for the
  datagram at hand, at no cost worth measuring (one ``struct.unpack``).
  This is reSIProcate's expected wait (``GeneralCongestionManager``:
  queue size x the measured service time, new work refused from 80 % of the
  tolerance) without the estimate: the stamp *is* the wait.  Queue depth
  (``SIOCINQ``/``FIONREAD``) is no substitute on Linux UDP: it gives the
  size of the next datagram only, and bytes x service time would need the
  service time per message kind, which a REGISTER and a proxied INVITE do
  not share.
- **TCP, TLS, WebSocket**: their queue is per connection, in the kernel,
  unstamped.  What every message there waits for is the reactor's turn, so
  the lateness of a timer that should run every 50 ms
  (:class:`~sipproxy.security.overload.ReactorLag`) is their wait.  The
  server's wait is the larger of the two (a UDP stamp counts for a second).
  Kamailio's ``ratelimit``/``pike`` count messages per interval against a
  configured rate (or the CPU load), which needs a capacity figure from
  the operator; OpenSIPS's ``load_balancer``/``ratelimit`` alike.  The
  wait needs none: it is small until the server is full, then grows.

The decisions, for a tolerance *T* (``--overload-wait``, 0.5 s = T1 by
default: past it the first retransmission is already queued)
------------------------------------------------------------------------
- from a wait of **0.8 T** (400 ms): new out-of-dialog requests get ``503``
  with a ``Retry-After`` spread over [R, 2R] seconds (R =
  ``retry_after``), so that what was refused together does not come back
  together (see :meth:`Congestion.retry_after`).  ACK, CANCEL, BYE,
  requests with a To tag (in a dialog, §12.2), retransmissions of requests
  already taken and every response pass: they finish work already done;
  It starts once the wait has stayed there for ``dwell`` (0.1 s) without
  falling: a pause of the process (a full garbage collection, a slow disk,
  another process on the core) leaves a queue that drains by itself, the
  waits falling from the first datagram read after it, while under
  overload they keep rising;
- shedding stops when the wait falls under **0.5 T** (250 ms): the gap
  keeps the decision from flapping on every datagram;
- a datagram that waited **4 T** (2 s) is dropped unread: a UDP sender has
  retransmitted it twice by then (0.5 s and 1.5 s), so newer copies are
  queued behind it, and answering the old copy first would keep everything
  behind it just as late.  Responses and ACKs recover as well (the 2xx is
  retransmitted until ACKed, §13.3.1.4; a final response to a non-INVITE
  when the request comes again).  Dropping costs no parse, so a backlog
  after a pause or a storm drains in milliseconds and the next, lighter
  load finds an empty queue.  Nothing is dropped on TCP (not retransmitted,
  §17.1.1.2), and a whole transaction of ours is at most 32 s (Timer B/F)
  anyway, far beyond.

One log line when shedding starts and one when it has ended (no shedding
for ``quiet`` seconds), with the counts by method and reason, never one per
request.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from twisted.logger import Logger

from sipproxy.net import Clock, DelayedCall

__all__ = ["Congestion", "START", "STOP", "STALE"]

START = 0.8
"""Shed new requests from this share of the tolerance (reSIProcate's REJECTING_NEW_WORK)."""
STOP = 0.5
"""Stop shedding under this share of the tolerance."""
STALE = 4.0
"""Drop UDP datagrams that waited this many tolerances (2 s by default: two retransmissions queued behind)."""
UDP_FRESH = 1.0
"""Seconds a UDP datagram's wait stands for the server's, when no newer datagram came."""


class Congestion:
    """The admission state from the waits observed; pure, the clock injected.

    :meth:`datagram_waited` is called for each UDP datagram before it is
    parsed, :meth:`reactor_lagged` by the lag timer, :attr:`shedding` asked
    by the guard for each new request, :meth:`shed` told of each refusal.
    """

    log = Logger(namespace="sipproxy.security")

    def __init__(
        self,
        clock: Clock,
        tolerance: float = 0.5,
        *,
        retry_after: int = 5,
        quiet: float = 5.0,
        dwell: float = 0.1,
        random: Callable[[], float] = random.random,
    ) -> None:
        if not tolerance > 0 or retry_after < 1 or not quiet > 0 or not dwell >= 0:
            raise ValueError("tolerance and quiet must be positive, dwell not negative, retry_after at least 1")
        self.clock = clock
        self.tolerance = tolerance
        self.start_at = START * tolerance
        self.stop_at = STOP * tolerance
        self.stale_at = STALE * tolerance
        self.base_retry_after = retry_after
        self.quiet = quiet
        self.dwell = dwell
        self.random = random
        self.shedding = False
        """Do new requests get 503 now?"""
        self.wait = 0.0
        """The wait the last decision used, in seconds (the ``sip_admission_wait_seconds`` gauge)."""
        self._udp_wait = 0.0
        self._udp_at = float("-inf")
        self._lag = 0.0
        self._over_since: float | None = None
        self._over_wait = 0.0
        # the episode, for the log: from the first refusal to ``quiet`` seconds without one
        self._episode: DelayedCall | None = None
        self._began = 0.0
        self._last_shed = 0.0
        self._peak = 0.0
        self._counts: Counter[tuple[str, str]] = Counter()

    # -- the signals ----------------------------------------------------------------

    def datagram_waited(self, wait: float) -> bool:
        """A UDP datagram waited ``wait`` seconds in the socket buffer; ``False``: drop it unread (stale)."""
        self._udp_wait, self._udp_at = wait, self.clock.seconds()
        self._decide()
        return wait < self.stale_at

    def reactor_lagged(self, lag: float) -> None:
        """The lag timer ran ``lag`` seconds late (the wait of TCP, TLS and WebSocket work)."""
        self._lag = lag
        self._decide()

    def _decide(self) -> None:
        now = self.clock.seconds()
        fresh = now - self._udp_at <= UDP_FRESH
        wait = self.wait = max(self._udp_wait if fresh else 0.0, self._lag)
        if self.shedding:
            if wait < self.stop_at:
                self.shedding = False
        elif wait < self.start_at:
            self._over_since = None
        else:
            if self._over_since is None:
                self._over_since, self._over_wait = now, wait
            if now - self._over_since >= self.dwell:
                if wait >= self._over_wait:
                    self.shedding = True  # not falling: overload
                self._over_since, self._over_wait = (None, 0.0) if self.shedding else (now, wait)
        if self._episode is not None and wait > self._peak:
            self._peak = wait

    # -- the refusals ------------------------------------------------------------------

    def retry_after(self) -> int:
        """Seconds for ``Retry-After``: uniform over [R, 2R], so refused phones come back spread out."""
        base = self.base_retry_after
        return base + min(base, int(self.random() * (base + 1)))

    def shed(self, method: str, reason: str) -> None:
        """A request refused (``wait``), a datagram dropped (``stale``) or answered again (``retransmission``)."""
        now = self.clock.seconds()
        self._last_shed = now
        self._counts[(reason, method)] += 1
        if self._episode is None:
            self._began, self._peak = now, self.wait
            self._episode = self.clock.callLater(self.quiet, self._maybe_over)
            self.log.warn(
                "Overload: messages wait {wait_ms:.0f} ms before they are read (tolerance {tolerance_ms:.0f} ms): "
                "new requests get 503 + Retry-After until the wait is under {stop_ms:.0f} ms; "
                "datagrams older than {stale_ms:.0f} ms are dropped",
                wait_ms=self.wait * 1000,
                tolerance_ms=self.tolerance * 1000,
                stop_ms=self.stop_at * 1000,
                stale_ms=self.stale_at * 1000,
            )

    def _maybe_over(self) -> None:
        now = self.clock.seconds()
        if now - self._last_shed < self.quiet:
            self._episode = self.clock.callLater(self._last_shed + self.quiet - now, self._maybe_over)
            return
        self._episode = None
        counts, self._counts = self._counts, Counter()
        by_reason: Counter[str] = Counter()
        for (reason, _), n in counts.items():
            by_reason[reason] += n
        by_method = ", ".join(f"{method} {n}" for (reason, method), n in sorted(counts.items()) if reason == "wait")
        self.log.warn(
            "Overload over after {seconds:.1f} s: {refused} new requests got 503 ({by_method}), "
            "{again} retransmissions of them the same 503 again, {stale} stale datagrams dropped; "
            "the wait peaked at {peak_ms:.0f} ms",
            seconds=self._last_shed - self._began,
            refused=by_reason["wait"],
            by_method=by_method or "none",
            again=by_reason["retransmission"],
            stale=by_reason["stale"],
            peak_ms=self._peak * 1000,
            counts={f"{reason}:{method}": n for (reason, method), n in counts.items()},
        )

    def stop(self) -> None:
        """Cancel the episode's timer (the server stops)."""
        if self._episode is not None and self._episode.active():
            self._episode.cancel()
        self._episode = None
