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
- **overload begins** when the wait has stayed at **0.4 T** (200 ms) or
  more for ``dwell`` (0.1 s) without falling.  A pause of the process (a
  full garbage collection, a slow disk, another process on the core)
  leaves a queue that drains by itself, the waits falling from the first
  datagram read after it; under overload they keep rising.  Not later
  (reSIProcate refuses new work from 0.8 T): every call crosses the queue
  several times (INVITE, 100, 180, 200, ACK, BYE, 200), and the calls
  admitted while the queue grew towards 400 ms had their 200s
  retransmitted before their ACKs were read; at 4x the capacity the
  400 ms mark completed 60-78 % of it, 200 ms 79-86 %, in interleaved
  rounds of one sitting (``bench/README.md``);
- **while it lasts**, a share of the new out-of-dialog requests gets
  ``503`` with a ``Retry-After`` spread over [R, 2R] seconds (R =
  ``retry_after``, see :meth:`Congestion.retry_after`), so that what was
  refused together does not come back together.  ACK, CANCEL, BYE,
  requests with a To tag (in a dialog, §12.2), retransmissions of requests
  already taken and every response pass: they finish work already done;
- **the share** is set every ``interval`` (0.1 s) to refuse the excess
  and no more.  Every datagram's wait *w* is exact, so its slope says by
  how much the load exceeds what the server gets through: if *μ* messages
  are read per second out of a queue fed with *λ*, the waits of successive
  datagrams grow by ``dw/dt = 1 - μ/λ``.  The admitted share is multiplied
  by ``μ/λ = 1 - dw/dt``, less ``(w - target) / drain`` to bring the queue
  back to the **target of 0.2 T** (100 ms) within ``drain`` (1 s): a step
  divides the share by at most 4 and multiplies it by at most 2 -- by 2
  whenever the wait is under half the target (the queue is all but empty:
  there is room) -- and the share is never under ``FLOOR`` (1 in 50).
  The target is low because every call crosses the queue many times
  (INVITE, 100, 180, 200, ACK, BYE, 200): at 250 ms the 200 and its ACK
  alone took T1, and the callee retransmitted the 200 (§13.3.1.4).  This
  is the loss-based control of RFC 7339 §6 (its "oc" value is the
  refused share) with the server's own measurement as the feedback;
  a fixed "refuse all new work from 80 %" (reSIProcate's
  ``REJECTING_NEW_WORK``) alternates between refusing everything while the
  queue drains and admitting everything while it refills, and gets through
  less work than the server could: goodput at 4x capacity swung from half
  of capacity to all of it between runs (``bench/README.md``);
- **overload ends** once every new request has been admitted again, the
  wait under the 0.4 T it began at, for ``SETTLE`` (2 s).  Until then the
  control keeps stepping with all admitted, so a load still over capacity
  is met at the next step, when the wait has grown to about the target,
  instead of after it grew back to the start mark with everything taken
  meanwhile (the calls admitted in that burst had their 200s retransmitted
  before their ACKs were read);
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

Which of the candidates is refused is counted, not drawn: each adds the
admitted share to a credit and is admitted when the credit reaches one,
so a share of 0.3 admits three in every ten, evenly spread.

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

__all__ = ["Congestion", "SETTLE", "START", "STALE", "TARGET"]

START = 0.4
"""Overload begins at this share of the tolerance (held ``dwell``, not falling), and ends under it once every new
request is admitted again (reSIProcate's REJECTING_NEW_WORK mark is 0.8)."""
TARGET = 0.2
"""While overloaded, the control keeps the wait near this share of the tolerance."""
STALE = 4.0
"""Drop UDP datagrams that waited this many tolerances (2 s by default: two retransmissions queued behind)."""
UDP_FRESH = 1.0
"""Seconds a UDP datagram's wait stands for the server's, when no newer datagram came."""
FLOOR = 0.02
"""The least share of new requests admitted while overloaded: the control always sees some work to measure."""
STEP = (0.25, 2.0)
"""The least and the most one control step multiplies the admitted share by."""
SETTLE = 2.0
"""Seconds every new request must have been admitted, the wait under the start mark, before overload ends: the
control keeps stepping meanwhile, so a load still over capacity is met at the next step, not after the wait has
grown back to the start mark."""


