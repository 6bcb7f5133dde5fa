# -*- test-case-name: tests.test_transport_resolve -*-
"""A next hop to an ordered list of targets (RFC 3263 §4), through twisted.names.

RFC 3263 §4 turns a next hop into an ordered list of (transport, address,
port), which a client tries one after the other (§4.3, done by the proxy's
branch):

- a numeric host is its own answer, without a lookup (§4.1, §4.2); a name
  under ``.invalid`` has none, without a lookup either (RFC 6761 §6.4);
- a host name with an explicit port: its A, then its AAAA addresses, at
  that port (§4.2);
- an explicit transport (``transport=``) and no port: the SRV records of
  that transport (§4.1);
- neither: the NAPTR records pick the transport among those we have
  (``transports``; for ``sips:`` only TLS-based ones), their replacement
  the SRV name; without a usable NAPTR record, the SRV names of our
  transports are asked in turn (§4.1);
- SRV records in priority order, RFC 2782 weighted random within one
  priority (``srv_order``), each target's A then AAAA addresses at the SRV
  port (§4.2);
- no SRV record: the host's A/AAAA addresses at the default port (§4.2).

Answers come from a :class:`~sipproxy.transport.dnscache.DNSCache` (TTLs
and negative answers honoured).  It never blocks the reactor (twisted.names
is asynchronous, and every query has its timeout), never raises into its
caller (the callback always runs, exactly once, with an empty list when
nothing resolves), and a failed lookup is one readable warning.
twisted.names itself is made quiet: per query it opened a UDP port, which
logged twice ("... starting on N", "(UDP Port N Closed)"), with a ``noisy``
protocol that logged twice more, and its errors carry a raw DNS ``Message``
as their text.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Collection, Sequence
from random import Random
from typing import Any

from twisted.internet import base, udp
from twisted.internet.defer import TimeoutError, ensureDeferred, gatherResults
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevel
from twisted.names import client, dns, error, hosts, resolve
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from sipproxy.message.uri import is_ip_address
from sipproxy.net import NamedTarget, NextHop, Resolved, Target
from sipproxy.transport.dnscache import DNSCache
from sipproxy.transport.rfc3263 import NaptrRecord, SrvRecord, naptr_choices, srv_name, srv_order

__all__ = ["DEFAULT_TIMEOUT", "Resolver", "describe_failure", "quiet_resolver"]

Found = Callable[[list[Target]], None]

DEFAULT_TIMEOUT = (1, 3)
"""Seconds to wait for each try of one query (twisted.names' schedule): 4 s, then the lookup has failed."""

_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (error.DNSNameError, "no such domain (NXDOMAIN)"),
    (error.DNSServerError, "the DNS server failed (SERVFAIL)"),
    (error.DNSQueryRefusedError, "the DNS server refused the query (REFUSED)"),
    (error.DNSFormatError, "the DNS server could not read the query (FORMERR)"),
    (error.DNSNotImplementedError, "the DNS server does not implement the query (NOTIMP)"),
    (error.DNSUnknownError, "unknown DNS error"),
    (TimeoutError, "no answer from the DNS server (timeout)"),
    (error.DomainError, "no such domain"),
    (error.AuthoritativeDomainError, "no such domain"),
)
_NO_RECORD = "no A or AAAA record"


def describe_failure(failure: Failure) -> str:
    """A lookup's failure in words; never the raw DNS ``Message`` twisted.names puts in its errors."""
    for cls, text in _REASONS:
        if failure.check(cls):
            return text
    return f"{failure.type.__name__} while resolving"


