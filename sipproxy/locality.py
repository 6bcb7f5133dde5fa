# -*- test-case-name: tests.test_locality -*-
"""Who we are: our address, the domains we are responsible for, and the address-of-record as we key it.

One object answers "is this URI us?" for every layer above the
transactions, with two questions:

- :meth:`Locality.is_us`, this server (a host of ours on our port or none):
  the proxy's §16.4 Route preprocessing and §16.5 "the domain of the proxy";
- :meth:`Locality.is_us_or_our_domain`, the server or one of its domains
  whatever the port: the registrar's §10.3 step 1 and the stack's choice of
  what it answers itself (REGISTER, an OPTIONS to the server).

A URI is us when its host is our advertised host or one of our domains and
its port is ours or absent.  The port rule matters on a single machine:
``sip:bob@127.0.0.1:5070`` is a user agent next to us, not our domain, even
though ``127.0.0.1`` is one of our addresses; and ``sip:127.0.0.1:5070``, what
load balancers and monitoring send, is us when 5070 is our port whether or
not ``127.0.0.1`` was given as a domain.

:func:`canonical_aor` is the form of an address-of-record the location
service is keyed by (§10.3 step 5): scheme, user and host, no port, no
parameters -- as Kamailio and OpenSIPS key theirs (user@domain).

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass

from sipproxy.message import SipURI, Via, format_host
from sipproxy.message.uri import canonical_host

__all__ = ["Domains", "LocalAddress", "Locality", "canonical_aor", "DEFAULT_PORT"]

DEFAULT_PORT = 5060
"""RFC 3261 §19.1.2: the port of a ``sip:`` URI without one; ours when no :class:`LocalAddress` is given."""


class Domains:
    """The host names and addresses we answer for (registrar domains and our own addresses)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(canonical_host(n) for n in names if n)

    def __contains__(self, host: object) -> bool:
        return isinstance(host, str) and canonical_host(host) in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.names))


@dataclass(frozen=True)
class LocalAddress:
    """Who we are on the wire: the host we advertise in Via and Record-Route, and our SIP port."""

    host: str
    """Advertised host or IP address, e.g. ``"127.0.0.1"`` (IPv6 without brackets or with, both work)."""
    port: int
    """Our SIP port; UDP and TCP share it."""
    tls_port: int | None = None
    """Our TLS port (``--tls-port``, RFC 3261 §26.2: 5061), ``None`` when TLS is off."""
    ws_port: int | None = None
    """Our WebSocket port (``--ws``, RFC 7118), ``None`` without."""
    wss_port: int | None = None
    """Our secure WebSocket port (``--wss``), ``None`` without."""
    via_port: int | None = None
    """With ``--workers``: this worker's own UDP and TCP port, put in its Via so responses come back to it."""
    worker_ports: frozenset[int] = frozenset()
    """With ``--workers``: every worker's ``via_port``.

    Their Vias are ours too (loop detection, §16.3 step 4), but a Route
    naming another worker's port is that worker's: its Record-Route (it may
    carry a flow token only that worker can use) is forwarded to it, not
    popped here.
    """

    @property
    def hostport(self) -> str:
        return f"{format_host(self.host.strip('[]'))}:{self.port}"

    def hostport_for(self, transport: str) -> str:
        """Our host and the port ``transport`` listens on (Via, Record-Route): the TLS port for TLS, and so on."""
        port = {"TLS": self.tls_port, "WS": self.ws_port, "WSS": self.wss_port}.get(transport.upper())
        if port is not None:
            return f"{format_host(self.host.strip('[]'))}:{port}"
        return self.hostport

    def via_hostport_for(self, transport: str) -> str:
        """The sent-by of our Via (RFC 3261 §18.2.1): :meth:`hostport_for`, or this worker's own port for UDP/TCP.

        With several workers on one port (``--workers``, SO_REUSEPORT) the
        kernel hands a datagram to any of them; a response sent to the
        worker's own port reaches the one holding its client transaction.
        """
        if self.via_port is not None and transport.upper() in ("UDP", "TCP"):
            return f"{format_host(self.host.strip('[]'))}:{self.via_port}"
        return self.hostport_for(transport)

    @property
    def ports(self) -> frozenset[int]:
        """Every port this process listens on for SIP (with ``--workers``, its own port but not the others')."""
        listed = (self.port, self.tls_port, self.ws_port, self.wss_port, self.via_port)
        return frozenset(p for p in listed if p is not None)

    @property
    def via_ports(self) -> frozenset[int]:
        """The ports a Via of ours can name: :attr:`ports` and every worker's own port (``--workers``)."""
        return self.ports | self.worker_ports


class Locality:
    """Our address plus the domains we are responsible for: answers "is this us?".

    ``local`` may be ``None`` where only the domains are known (a registrar
    or stack built on its own, in tests): then only a domain is us, on port
    5060 or no port.
    """

    def __init__(self, local: LocalAddress | None, domains: Container[str]) -> None:
        self.local = local
        self.domains = domains
        self.port = local.port if local is not None else DEFAULT_PORT
        self.ports = local.ports if local is not None else frozenset({DEFAULT_PORT})
        """Our SIP port and, with TLS, our TLS port: a URI with either is us."""
        self._via_ports = local.via_ports if local is not None else self.ports
        self._host = canonical_host(local.host) if local is not None else None

    def is_our_domain(self, host: str) -> bool:
        """Is ``host`` one of the domains we are responsible for (the registrar's §10.3 step 5)?"""
        return host in self.domains or canonical_host(host) in self.domains

    def is_our_host(self, host: str) -> bool:
        """Our advertised host or one of our domains, whatever the port."""
        return canonical_host(host) == self._host or self.is_our_domain(host)

    def is_us(self, uri: object) -> bool:
        """Does ``uri`` name this server or one of its domains (our port, or no port)?"""
        if not isinstance(uri, SipURI):
            return False
        if uri.port is not None and uri.port not in self.ports:
            return False
        return self.is_our_host(uri.host)

    def is_us_or_our_domain(self, uri: object) -> bool:
        """§10.3 step 1: does ``uri`` name one of our domains (at any port: a domain has none) or us?

        The registrar's question ("bindings for the domain identified in the
        Request-URI"): ``sip:example.test:5070`` is our domain even when we
        listen on 5060, and ``sip:127.0.0.1:5060`` is us when that is our
        address and port, whether or not it is one of the domains.
        """
        if not isinstance(uri, SipURI):
            return False
        return self.is_our_domain(uri.host) or self.is_us(uri)

    def is_our_via(self, via: Via) -> bool:
        """Is ``via`` one we put there (§16.3 step 4: "a sent-by value ... placed by the proxy")?"""
        default = 5061 if via.transport.upper() == "TLS" else DEFAULT_PORT
        if self._host is None or canonical_host(via.host) != self._host:
            return False
        return (via.port or default) in self._via_ports


def canonical_aor(uri: SipURI) -> str:
    """The address-of-record of ``uri`` as the location service keys it (RFC 3261 §10.3 step 5, §16.5).

    :meth:`SipURI.aor` (parameters, headers and password removed, host lower
    case, escapes normalised) without the port: ``sip:carol@127.0.0.1:5060``
    and ``sip:carol@127.0.0.1`` are one address-of-record, so a phone that
    puts our port into its To is reached by a call that does not.
    """
    aor = uri.aor()
    if aor.port is not None:
        aor = aor.with_(port=None)
    return str(aor)
