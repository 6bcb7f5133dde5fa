# -*- test-case-name: tests.test_proxy_targets -*-
"""Determining request targets (RFC 3261 §16.5) and where each one is sent.

A target is the URI that becomes the Request-URI of one branch.  Where the
branch is *sent* is the next hop: the top Route if there is one, otherwise
the target URI (§16.6 step 7, a simplified RFC 3263: ``maddr`` or host, the
URI's port or 5060/5061, the ``transport`` parameter or UDP/TLS), except for
a registered contact reached through the flow its REGISTER came on (NAT, or
a TCP connection we reuse).

Transport choice: ``transport=tcp`` -> TCP, none -> UDP, ``sips:`` or
``transport=tls`` -> TLS.  Without ``--tls-cert`` there is no TLS sender:
the branch fails like on any transport error, a synthesized 503 (§16.9),
which a lone branch turns into 500.  A ``sips:`` Request-URI is looked up
under its ``sip:`` address-of-record too, and the branch sends it only over
TLS (§26.2.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sipproxy.locality import canonical_aor
from sipproxy.message import NameAddr, ParseError, Response, SipURI, parse_uri
from sipproxy.net import NextHop
from sipproxy.transaction import Target, is_reliable

if TYPE_CHECKING:
    from sipproxy.location import Binding, LocationService

__all__ = [
    "TargetURI",
    "group_by_q",
    "location_targets",
    "next_hop",
    "one_flow_per_instance",
    "redirect_targets",
    "target_from_binding",
    "unique",
    "uri_hop",
]


@dataclass(frozen=True)
class TargetURI:
    """One element of the target set (§16.5)."""

    uri: SipURI
    """Becomes the Request-URI of the branch."""
    q: float = 1.0
    path: tuple[str, ...] = ()
    """RFC 3327 Path of the binding, turned into Route headers (§16.6 step 6 by way of RFC 3327 §5.3)."""
    flow: Target | None = None
    """Send here instead of the URI's address: the source of the REGISTER (NAT, TCP connection)."""
    depth: int = 0
    """How many 3xx responses led to this target (0 for the original target set)."""
    aor: str | None = None
    """The address-of-record of the binding this target came from (``None`` for any other target)."""
    flow_bound: bool = False
    """Reached over ``flow`` only (RFC 5626 §5.3: an outbound or WebSocket binding, or a flow token's flow)."""
    contact: str = ""
    """The binding's contact as the location service keys it (to drop the binding when its flow failed)."""
    alternates: tuple[TargetURI, ...] = ()
    """RFC 5626 §7: the same instance's other flows (other ``reg-id``), tried in order when this flow fails."""


def _bare(host: str) -> str:
    return host.strip("[]").lower()


def next_hop(uri: SipURI) -> Target:
    """Where a request for ``uri`` goes when DNS has no NAPTR or SRV record for it (RFC 3263 §4.1, §4.2)."""
    hop = uri_hop(uri)
    return Target(hop.transport, hop.host, hop.port)


def uri_hop(uri: SipURI) -> NextHop:
    """RFC 3263 §4.1: the next hop a URI names, and what the URI gave of it, for the resolver.

    The host is ``maddr`` or the URI's host; the transport ``transport=``,
    else TLS for ``sips:`` (also over ``transport=tcp``), else UDP; the port
    the URI's, else 5061 for TLS, 5060 for the rest.
    """
    param = uri.transport
    secure = uri.scheme == "sips"
    if secure or param == "tls":
        transport = "TLS"
    elif param:
        transport = param.upper()
    else:
        transport = "UDP"
    host = uri.maddr or uri.host
    port = uri.port or (5061 if transport == "TLS" else 5060)
    return NextHop(transport, host.strip("[]"), port, bool(param), uri.port is not None, secure)


