# -*- test-case-name: tests.test_proxy_explain -*-
"""Routing explain: what the proxy would do with a request (RFC 3261 §16.3-§16.6), without sending anything.

:func:`explain_route` builds the request an out-of-dialog caller would
send (``method``, the Request-URI, From, To = the Request-URI,
Max-Forwards 70), runs it through the real parser and the proxy's own
steps, and says what each one decides, in order:

1. the message as it would be parsed (a Request-URI that does not parse
   is a 400 here too);
2. §16.3 validation (:func:`~sipproxy.proxy.validate.validate_request`:
   syntax, URI scheme, Max-Forwards, loop, Proxy-Require);
3. §16.4 Route information preprocessing (an out-of-dialog request has no
   Route: the Request-URI decides);
4. §16.5 the target set: the location service's bindings in q groups
   (equal q in parallel, a lower q only after every higher one failed),
   each with the way it is reached: the TCP/TLS flow its REGISTER came on
   while that connection is open, its Path, or its Contact; a foreign
   domain: the Request-URI itself;
5. §16.6 for each target: the next hop and its transport, Record-Route,
   and, for a host name, the RFC 3263 §4 lookups the resolver would make
   (NAPTR, SRV, A/AAAA: :func:`dns_steps`).  No DNS query is made.

The §16.3 step 6 ``authorize`` hook (digest with ``--users``) is named,
not run: it depends on the credentials the real request carries.  The
answer is a JSON-ready dict (``steps``, ``targets``, ``result``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from sipproxy.locality import Locality, canonical_aor
from sipproxy.location import LocationService
from sipproxy.message import ParseError, Request, SipURI, parse_message
from sipproxy.message.uri import is_ip_address
from sipproxy.net import NextHop, Target, is_reliable
from sipproxy.proxy.branch import reachable
from sipproxy.proxy.forward import RECORD_ROUTE_METHODS, forward_copy
from sipproxy.proxy.outbound import flow_gone
from sipproxy.proxy.routing import preprocess_routing, top_route
from sipproxy.proxy.targets import TargetURI, group_by_q, location_targets
from sipproxy.proxy.validate import validate_request

__all__ = ["dns_steps", "explain_route"]

_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _step(section: str, title: str, outcome: str, *details: str) -> dict[str, Any]:
    return {"section": section, "title": title, "outcome": outcome, "details": list(details)}


def _hop(hop: NextHop | Target) -> dict[str, Any]:
    return {"transport": hop.transport, "host": hop.host, "port": hop.port}


def dns_steps(hop: NextHop | Target) -> str:
    """RFC 3263 §4 as the resolver would follow it for ``hop`` (``transport/resolve.py``), in words; "" for an address.

    A numeric host needs no lookup; an explicit port: A/AAAA (§4.2); an
    explicit transport: its SRV records, then A/AAAA (§4.1, §4.2); neither:
    NAPTR, then SRV, then A/AAAA.
    """
    host = hop.host.strip("[]")
    if is_ip_address(host):
        return ""
    explicit_port = getattr(hop, "explicit_port", True)
    explicit_transport = getattr(hop, "explicit_transport", True)
    if explicit_port:
        return f"DNS: A/AAAA of {host} (RFC 3263 §4.2)"
    if explicit_transport:
        return f"DNS: SRV for {hop.transport} at {host}, else A/AAAA port {hop.port} (RFC 3263 §4.1, §4.2)"
    return f"DNS: NAPTR of {host}, then SRV, else A/AAAA port {hop.port} (RFC 3263 §4.1, §4.2)"


def explain_route(
    uri: str,
    from_: str,
    method: str,
    *,
    locality: Locality,
    store: LocationService,
    extensions: Collection[str] = frozenset(),
    record_route: bool = True,
    default_max_forwards: int = 70,
    flow_open: Callable[[Target], bool] | None = None,
    authorizes: bool = False,
) -> dict[str, Any]:
    """What the proxy would do with ``method uri`` from ``from_`` (see the module docstring)."""
    method = (method or "INVITE").strip().upper()
    uri, from_ = uri.strip(), (from_ or "sip:anonymous@anonymous.invalid").strip()
    out: dict[str, Any] = {"request": {"method": method, "uri": uri, "from": from_}, "steps": [], "targets": []}
    steps: list[dict[str, Any]] = out["steps"]

    def stop(result: str) -> dict[str, Any]:
        out["result"] = result
        return out

    if not method or not set(method) <= _METHOD_CHARS or any(c in uri + from_ for c in "\r\n\0<> "):
        steps.append(_step("§7.1", "Request line", "refused", "method, Request-URI or From is not a valid token"))
        return stop("not a request that can be sent: check the method and the URIs")
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.255:5060;branch=z9hG4bKexplain\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <{from_}>;tag=explain\r\n"
        f"To: <{uri}>\r\n"
        "Call-ID: route-explain\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    try:
        parsed = parse_message(text.encode("utf-8", "surrogateescape"))
    except ParseError as error:
        steps.append(_step("§7, §25", "Parsing", "refused", f"{error.status} {error.reason}"))
        return stop(f"would answer {error.status} {error.reason}")
    assert isinstance(parsed, Request)  # it starts with a request line
    request = parsed
    steps.append(_step("§7, §25", "Parsing", "parses", f"{method} {uri}", f"From: <{from_}>"))
    target_uri = request.uri
    if method == "REGISTER" and locality.is_us_or_our_domain(target_uri):
        steps.append(_step("§10.3", "Registrar", "registrar", "a REGISTER for one of our domains is the registrar's"))
        return stop("answered by the registrar (§10.3), not proxied")
    if method in ("ACK", "CANCEL"):
        steps.append(_step("§16.10, §16.11", "ACK and CANCEL", "special", f"{method} is not routed like a new request"))
        return stop(f"{method} follows its INVITE's transaction (CANCEL: answered here, then sent to each branch)")

    response = validate_request(request, locality, extensions, "explain")
    if response is not None:
        steps.append(_step("§16.3", "Request validation", "refused", f"{response.status} {response.reason}"))
        return stop(f"would answer {response.status} {response.reason}")
    steps.append(
        _step(
            "§16.3",
            "Request validation",
            "passes",
            "syntax, URI scheme, Max-Forwards (70), no loop, Proxy-Require",
            *(["step 6: the authorization hook asks for credentials first (digest, --users)"] if authorizes else []),
        )
    )
    routed = request.copy()
    preprocess_routing(routed, locality)
    steps.append(
        _step("§16.4", "Route information preprocessing", "no Route", "no Route header: the Request-URI decides")
    )

    uri_value = routed.uri
    if not isinstance(uri_value, SipURI):
        steps.append(_step("§16.5", "Request targets", "refused", "416 Unsupported URI Scheme"))
        return stop("would answer 416 Unsupported URI Scheme")
    if top_route(routed) is None and locality.is_us(uri_value):
        aor = canonical_aor(uri_value)
        groups = group_by_q(location_targets(uri_value, store))
        if not groups:
            steps.append(_step("§16.5", "Request targets", "no binding", f"{aor}: no registered contact"))
            return stop(f"would answer 480 Temporarily Unavailable: no binding for {aor}")
        details = [
            f"q {group[0].q:g}: {len(group)} contact{'s' if len(group) > 1 else ''}"
            + (" in parallel" if len(group) > 1 else "")
            for group in groups
        ]
        steps.append(_step("§16.5", "Request targets", "location service", f"{aor}, in q order:", *details))
    else:
        groups = [[TargetURI(uri=uri_value)]]
        steps.append(
            _step(
                "§16.5",
                "Request targets",
                "Request-URI",
                f"{uri_value.host} is not one of our domains: the Request-URI",
            )
        )

    rr = record_route and method in RECORD_ROUTE_METHODS
    forwards: list[str] = []
    for number, group in enumerate(groups, 1):
        for target in group:
            entry = _target(target, routed, number, default_max_forwards, flow_open)
            out["targets"].append(entry)
            forwards.append(f"{entry['target']}: {entry['how']}")
    steps.append(
        _step(
            "§16.6",
            "Forwarding",
            "forwarded",
            f"Max-Forwards 69; {'Record-Route added' if rr else f'no Record-Route ({method} creates no dialog)'}",
            *forwards,
        )
    )
    if len(groups) == 1 and len(groups[0]) == 1:
        result = f"would forward to {out['targets'][0]['target']}"
    else:
        result = "would fork: " + ", then ".join(
            f"{len(group)} in parallel (q {group[0].q:g})" if len(group) > 1 else f"1 (q {group[0].q:g})"
            for group in groups
        )
    return stop(result)


def _target(
    target: TargetURI,
    routed: Any,
    group: int,
    default_max_forwards: int,
    flow_open: Callable[[Target], bool] | None,
) -> dict[str, Any]:
    """One target: its next hop (§16.6 step 7) and the way it is reached."""
    usable = reachable(target, flow_open)
    try:
        _, hop = forward_copy(routed, usable, default_max_forwards)
    except ParseError as error:
        return {"group": group, "q": target.q, "target": str(target.uri), "aor": target.aor, "how": error.reason}
    if target.path:
        how = f"through its Path {', '.join(target.path)}"
    elif flow_gone(target, flow_open):
        how = f"its {hop.transport} flow ({hop.host}:{hop.port}) is gone (RFC 5626): not reachable until it registers"
    elif usable.flow is not None and is_reliable(usable.flow.transport):
        how = f"over the {hop.transport} connection its REGISTER came on ({hop.host}:{hop.port})"
    elif usable.flow is not None:
        how = f"to the address its REGISTER came from ({hop.transport} {hop.host}:{hop.port}, NAT)"
    elif target.flow is not None:
        how = f"its {target.flow.transport} connection is closed: the Contact, {hop.transport} {hop.host}:{hop.port}"
    else:
        how = f"{hop.transport} to {hop.host}:{hop.port}"
    lookups = dns_steps(hop)
    if lookups:
        how += f" ({lookups})"
    return {
        "group": group,
        "q": target.q,
        "target": str(target.uri),
        "aor": target.aor,
        "path": list(target.path),
        "next_hop": _hop(hop),
        "how": how,
    }
