# -*- test-case-name: tests.test_transport_droplog -*-
"""Warnings about what the network sent and we dropped, bounded: a flood writes a summary, not a line per packet.

Every unparseable datagram used to write its warning: 5,000 junk datagrams
a second wrote 49,819 lines (8 MB) in 10 s.  :class:`DropLog` writes, for
each kind of drop, the first warning per source (IPv4 address or IPv6 /64)
and at most ``lines`` warnings in each ``interval``; at the end of an
interval in which it kept any back it writes one summary line per kind,
"Dropped 48000 unparseable messages from 1000 sources in the last 10 s (47990
not logged one by one)", with ``drop`` (the kind), ``count``, ``sources`` and
``suppressed`` as fields for a JSON observer.  What a flood costs is also on ``/metrics``
(``sip_parse_errors``, ``sip_blocked_requests``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.logger import Logger

from sipproxy.net import Clock
from sipproxy.transport.address import address_key

__all__ = ["KINDS", "DropLog"]

KINDS = {
    "unparseable": "Dropped {count} unparseable messages",
    "rejected": "Answered {count} malformed requests with 400",
    "oversized": "Dropped {count} oversized datagrams",
    "framing": "Closed {count} TCP connections for broken framing",
    "refused": "Refused {count} TCP connections (connection limit)",
    "evicted": "Closed {count} idle TCP connections to make room",
    "timeout": "Closed {count} TCP connections whose message was not whole in time",
}
"""Each kind of drop and how its summary line begins (a format string: ``count`` is a field)."""


@dataclass
class _Window:
    count: int = 0
    logged: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    more_sources: bool = False


class DropLog:
    """One warning per source and kind per ``interval``, at most ``lines`` per kind; then a summary line.

    ``max_sources`` bounds what a window remembers (a spoofed flood has as
    many sources as it likes); past it the summary says "at least".  Without
    a clock (a bare transport layer in a test) every warning is written.
    """

    log = Logger()

    def __init__(
        self, clock: Clock | None, interval: float = 10.0, lines: int = 10, max_sources: int = 100_000
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.lines = lines
        self.max_sources = max_sources
        self._windows: dict[str, _Window] = {}

    def warn(self, kind: str, host: str, fmt: str, **fields: object) -> None:
        """Warn ``fmt`` (a format string with ``fields``) about a drop of ``kind`` from ``host``, unless flooded."""
        if self.clock is None:
            self.log.warn(fmt, drop=kind, host=host, **fields)
            return
        window = self._windows.get(kind)
        if window is None:
            window = self._windows[kind] = _Window()
            self.clock.callLater(self.interval, self._summarize, kind)
        window.count += 1
        key = address_key(host)
        seen = window.sources.get(key)
        new = seen is None and len(window.sources) < self.max_sources
        if seen is not None:
            window.sources[key] = seen + 1
        elif new:
            window.sources[key] = 1
        else:
            window.more_sources = True  # not remembered: not logged either, counted in the summary
        if new and window.logged < self.lines:
            window.logged += 1
            self.log.warn(fmt, drop=kind, host=host, **fields)

    def _summarize(self, kind: str) -> None:
        window = self._windows.pop(kind)
        suppressed = window.count - window.logged
        if not suppressed:
            return
        self.log.warn(
            KINDS.get(kind, "Dropped {count} messages")
            + " from {at_least}{sources} sources in the last {interval:g} s ({suppressed} not logged one by one)",
            drop=kind,
            count=window.count,
            sources=len(window.sources),
            at_least="at least " if window.more_sources else "",
            suppressed=suppressed,
            interval=self.interval,
        )