def target_from_binding(binding: Binding, depth: int = 0) -> TargetURI | None:
    """A registered contact as a target; ``None`` if its contact is not a SIP URI.

    When the REGISTER came from another host than the Contact names (a NAT
    between the user agent and us), or came over a connection-oriented
    transport, the request goes back to that source over that transport,
    the Contact staying the Request-URI.  A REGISTER from the Contact's own
    host but another port is a user agent that registers from one socket and
    listens on another (no NAT rewrites the port but keeps the address): its
    Contact is used as it stands.  A binding registered through
    edge proxies (Path) is reached through its Path instead.  A flow-bound
    binding (RFC 5626 outbound, WebSocket) is always reached over its flow.
    """
    try:
        uri = parse_uri(binding.contact_uri)
    except ParseError:
        return None
    if not isinstance(uri, SipURI):
        return None
    flow = None
    if not binding.path and binding.source_host and binding.source_port:
        hop = next_hop(uri)
        behind_nat = _bare(hop.host) != _bare(binding.source_host)
        if behind_nat or is_reliable(binding.transport) or binding.flow_bound:
            flow = Target(binding.transport, _bare(binding.source_host), binding.source_port)
    return TargetURI(
        uri=uri,
        q=binding.q,
        path=tuple(binding.path),
        flow=flow,
        depth=depth,
        aor=binding.aor,
        flow_bound=flow is not None and binding.flow_bound,
        contact=binding.contact,
    )


def location_targets(uri: SipURI, store: LocationService, depth: int = 0) -> list[TargetURI]:
    """§16.5: the location service's contacts for the address-of-record ``uri``, best q first.

    Looked up as the registrar stores it (:func:`canonical_aor`: no port, no
    parameters), then, for a Request-URI with a port, under the AOR with its
    port: the key of bindings restored from a database written before AORs
    lost their port (the phone's next REGISTER moves them).
    """
    keys = [canonical_aor(uri)]
    if uri.port is not None:
        keys.append(str(uri.aor()))
    if uri.scheme.lower() == "sips":  # the same user as its sip: form (RFC 5630); the branch keeps it on TLS
        keys.append(canonical_aor(uri.with_(scheme="sip")))
    for key in keys:
        bindings = store.lookup(key)
        if bindings:
            out = [t for t in (target_from_binding(b, depth) for b in bindings) if t is not None]
            return sorted(one_flow_per_instance(out, bindings), key=lambda t: -t.q)
    return []


def one_flow_per_instance(targets: list[TargetURI], bindings: Sequence[Binding]) -> list[TargetURI]:
    """RFC 5626 §7: one flow of each user agent instance at a time; its other flows become ``alternates``.

    ``targets`` are those of ``bindings`` in lookup order (highest q, then
    the most recently refreshed first), so the flow the phone registered on
    last is tried first.  Targets that are not flow-bound stay as they are.
    """
    instances = {b.contact: b.instance for b in bindings if b.flow_bound and b.instance is not None}
    first: dict[str, int] = {}
    out: list[TargetURI] = []
    for target in targets:
        instance = instances.get(target.contact) if target.flow_bound else None
        if instance is None:
            out.append(target)
        elif instance not in first:
            first[instance] = len(out)
            out.append(target)
        else:
            at = first[instance]
            out[at] = replace(out[at], alternates=(*out[at].alternates, target))
    return out


def group_by_q(targets: Iterable[TargetURI]) -> list[list[TargetURI]]:
    """Split targets, already in order, into groups of equal q: tried one group after the other.

    The tutorial's ``proxy.setParallel(false)`` tries contacts one at a
    time; RFC 3261 §16.6 lets q-values decide: equal q in parallel, a lower
    q only after every higher-q branch failed.
    """
    groups: list[list[TargetURI]] = []
    for target in sorted(targets, key=lambda t: -t.q):
        if groups and groups[-1][0].q == target.q:
            groups[-1].append(target)
        else:
            groups.append([target])
    return groups


def redirect_targets(response: Response, depth: int) -> list[TargetURI]:
    """§16.5/§16.7 step 4: the SIP Contacts of a 3xx, best q first; malformed ones are skipped."""
    try:
        contacts = response.contacts
    except ParseError:
        return []
    if contacts == "*":
        return []
    out: list[TargetURI] = []
    for contact in contacts:
        if not isinstance(contact.uri, SipURI):
            continue
        out.append(TargetURI(uri=contact.uri, q=_q(contact), depth=depth))
    return sorted(out, key=lambda t: -t.q)


def _q(contact: NameAddr) -> float:
    """The Contact's q (§20.10), 1.0 when absent or not a qvalue: a bad q in a 3xx does not lose the target."""
    try:
        q = contact.q
    except ParseError:
        return 1.0
    return 1.0 if q is None else q


def unique(targets: Sequence[TargetURI], tried: list[SipURI]) -> list[TargetURI]:
    """Targets whose URI is not in ``tried`` (nor twice in ``targets``), by §19.1.4 comparison."""
    out: list[TargetURI] = []
    seen = list(tried)
    for target in targets:
        if target.uri in seen:
            continue
        seen.append(target.uri)
        out.append(target)
    return out
