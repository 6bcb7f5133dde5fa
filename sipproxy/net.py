# -*- test-case-name: tests.test_net -*-
"""Where messages come from and go to, and the clock: the vocabulary every layer shares.

Pure values and protocols, no Twisted and no I/O, so that ``transaction/``
and ``transport/`` can both depend on it without depending on each other
(``docs/architecture.md``).

- :class:`Source`: where a message came from (transport, address, and the
  connection it arrived on, for the reliable transports);
- :class:`Target`: where a request is sent, already resolved (:class:`NamedTarget`
  keeps the name for TLS's certificate check; RFC 3263 is
  the transport's business: it resolves a next hop into an ordered list of
  targets, and a proxy branch tries them in order);
- :class:`Connection`: what a stream connection offers the layers above it;
- :class:`Clock` and :class:`DelayedCall`: the part of Twisted's
  ``IReactorTime`` and ``IDelayedCall`` the server uses.  The reactor
  satisfies them in production, ``twisted.internet.task.Clock`` in tests;
  the method names and parameters mirror Twisted's exactly so that both
  match under mypy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

__all__ = [
    "RELIABLE_TRANSPORTS",
    "Clock",
    "Connection",
    "DelayedCall",
    "NamedTarget",
    "NextHop",
    "Resolved",
    "Source",
    "Target",
    "is_reliable",
]

#: Transports that deliver or fail loudly: no retransmissions, Timers D, I, J, K are zero (§17.1.1.2, §18).
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "WS", "WSS", "SCTP", "TLS-SCTP"})


def is_reliable(transport: str) -> bool:
    """True for TCP, TLS, WS(S) and SCTP; False for UDP (and anything unknown)."""
    return transport.upper() in RELIABLE_TRANSPORTS


class Connection(Protocol):
    """A stream connection (TCP now; TLS and WebSocket next) as the layers above the transport see it."""

    @property
    def alive(self) -> bool:
        """False once the connection is closing or closed: nothing sent on it arrives."""

    def send(self, data: bytes) -> None:
        """Write one whole message (or a keep-alive answer) on this connection."""


class Source(NamedTuple):
    """Where a message came from."""

    transport: str
    """``"UDP"``, ``"TCP"``, ``"TLS"``, ``"WS"`` or ``"WSS"``."""
    host: str
    """A bare IP address (no brackets)."""
    port: int
    connection: Connection | None = None
    """The stream connection it arrived on (``None`` for UDP)."""


class Target(NamedTuple):
    """Where a request is sent, already resolved to an address."""

    transport: str
    host: str
    port: int

    @property
    def name(self) -> str:
        """The host name ``host`` was resolved from, for a transport that checks a certificate against it.

        Empty here; a :class:`NamedTarget` (what the resolver makes for TLS
        hops, RFC 5922 §7.2) carries it.
        """
        return ""


class NamedTarget(Target):
    """A :class:`Target` that remembers the host name its address was resolved from (TLS checks the certificate).

    Equal to (and hashed as) the plain target: the name says how the
    address was found, not where the request goes.  ``_replace`` keeps the
    name; ``_make`` gives a plain target.
    """

    def __new__(cls, transport: str, host: str, port: int, name: str = "") -> NamedTarget:
        self = super().__new__(cls, transport, host, port)
        self._name = name  # type: ignore[attr-defined]
        return self

    @property
    def name(self) -> str:
        return getattr(self, "_name", "")

    def _replace(self, **changes: object) -> NamedTarget:  # type: ignore[override]
        plain = Target(*self)._replace(**changes)  # type: ignore[arg-type]
        return NamedTarget(*plain, name=self.name)


class NextHop(NamedTuple):
    """Where a request goes as its URI names it, before RFC 3263 §4 resolves it into targets.

    ``transport`` and ``port`` are filled in (``transport=``, else TLS for
    ``sips:``, else UDP; 5061 for TLS, else 5060); the flags say what the
    URI gave, which decides what the resolver asks: a numeric host or an
    explicit port -> A/AAAA only (§4.2), an explicit transport -> SRV for it
    (§4.1), neither -> NAPTR first.  The defaults make it behave like a
    :class:`Target` with a host name still to resolve.
    """

    transport: str
    host: str
    port: int
    explicit_transport: bool = True
    explicit_port: bool = True
    secure: bool = False
    """A ``sips:`` URI: only TLS-based transports (RFC 3263 §4.1, SIPS+D2T/D2W)."""


class Resolved(list[Target]):
    """A next hop's targets, best first, and how they were found, for the log line of a request that failed over.

    ``how`` is the lookup that gave them ("SRV _sip._udp.example.com", "A/AAAA
    sip.example.com"), ``names`` a target's name as DNS gave it
    ("sip1.example.com:5060").
    """

    def __init__(self, targets: Iterable[Target] = (), how: str = "", names: dict[Target, str] | None = None) -> None:
        super().__init__(targets)
        self.how = how
        self.names: dict[Target, str] = names if names is not None else {}


class DelayedCall(Protocol):
    """The part of Twisted's ``IDelayedCall`` the server uses."""

    def cancel(self) -> None: ...

    def active(self) -> bool: ...


class Clock(Protocol):
    """The part of Twisted's ``IReactorTime`` the server uses (``task.Clock`` in tests)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> DelayedCall: ...