class Resolver:
    """Next hops to targets: ``resolver(hop, found)`` calls ``found`` once with the targets, best first.

    ``names`` is the twisted.names ``IResolver`` asked (tests pass a double);
    by default the hosts file, then the DNS servers ``servers`` (``--dns``)
    or else those of ``/etc/resolv.conf``, made at the first lookup.
    ``timeout`` is twisted.names' retry schedule in seconds.  ``transports``
    are those we can send on (or a function giving them, asked at each
    lookup), in our order of preference when no NAPTR record decides;
    ``rng`` draws the RFC 2782 weighted order.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any = None,
        names: Any = None,
        timeout: Sequence[int] | None = DEFAULT_TIMEOUT,
        *,
        servers: Sequence[tuple[str, int]] | None = None,
        transports: Collection[str] | Callable[[], Collection[str]] = ("UDP", "TCP"),
        rng: Random | None = None,
        clock: Any = None,
    ) -> None:
        self._reactor = reactor
        self._names = names
        self.servers = list(servers) if servers else None
        self.timeout = tuple(timeout) if timeout is not None else None
        self._transports = transports
        self.rng = rng if rng is not None else Random()
        if clock is None:
            from twisted.internet import reactor as default_reactor

            clock = reactor if reactor is not None else default_reactor
        self.cache = DNSCache(lambda: self.names, clock, self.timeout)

    @property
    def transports(self) -> tuple[str, ...]:
        """The transports we can send on (``transports``, or what it returns when it is a function)."""
        names = self._transports() if callable(self._transports) else self._transports
        return tuple(t.upper() for t in names)

    @property
    def names(self) -> Any:
        if self._names is None:
            if self.servers:
                self._names = quiet_resolver(self._reactor, servers=self.servers, resolv_conf=None)
            else:
                self._names = quiet_resolver(self._reactor)
        return self._names

    def __call__(self, hop: Target | NextHop, found: Found) -> None:
        """Call ``found`` once with the targets of ``hop`` (§4), a :class:`Resolved` list."""
        host = hop.host.strip("[]")
        if is_ip_address(host):
            target = Target(hop.transport, host, hop.port)
            _deliver(found, Resolved([target], "", {}), host)
            return
        if host.lower().rstrip(".").rpartition(".")[2] == "invalid":
            # RFC 6761 §6.4: never looked up.  A WebSocket phone's Contact host (RFC 7118 §5.2) is one:
            # it is reached over its own connection (RFC 5626), or not at all.
            self.log.warn(
                "Could not resolve {host}: {reason}", host=host, reason=".invalid is never looked up (RFC 6761 §6.4)"
            )
            _deliver(found, Resolved([], "", {}), host)
            return
        answered = ensureDeferred(self._resolve(hop, host))
        answered.addErrback(self._bug, host)
        answered.addCallback(lambda targets: _deliver(found, _named(targets, host), host))

    async def _resolve(self, hop: Target | NextHop, host: str) -> Resolved:
        steps: list[str] = []
        if isinstance(hop, NextHop) and not hop.explicit_port:
            if hop.explicit_transport:
                choices = [(hop.transport, srv_name(hop.transport, host))]  # §4.1: the transport is given
            else:
                choices = await self._naptr(host, hop.secure, steps)
            for transport, name in choices:
                found = await self._srv(transport, name, steps)
                if found:
                    return found
        targets, reason = await self._addresses(host, hop.transport, hop.port)  # §4.2: A/AAAA
        if not targets:
            self.log.warn(
                "Could not resolve {host}: {reason}",
                host=host,
                reason="; ".join([*steps, reason]) if steps else reason,
            )
        return Resolved(targets, f"A/AAAA {host}", {t: _label(host, t.port) for t in targets})

    async def _naptr(self, host: str, secure: bool, steps: list[str]) -> list[tuple[str, str]]:
        """§4.1: the transports the NAPTR records offer us, or else the SRV names of all of ours."""
        records, reason = await self._records(dns.NAPTR, host)
        naptrs = [_naptr(r.payload) for r in records]
        choices = naptr_choices(naptrs, secure, self.transports)
        if choices:
            return choices
        steps.append(f"NAPTR {host}: {reason or 'no record for our transports'}")
        ours = [t for t in self.transports if not secure or t in ("TLS", "WSS")]
        return [(t, srv_name(t, host)) for t in ours if t in ("UDP", "TCP", "TLS", "SCTP", "WS", "WSS")]

    async def _srv(self, transport: str, name: str, steps: list[str]) -> Resolved | None:
        """§4.2: the SRV records of ``name`` in RFC 2782 order, each target's A then AAAA addresses."""
        records, reason = await self._records(dns.SRV, name)
        srvs = [_srv(r.payload) for r in records]
        ordered = srv_order(srvs, self.rng)
        if not ordered:
            steps.append(f"SRV {name}: {reason or 'no usable record'}")
            return None
        found = await gatherResults(
            [ensureDeferred(self._addresses(r.target.rstrip("."), transport, r.port)) for r in ordered]
        )
        targets: list[Target] = []
        names: dict[Target, str] = {}
        for record, (addresses, _) in zip(ordered, found, strict=True):
            for target in addresses:
                if target not in names:
                    targets.append(target)
                    names[target] = _label(record.target.rstrip("."), record.port)
        if not targets:
            steps.append(f"SRV {name}: its targets have no A or AAAA record")
            return None
        return Resolved(targets, f"SRV {name}", names)

    async def _addresses(self, host: str, transport: str, port: int) -> tuple[list[Target], str]:
        """§4.2: every A address, then every AAAA address, in the order the answers gave them."""
        if is_ip_address(host):
            return [Target(transport, host, port)], ""
        (a, a_why), (aaaa, aaaa_why) = await gatherResults(
            [ensureDeferred(self._records(dns.A, host)), ensureDeferred(self._records(dns.AAAA, host))]
        )
        addresses = _addresses(a, dns.A) + _addresses(aaaa, dns.AAAA)
        targets = [Target(transport, address, port) for address in dict.fromkeys(addresses)]
        return targets, a_why or aaaa_why or _NO_RECORD

    async def _records(self, kind: int, name: str) -> tuple[list[dns.RRHeader], str]:
        """The records of ``kind`` for ``name`` (through the cache), and why there are none."""
        try:
            answers = await self.cache.lookup(kind, name)
        except Exception:
            return [], describe_failure(Failure())
        return [r for r in answers if r.type == kind], ""

    def _bug(self, failure: Failure, host: str) -> list[Target]:
        self.log.failure("Bug reading the DNS answer for {host}", failure, host=host)
        return []


