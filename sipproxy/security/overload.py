# -*- test-case-name: tests.test_security_guard -*-
"""Overload: noticing that the reactor falls behind, so new requests get ``503`` (RFC 3261 §21.5.4).

RFC 3261 §21.5.4 lets a server that is temporarily overloaded answer
``503 Service Unavailable`` with ``Retry-After`` (§20.33).  New work is shed
while requests of dialogs already up (BYE, re-INVITE) still pass, so calls
can end.  :class:`ReactorLag` measures how late a periodic timer runs, for
two users:

- the admission by wait time (:mod:`sipproxy.security.congestion`, on by
  default): each run's lateness is the wait of TCP, TLS and WebSocket work,
  whose queues the kernel does not stamp (``observe``);
- the older rule ``--overload-lag`` (off by default, kept as it was): the
  :class:`~sipproxy.security.guard.Guard` asks it before taking a new
  request, and sheds while it lagged three runs in a row.

:class:`LagWatch` runs it as a service.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from sipproxy.net import Clock, DelayedCall
from sipproxy.security.congestion import STALE, START, TARGET

__all__ = ["LagWatch", "ReactorLag"]

_log = Logger(namespace="sipproxy.security")


class ReactorLag:
    """Overload detection: how late a timer that should run every ``interval`` seconds actually runs.

    When the reactor cannot keep up, every turn reads a long queue of
    datagrams and the timer runs late each time.  ``samples`` late runs in a
    row (more than ``threshold`` seconds each) mean overload, which lasts
    until the timer runs on time again; one long pause (a full garbage
    collection) is not enough.  ``__call__`` is the ``Guard``'s ``lagging``.
    """

    def __init__(
        self,
        clock: Clock,
        threshold: float,
        interval: float = 0.05,
        samples: int = 3,
        *,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        if not threshold > 0 or not interval > 0 or samples < 1:
            raise ValueError("threshold and interval must be positive, samples at least 1")
        self.clock = clock
        self.threshold = threshold
        self.observe = observe
        """Told every run's lateness (``Congestion.reactor_lagged``)."""
        self.interval = interval
        self.samples = samples
        self.lag = 0.0
        self._late = 0
        self._call: DelayedCall | None = None
        self._due = 0.0

    def start(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._call = self.clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._late = 0

    def _tick(self) -> None:
        now = self.clock.seconds()
        self.lag = max(0.0, now - self._due)
        self._late = self._late + 1 if self.lag > self.threshold else 0
        self._due = now + self.interval
        self._call = self.clock.callLater(self.interval, self._tick)
        if self.observe is not None:
            self.observe(self.lag)

    def __call__(self) -> float | None:
        """The lag while overloaded, else ``None``."""
        return self.lag if self._late >= self.samples else None


class LagWatch(Service):
    """Runs a :class:`ReactorLag` while the server runs, and says at start-up what overload control does."""

    def __init__(
        self,
        lag: ReactorLag,
        *,
        lag_rule: bool = True,
        wait: float | None = None,
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.lag = lag
        self.lag_rule = lag_rule
        self.wait = wait
        self.on_stop = on_stop

    def startService(self) -> None:
        super().startService()
        self.lag.start()
        if self.wait is not None:
            _log.info(
                "Overload control: once messages wait over {start_ms:.0f} ms before they are read, new requests "
                "get 503 + Retry-After, as many as keeps the wait near {target_ms:.0f} ms; UDP datagrams older "
                "than {stale_ms:.0f} ms are dropped (--overload-wait {wait:g})",
                start_ms=self.wait * START * 1000,
                target_ms=self.wait * TARGET * 1000,
                stale_ms=self.wait * STALE * 1000,
                wait=self.wait,
            )
        if self.lag_rule:
            _log.info(
                "Overload protection: new requests get 503 while the reactor runs over {ms:.0f} ms behind",
                ms=self.lag.threshold * 1000,
            )

    def stopService(self) -> Any:
        super().stopService()
        self.lag.stop()
        self.on_stop()
