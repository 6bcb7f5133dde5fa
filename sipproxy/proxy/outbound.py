# -*- test-case-name: tests.test_proxy_outbound -*-
"""The proxy's part of RFC 5626 outbound: flow tokens in our Record-Route, and the requests that follow them.

We are the edge proxy and the registrar in one.  A phone reached only over
the flow it registered on (a WebSocket phone, or one that registered with
``+sip.instance`` and ``reg-id``: :attr:`~sipproxy.location.Binding.flow_bound`)
gets the token of that flow (:mod:`sipproxy.flowtoken`) in the Record-Route
value facing it (§5.2; :func:`~sipproxy.proxy.routing.record_route_values`),
so every in-dialog request towards it brings the flow back in its Route.

§5.3, for a request whose top Routes are ours (:func:`route_flow`):

- the *last* of our Route values faces the next hop (with two, RFC 5658,
  the first faces the sender); a valid flow token there names the flow to
  forward on, unless it is the very flow the request came on (then the
  request comes *from* that phone, and goes where its Request-URI says);
- a token that is not ours (tampered with, or signed under another secret)
  is ``403 Invalid flow token``: §5.3 "the proxy SHOULD send a 403
  (Forbidden) response";
- a token whose connection is closed is ``430 Flow Failed`` (§5.3: "if
  the flow no longer exists, the proxy SHOULD send a 430"); on UDP nobody
  can tell, so the request is sent.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sipproxy.errors import SipError
from sipproxy.flowtoken import FLOW_TOKEN_PARAM, FlowTokens
from sipproxy.message import ParseError, Request, SipURI
from sipproxy.net import Source, Target, is_reliable
from sipproxy.transport.address import normalize_host

if TYPE_CHECKING:
    from sipproxy.proxy.branch import FlowOpen
    from sipproxy.proxy.targets import TargetURI

__all__ = ["FLOW_FAILED", "flow_gone", "incoming_flow_token", "route_flow", "same_flow"]

FLOW_FAILED = (430, "Flow Failed")
"""RFC 5626 §5.3, §11.5: the response to a request for a flow that is gone."""


def same_flow(a: Target | Source, b: Target | Source) -> bool:
    """The same transport and peer address (hosts compared as :func:`normalize_host` spells them)."""
    return (a.transport.upper(), normalize_host(a.host), a.port) == (
        b.transport.upper(),
        normalize_host(b.host),
        b.port,
    )


def flow_gone(target: TargetURI, flow_open: FlowOpen | None) -> bool:
    """Is ``target`` flow-bound (RFC 5626 §5.3) to a connection that is closed?  (UDP flows cannot tell.)"""
    flow = target.flow
    if flow is None or not target.flow_bound or flow_open is None or not is_reliable(flow.transport):
        return False
    return not flow_open(flow)


def incoming_flow_token(flow_token: Callable[[Target], str] | None, source: Source, request: Request) -> str | None:
    """The flow token of the flow ``request`` came on, when the phone there is reached only over it.

    A WebSocket phone always is (RFC 7118); any other phone when its Contact
    carries ``ob`` (RFC 5626 §5.1: it registered with outbound).
    """
    if flow_token is None:
        return None
    if source.transport.upper() not in ("WS", "WSS") and not _contact_has_ob(request):
        return None
    return flow_token(Target(source.transport.upper(), source.host, source.port))


def _contact_has_ob(request: Request) -> bool:
    try:
        contacts = request.contacts
    except ParseError:
        return False
    if contacts == "*" or not contacts:
        return False
    uri = contacts[0].uri
    return isinstance(uri, SipURI) and "ob" in uri.params


def route_flow(
    ours: list[SipURI], source: Source, tokens: FlowTokens | None, flow_open: FlowOpen | None
) -> Target | None:
    """§5.3: the flow the request goes on, from the flow token of the last of our Routes (``ours``), if any.

    ``None``: no token there, or the token names the flow the request came
    on (the phone's own request).  Raises :class:`SipError` 403 for a token
    that is not ours, 430 for a connection that is gone.
    """
    if not ours or tokens is None:
        return None
    token = ours[-1].params.get(FLOW_TOKEN_PARAM)
    if token is None:
        return None
    flow = tokens.decode(token)
    if flow is None:
        raise SipError(403, "Invalid flow token")
    target = Target(flow.transport, flow.host, flow.port)
    if same_flow(target, source):
        return None
    if is_reliable(target.transport) and flow_open is not None and not flow_open(target):
        raise SipError(*FLOW_FAILED)
    return target