class Congestion:
    """The admission state from the waits observed; pure, the clock injected.

    :meth:`datagram_waited` is called for each UDP datagram before it is
    parsed, :meth:`reactor_lagged` by the lag timer, :meth:`admits` asked
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
        interval: float = 0.1,
        drain: float = 1.0,
        random: Callable[[], float] = random.random,
    ) -> None:
        if not tolerance > 0 or retry_after < 1 or not quiet > 0 or not dwell >= 0:
            raise ValueError("tolerance and quiet must be positive, dwell not negative, retry_after at least 1")
        if not interval > 0 or not drain > 0:
            raise ValueError("interval and drain must be positive")
        self.clock = clock
        self.tolerance = tolerance
        self.start_at = START * tolerance
        self.target = TARGET * tolerance
        self.stale_at = STALE * tolerance
        self.base_retry_after = retry_after
        self.quiet = quiet
        self.dwell = dwell
        self.interval = interval
        self.drain = drain
        self.random = random
        self.shedding = False
        """Is the server overloaded, some new requests getting 503?"""
        self.admitted = 1.0
        """The share of new requests admitted (1 unless shedding)."""
        self.changed_at = clock.seconds()
        """When :attr:`admitted` was last set (RFC 7339's ``oc-seq``)."""
        self.wait = 0.0
        """The wait the last decision used, in seconds (the ``sip_admission_wait_seconds`` gauge)."""
        self._udp_wait = 0.0
        self._udp_at = float("-inf")
        self._lag = 0.0
        self._over_since: float | None = None
        self._over_wait = 0.0
        self._step_at = 0.0
        self._step_wait = 0.0
        self._credit = 0.0
        self._settled_since: float | None = None
        # the episode, for the log: from the first refusal to ``quiet`` seconds without one
        self._episode: DelayedCall | None = None
        self._began = 0.0
        self._last_shed = 0.0
        self._peak = 0.0
        self._least = 1.0
        self._counts: Counter[tuple[str, str]] = Counter()

    @property
    def refusing(self) -> float:
        """The share of new requests refused, 0 to 1 (RFC 7339's loss; the ``sip_overload_refused_share`` gauge)."""
        return 1.0 - self.admitted

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
            if now - self._step_at >= self.interval:
                self._step(now, wait)
        elif wait < self.start_at:
            self._over_since = None
        else:
            if self._over_since is None:
                self._over_since, self._over_wait = now, wait
            if now - self._over_since >= self.dwell:
                if wait >= self._over_wait:  # not falling: overload, the first step from the slope so far
                    self.shedding, self._credit = True, 0.0
                    self._step_at, self._step_wait = self._over_since, self._over_wait
                    self._step(now, wait)
                    self._over_since = None
                else:
                    self._over_since, self._over_wait = now, wait
        if self._episode is not None and wait > self._peak:
            self._peak = wait

    def _step(self, now: float, wait: float) -> None:
        """One control step: admit the share the server gets through, less what brings the wait to the target."""
        slope = (wait - self._step_wait) / (now - self._step_at) if now > self._step_at else 0.0
        least, most = STEP
        factor = 1.0 - slope - (wait - self.target) / self.drain
        if wait < self.target / 2:
            factor = most  # the queue is all but empty: there is room
        admitted = min(1.0, max(FLOOR, self.admitted * min(most, max(least, factor))))
        self._step_at, self._step_wait, self.changed_at = now, wait, now
        if admitted >= 1.0 and wait < self.start_at:
            if self._settled_since is None:
                self._settled_since = now
            if now - self._settled_since >= SETTLE:
                self.shedding, self.admitted, self._settled_since = False, 1.0, None
                return
        else:
            self._settled_since = None
        self.admitted = admitted
        self.log.debug(
            "Overload control: wait {wait_ms:.0f} ms, rising {slope:+.2f} s/s: {admitted_pct:.1f} % of new requests in",
            wait_ms=wait * 1000,
            slope=slope,
            admitted_pct=admitted * 100,
        )
        if self._episode is not None and admitted < self._least:
            self._least = admitted

    def admits(self) -> bool:
        """May this new request in?  While shedding, the admitted share of them, evenly spread."""
        if not self.shedding:
            return True
        self._credit += self.admitted
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False

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
            self._began, self._peak, self._least = now, self.wait, self.admitted
            self._episode = self.clock.callLater(self.quiet, self._maybe_over)
            self.log.warn(
                "Overload: messages wait {wait_ms:.0f} ms before they are read (tolerance {tolerance_ms:.0f} ms): "
                "{refused_pct:.0f} % of new requests get 503 + Retry-After, the share adjusted every "
                "{interval_ms:.0f} ms to keep the wait near {target_ms:.0f} ms; "
                "datagrams older than {stale_ms:.0f} ms are dropped",
                wait_ms=self.wait * 1000,
                tolerance_ms=self.tolerance * 1000,
                refused_pct=self.refusing * 100,
                interval_ms=self.interval * 1000,
                target_ms=self.target * 1000,
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
            "the wait peaked at {peak_ms:.0f} ms, the share refused at {most_refused_pct:.0f} %",
            seconds=self._last_shed - self._began,
            refused=by_reason["wait"],
            by_method=by_method or "none",
            again=by_reason["retransmission"],
            stale=by_reason["stale"],
            peak_ms=self._peak * 1000,
            most_refused_pct=(1.0 - self._least) * 100,
            counts={f"{reason}:{method}": n for (reason, method), n in counts.items()},
        )

    def stop(self) -> None:
        """Cancel the episode's timer (the server stops)."""
        if self._episode is not None and self._episode.active():
            self._episode.cancel()
        self._episode = None