def _naptr(payload: Any) -> NaptrRecord:
    return NaptrRecord(
        payload.order,
        payload.preference,
        payload.flags.string.decode("ascii", "replace"),
        payload.service.string.decode("ascii", "replace"),
        payload.replacement.name.decode("ascii", "replace"),
    )


def _srv(payload: Any) -> SrvRecord:
    return SrvRecord(payload.priority, payload.weight, payload.port, payload.target.name.decode("ascii", "replace"))


CERTIFIED_TRANSPORTS = frozenset({"TLS", "WSS"})
"""Transports whose peer proves a host name with its certificate: their targets keep the name (``Target.name``)."""


def _named(targets: list[Target], host: str) -> list[Target]:
    """The TLS targets as :class:`NamedTarget` targets of ``host``, the name in the URI (RFC 5922 §4.1, §7.2).

    Not the SRV target's name: DNS is not trusted to say whom a domain's
    certificate belongs to.  A NamedTarget equals its plain target, so
    ``Resolved.names`` still finds it.
    """
    if not any(t.transport.upper() in CERTIFIED_TRANSPORTS for t in targets):
        return targets
    named = [NamedTarget(*t, name=host) if t.transport.upper() in CERTIFIED_TRANSPORTS else t for t in targets]
    if isinstance(targets, Resolved):
        return Resolved(named, targets.how, targets.names)
    return named


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _addresses(records: Sequence[dns.RRHeader], kind: int) -> list[str]:
    out = []
    for record in records:
        if record.type != kind:
            continue  # the CNAMEs that led to them
        if kind == dns.A:
            out.append(record.payload.dottedQuad())
        else:
            out.append(socket.inet_ntop(socket.AF_INET6, record.payload.address))
    return out


def _deliver(found: Found, targets: list[Target], host: str) -> None:
    try:
        found(targets)
    except Exception:
        Resolver.log.failure("Bug in the callback for the DNS answer for {host}", host=host)


# -- twisted.names, quiet -------------------------------------------------------


def quiet_resolver(
    reactor: Any = None,
    *,
    servers: list[tuple[str, int]] | None = None,
    resolv_conf: bytes | None = b"/etc/resolv.conf",
    hosts_file: bytes = b"/etc/hosts",
) -> resolve.ResolverChain:
    """``twisted.names.client.createResolver``, without its chatter: the hosts file, then the DNS servers.

    The servers are ``servers`` and those of ``resolv_conf`` (re-read when
    it changes).  No cache resolver: on a client nothing ever fills it.
    """
    return resolve.ResolverChain(
        [hosts.Resolver(hosts_file), _QuietClient(resolv_conf, servers, reactor=reactor)],
    )


def _debug(f: Callable[..., Any], *args: Any) -> Any:
    """Run ``f``, what it logs through ``twisted.python.log`` at debug level instead of info."""
    return legacy_log.callWithContext({"log_level": LogLevel.debug}, f, *args)


class _QuietClient(client.Resolver):
    """twisted.names' DNS client: a fresh random source port per query (RFC 5452 §9.2), silently.

    Reading ``/etc/resolv.conf`` (at the first lookup and whenever it
    changes) logs at debug level.
    """

    def maybeParseConfig(self) -> None:
        _debug(super().maybeParseConfig)

    def _connectedProtocol(self, interface: str = "") -> dns.DNSDatagramProtocol:
        proto = dns.DNSDatagramProtocol(self, reactor=self._reactor)
        proto.noisy = False
        for attempt in range(1000):
            port = _QuietPort(dns.randomSource(), proto, interface, reactor=self._reactor)
            try:
                port.startListening()
            except CannotListenError as exc:  # that random port is taken: another one
                if getattr(exc.socketError, "errno", None) == errno.EMFILE or attempt == 999:
                    raise
            else:
                break
        return proto


class _QuietPort(udp.Port):
    """Twisted's UDP port without the two lines it logs per port ("... starting on N", "(UDP Port N Closed)").

    The two methods are ``twisted.internet.udp.Port``'s (Twisted 22-26) less
    their ``log.msg``; ``tests/integration/test_transport_dns.py`` holds them
    to that against a real DNS server on loopback.
    """

    def _bindSocket(self) -> None:
        try:
            skt = self.createInternetSocket()
        except OSError as exc:
            raise CannotListenError(self.interface, self.port, exc) from exc
        try:
            skt.bind((self.interface, self.port))
        except OSError as exc:
            skt.close()
            raise CannotListenError(self.interface, self.port, exc) from exc
        self._realPortNumber = skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = skt.fileno

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d
