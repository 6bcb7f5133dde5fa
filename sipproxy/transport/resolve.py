# -*- test-case-name: tests.test_transport_resolve -*-
"""A next hop's host to an ordered list of targets (RFC 3263 §4.2, the A/AAAA step), through twisted.names.

RFC 3263 §4 turns a next hop into an ordered list of (transport, address,
port): NAPTR picks the transport (§4.1), SRV the ports and their order
(§4.2), A and AAAA the addresses; a client tries them one after the other
on a transport error or a timeout (§4.3, done by the proxy's branch).  This
resolver does the A/AAAA part: the transport and port of the hop are kept,
IPv4 addresses come first, then IPv6 ones; an IP literal is its own answer,
without a lookup.  NAPTR and SRV come in here later, for a hop without an
explicit port; nothing above has to change for them.

It never blocks the reactor (twisted.names is asynchronous), never raises
into its caller (the callback always runs, exactly once, with an empty list
when nothing resolves), and a failed lookup is one readable warning.
twisted.names itself is made quiet: per query it opened a UDP port, which
logged twice ("... starting on N", "(UDP Port N Closed)"), with a ``noisy``
protocol that logged twice more, and its errors carry a raw DNS ``Message``
as their text.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import base, udp
from twisted.internet.defer import Deferred, DeferredList, TimeoutError
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevel
from twisted.names import client, dns, error, hosts, resolve
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from sipproxy.message.uri import is_ip_address
from sipproxy.net import Target

__all__ = ["Resolver", "describe_failure", "quiet_resolver"]

Found = Callable[[list[Target]], None]

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
    by default the hosts file, then the DNS servers of ``/etc/resolv.conf``,
    made at the first lookup.  ``timeout`` is twisted.names' retry schedule
    in seconds.
    """

    log = Logger()

    def __init__(self, reactor: Any = None, names: Any = None, timeout: Sequence[int] | None = None) -> None:
        self._reactor = reactor
        self._names = names
        self.timeout = tuple(timeout) if timeout is not None else None

    @property
    def names(self) -> Any:
        if self._names is None:
            self._names = quiet_resolver(self._reactor)
        return self._names

    def __call__(self, hop: Target, found: Found) -> None:
        """Call ``found`` once with the targets of ``hop``: its A addresses, then its AAAA ones (§4.2)."""
        host = hop.host.strip("[]")
        if is_ip_address(host):
            _deliver(found, [hop._replace(host=host)], host)
            return
        try:
            lookups: list[Deferred[Any]] = [
                self.names.lookupAddress(host, self.timeout),
                self.names.lookupIPV6Address(host, self.timeout),
            ]
        except Exception:
            self.log.failure("Bug starting the DNS lookup of {host}", host=host)
            _deliver(found, [], host)
            return
        answered = DeferredList(lookups, consumeErrors=True)
        answered.addCallback(self._targets, hop, host)
        answered.addErrback(self._bug, host)
        answered.addCallback(lambda targets: _deliver(found, targets, host))

    def _targets(self, results: list[tuple[bool, Any]], hop: Target, host: str) -> list[Target]:
        """§4.2: every A address, then every AAAA address, in the order the answers gave them."""
        (a_ok, a), (aaaa_ok, aaaa) = results
        addresses = (_addresses(a[0], dns.A) if a_ok else []) + (_addresses(aaaa[0], dns.AAAA) if aaaa_ok else [])
        targets = [hop._replace(host=address) for address in dict.fromkeys(addresses)]
        if not targets:
            failures = [describe_failure(r) for ok, r in results if not ok]
            self.log.warn(
                "Could not resolve {host}: {reason}",
                host=host,
                reason=failures[0] if failures else _NO_RECORD,
            )
        return targets

    def _bug(self, failure: Failure, host: str) -> list[Target]:
        self.log.failure("Bug reading the DNS answer for {host}", failure, host=host)
        return []


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
