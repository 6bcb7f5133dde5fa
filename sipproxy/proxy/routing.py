# -*- test-case-name: tests.test_proxy_routing -*-
"""Who we are, Route preprocessing (RFC 3261 §16.4) and Record-Route (§16.6 step 4, RFC 5658).

A URI "is us" when its host is our advertised host or one of the domains we
are responsible for, and its port is ours or absent.  The port rule matters
on a single machine: ``sip:bob@127.0.0.1:5070`` is a user agent next to us,
not our domain, even though ``127.0.0.1`` is one of our addresses.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from sipproxy.message import ParseError, Request, SipURI, Via, format_host
from sipproxy.message.uri import canonical_host

__all__ = [
    "LocalAddress",
    "Locality",
    "DIALOG_TOKEN_PARAM",
    "add_record_route",
    "preprocess_routing",
    "record_route_values",
    "top_route",
]


@dataclass(frozen=True)
class LocalAddress:
    """Who we are on the wire: the host we advertise in Via and Record-Route, and our SIP port."""

    host: str
    """Advertised host or IP address, e.g. ``"127.0.0.1"`` (IPv6 without brackets or with, both work)."""
    port: int
    """Our SIP port; UDP and TCP share it."""

    @property
    def hostport(self) -> str:
        return f"{format_host(self.host.strip('[]'))}:{self.port}"


class Locality:
    """Our address plus the domains we are responsible for: answers "is this us?"."""

    def __init__(self, local: LocalAddress, domains: Container[str]) -> None:
        self.local = local
        self.domains = domains
        self._host = canonical_host(local.host)

    def is_our_host(self, host: str) -> bool:
        return canonical_host(host) == self._host or host in self.domains or canonical_host(host) in self.domains

    def is_us(self, uri: object) -> bool:
        """Does ``uri`` name this proxy or one of its domains (our port, or no port)?"""
        if not isinstance(uri, SipURI):
            return False
        if uri.port is not None and uri.port != self.local.port:
            return False
        return self.is_our_host(uri.host)

    def is_our_via(self, via: Via) -> bool:
        """Is ``via`` one we put there (§16.3 step 4: "a sent-by value ... placed by the proxy")?"""
        return canonical_host(via.host) == self._host and (via.port or 5060) == self.local.port


# -- §16.4 Route information preprocessing ----------------------------------


def preprocess_routing(request: Request, locality: Locality) -> None:
    """RFC 3261 §16.4, in place.

    1. A Request-URI we placed into a Record-Route (a strict router upstream
       copied it there: no user part, us) is replaced by the last Route value,
       which is removed.
    2. A ``maddr`` in the Request-URI naming us, received on the port the URI
       says, is stripped with any non-default port and the transport.
    3. Every top Route value that is us is removed (two of them after a
       transport change: RFC 5658 double Record-Route).

    Raises :class:`ParseError` for a malformed Route.
    """
    uri = request.uri
    routes = request.addresses("route")
    if isinstance(uri, SipURI) and _placed_by_us(uri, locality) and routes:
        last = routes[-1]
        _remove_last_route(request)
        request.uri = last.uri
        uri = request.uri
    if (
        isinstance(uri, SipURI)
        and uri.maddr is not None
        and locality.is_our_host(uri.maddr)
        and (uri.port or 5060) == locality.local.port
    ):
        params = {k: v for k, v in uri.params.items() if k not in ("maddr", "transport")}
        request.uri = uri.with_(params=params, port=None)
    while True:
        routes = request.addresses("route")
        if not routes or not locality.is_us(routes[0].uri):
            break
        request.pop_first("route")


def _placed_by_us(uri: SipURI, locality: Locality) -> bool:
    """Could ``uri`` be one of our Record-Route URIs? No user part, us, and ``lr`` or our explicit port."""
    return uri.user is None and locality.is_us(uri) and (uri.lr or uri.port == locality.local.port)


def _remove_last_route(request: Request) -> None:
    """Remove the last Route value, wherever it sits (its own line, or the end of a combined line)."""
    values = request.get_all("route")
    request.remove("route")
    for value in values[:-1]:
        request.add("Route", value)


def top_route(request: Request) -> SipURI | None:
    """The URI of the first Route value (the next hop for a loose router), if any."""
    routes = request.addresses("route")
    if not routes:
        return None
    uri = routes[0].uri
    if not isinstance(uri, SipURI):
        raise ParseError("Route URI is not a SIP URI", 416)
    return uri


# -- §16.6 step 4 Record-Route -------------------------------------------------


#: The Record-Route URI parameter carrying the dialog token (see :func:`record_route_values`).
DIALOG_TOKEN_PARAM = "dt"


def record_route_values(local: LocalAddress, incoming: str, outgoing: str, token: str | None = None) -> list[str]:
    """The Record-Route values to add at the top, the first one on top (facing the next hop).

    One value when the request leaves on the transport it arrived on;
    two when it changes transport (RFC 5658 §3.2 "double Record-Route"): the
    top one for the outgoing side, the second for the incoming side, so that
    each party's route set begins with the URI reachable on its own transport.
    ``token`` (``;dt=``) lets us recognise later in-dialog requests as
    following a Route we placed for this dialog (the security layer signs it).
    """
    incoming, outgoing = incoming.upper(), outgoing.upper()
    first = _record_route(local, outgoing, token)
    if incoming == outgoing:
        return [first]
    return [first, _record_route(local, incoming, token)]


def _record_route(local: LocalAddress, transport: str, token: str | None) -> str:
    params = "" if transport == "UDP" else f";transport={transport.lower()}"
    if token:
        params += f";{DIALOG_TOKEN_PARAM}={token}"
    return f"<sip:{local.hostport}{params};lr>"


def add_record_route(
    request: Request, local: LocalAddress, incoming: str, outgoing: str, token: str | None = None
) -> None:
    """Insert :func:`record_route_values` above any existing Record-Route (§16.6 step 4)."""
    for value in reversed(record_route_values(local, incoming, outgoing, token)):
        request.add("Record-Route", value, first=True)
