# -*- test-case-name: tests.test_proxy_routing -*-
"""Route preprocessing (RFC 3261 §16.4) and Record-Route (§16.6 step 4, RFC 5658).

Whether a URI "is us" is :class:`sipproxy.locality.Locality`'s answer, the
same for the stack, the registrar and the proxy (re-exported here).
"""

from __future__ import annotations

from sipproxy.flowtoken import FLOW_TOKEN_PARAM
from sipproxy.locality import LocalAddress, Locality
from sipproxy.message import ParseError, Request, SipURI

__all__ = [
    "LocalAddress",
    "Locality",
    "DIALOG_TOKEN_PARAM",
    "add_record_route",
    "is_sips_request",
    "preprocess_routing",
    "record_route_values",
    "top_route",
]


# -- §16.4 Route information preprocessing ----------------------------------


def preprocess_routing(request: Request, locality: Locality) -> list[SipURI]:
    """RFC 3261 §16.4, in place.

    1. A Request-URI we placed into a Record-Route (a strict router upstream
       copied it there: no user part, us) is replaced by the last Route value,
       which is removed.
    2. A ``maddr`` in the Request-URI naming us, received on the port the URI
       says, is stripped with any non-default port and the transport.
    3. Every top Route value that is us is removed (two of them after a
       transport change: RFC 5658 double Record-Route).

    Returns the Route URIs removed in step 3, in order: the last one faces
    the next hop, and its flow token (RFC 5626 §5.3) may say where that is.
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
        and (uri.port or 5060) == locality.port
    ):
        params = {k: v for k, v in uri.params.items() if k not in ("maddr", "transport")}
        request.uri = uri.with_(params=params, port=None)
    ours: list[SipURI] = []
    while True:
        routes = request.addresses("route")
        if not routes or not locality.is_us(routes[0].uri):
            break
        if isinstance(routes[0].uri, SipURI):
            ours.append(routes[0].uri)
        request.pop_first("route")
    return ours


def _placed_by_us(uri: SipURI, locality: Locality) -> bool:
    """Could ``uri`` be one of our Record-Route URIs? No user part, us, and ``lr`` or our explicit port."""
    return uri.user is None and locality.is_us(uri) and (uri.lr or uri.port in locality.ports)


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


def record_route_values(
    local: LocalAddress,
    incoming: str,
    outgoing: str,
    token: str | None = None,
    *,
    sips: bool = False,
    flow_in: str | None = None,
    flow_out: str | None = None,
) -> list[str]:
    """The Record-Route values to add at the top, the first one on top (facing the next hop).

    One value when the request leaves on the transport it arrived on;
    two when it changes transport (RFC 5658 §3.2 "double Record-Route"): the
    top one for the outgoing side, the second for the incoming side, so that
    each party's route set begins with the URI reachable on its own transport.
    ``token`` (``;dt=``) lets us recognise later in-dialog requests as
    following a Route we placed for this dialog (the security layer signs it).
    Each value carries the port of its transport (the TLS port for TLS).
    ``sips``: the request's Request-URI or top Route is a SIPS URI, so ours
    must be one too (§16.6 step 4): ``sips:`` (which implies TLS) on the
    TLS side; a side on another transport keeps a ``sip:`` URI naming it.

    ``flow_in`` and ``flow_out`` are RFC 5626 §5.2 flow tokens
    (:mod:`sipproxy.flowtoken`) of the flow the request came on and of the
    one it leaves on, when a phone is reached only over it: each goes into
    the value facing its side (``;ft=``), so that an in-dialog request
    towards that phone follows the flow, not its Contact (§5.3).  One value
    carries the one token there is; with two tokens there are two values
    even on one transport (RFC 5658 §3.2), because the last of our Routes
    in a request names the side it goes to.
    """
    incoming, outgoing = incoming.upper(), outgoing.upper()
    if incoming == outgoing and not (flow_in and flow_out):
        return [_record_route(local, outgoing, token, sips, flow_out or flow_in)]
    first = _record_route(local, outgoing, token, sips, flow_out)
    return [first, _record_route(local, incoming, token, sips, flow_in)]


def _record_route(
    local: LocalAddress, transport: str, token: str | None, sips: bool = False, flow: str | None = None
) -> str:
    secure = sips and transport == "TLS"  # the side that is not TLS keeps a sip: URI with its transport
    scheme = "sips" if secure else "sip"
    params = "" if transport == "UDP" or secure else f";transport={transport.lower()}"
    if token:
        params += f";{DIALOG_TOKEN_PARAM}={token}"
    if flow:
        params += f";{FLOW_TOKEN_PARAM}={flow}"
    # With --workers, this worker's own port for UDP/TCP: in-dialog requests come back to the worker that
    # holds the flow its token names (any worker would pop a Record-Route naming the shared port).
    return f"<{scheme}:{local.via_hostport_for(transport)}{params};lr>"


def is_sips_request(request: Request) -> bool:
    """Does ``request`` have a SIPS Request-URI or top Route (§16.6 step 4, §26.2.2: it leaves only over TLS)?"""
    if isinstance(request.uri, SipURI) and request.uri.scheme.lower() == "sips":
        return True
    try:
        route = top_route(request)
    except ParseError:  # refused where the Route is read for the next hop, not here
        return False
    return route is not None and route.scheme.lower() == "sips"


def add_record_route(
    request: Request,
    local: LocalAddress,
    incoming: str,
    outgoing: str,
    token: str | None = None,
    *,
    flow_in: str | None = None,
    flow_out: str | None = None,
) -> None:
    """Insert :func:`record_route_values` above any existing Record-Route (§16.6 step 4)."""
    values = record_route_values(
        local, incoming, outgoing, token, sips=is_sips_request(request), flow_in=flow_in, flow_out=flow_out
    )
    for value in reversed(values):
        request.add("Record-Route", value, first=True)
