# -*- test-case-name: tests.test_proxy_forward -*-
"""Forwarding a request to one target (RFC 3261 §16.6 steps 1-8).

Every header we do not touch is copied byte for byte (the message layer
keeps raw lines); we change the Request-URI, Max-Forwards, Route (Path,
strict routing), and add Record-Route and our Via.
"""

from __future__ import annotations

from sipproxy.message import Request
from sipproxy.net import NextHop, Target
from sipproxy.proxy.routing import LocalAddress, add_record_route, top_route
from sipproxy.proxy.targets import TargetURI, uri_hop

__all__ = [
    "RECORD_ROUTE_METHODS",
    "add_via",
    "forward_copy",
    "stamp",
]

RECORD_ROUTE_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY", "UPDATE"})
"""Methods we Record-Route (§16.6 step 4).

The ones that create a dialog (INVITE, SUBSCRIBE, REFER, and NOTIFY, which
may create the subscription dialog before the SUBSCRIBE's 2xx arrives, RFC
6665 §4.1.2.4) and UPDATE, which rides in one.  Not REGISTER (the
registrar's business, and Path's), MESSAGE, OPTIONS, PUBLISH, INFO, BYE,
PRACK, CANCEL or ACK: none of them creates a dialog, so a Record-Route
there would be ignored by everybody (§12.2: a mid-dialog request never
changes the route set).
"""


def forward_copy(request: Request, target: TargetURI, default_max_forwards: int) -> tuple[Request, NextHop | Target]:
    """§16.6 steps 1-3, 6 and 7: the copy for one target, and where it goes.

    1. Copy the request.
    2. The Request-URI becomes the target.
    3. Max-Forwards is decremented, or set to ``default_max_forwards`` (70) when absent.
    6. The binding's Path (RFC 3327 §5.3) goes on top of Route; if the first
       Route is then a strict router (no ``lr``), the Request-URI moves to
       the end of Route and the strict router's URI becomes the Request-URI.
    7. The next hop: the top Route for a loose router, the Request-URI
       otherwise (the strict router, or the target itself), or, for a
       registered contact with no Route to follow, the flow its REGISTER
       came on.  Its host may still be a name to resolve (RFC 3263 §4).

    Raises :class:`ParseError` when the request's Route or Max-Forwards is malformed.
    """
    out = request.copy()  # step 1
    out.uri = target.uri  # step 2
    max_forwards = request.max_forwards  # step 3
    out.set("Max-Forwards", str(max_forwards - 1 if max_forwards is not None else default_max_forwards))
    for hop in reversed(target.path):  # step 6 (RFC 3327 §5.3: Path becomes Route)
        out.add("Route", hop, first=True)
    first = top_route(out)
    if first is not None and not first.lr:  # step 6: a strict router next
        uri_text = out.uri_text
        out.pop_first("route")
        out.add("Route", f"<{uri_text}>")
        out.uri = first
        return out, uri_hop(first)
    if first is not None:  # step 7
        return out, uri_hop(first)
    if target.flow is not None:
        return out, target.flow
    return out, uri_hop(target.uri)


def add_via(request: Request, local: LocalAddress, transport: str, branch: str) -> None:
    """§16.6 step 8: our Via on top, ``branch`` made by :func:`sipproxy.proxy.validate.make_branch`."""
    request.add("Via", f"SIP/2.0/{transport.upper()} {local.via_hostport_for(transport)};branch={branch}", first=True)


def stamp(
    request: Request,
    local: LocalAddress,
    branch: str,
    incoming: str,
    outgoing: str,
    record_route: bool,
    token: str | None = None,
    *,
    flow_in: str | None = None,
    flow_out: str | None = None,
) -> None:
    """§16.6 steps 4 and 8: Record-Route (when ``record_route``) and Via, for a request leaving on ``outgoing``.

    ``flow_in``/``flow_out``: the flow tokens of the two sides (RFC 5626 §5.2), see :func:`record_route_values`.
    """
    if record_route:
        add_record_route(request, local, incoming, outgoing, token, flow_in=flow_in, flow_out=flow_out)
    add_via(request, local, outgoing, branch)
