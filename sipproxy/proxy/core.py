# -*- test-case-name: tests.test_proxy_core -*-
"""The stateful proxy (RFC 3261 §16): the tutorial's ProxyServer, with the container's part done here.

``handle_request`` runs, for every request the stack hands over:

- ACK (an ACK for a 2xx, which matched no transaction): §16.3 checks,
  §16.4, then forwarded statelessly along its Route or Request-URI (§16.11).
- CANCEL: §16.10, answered here and applied to the INVITE's response context.
- everything else: §16.3 validation, the ``authorize`` hook (§16.3 step 6),
  §16.4 Route preprocessing, §16.5 targets, then a :class:`ResponseContext`
  that forwards to each target (§16.6) and picks the response (§16.7).

The tutorial's ``doInvite`` in RFC terms: an own-domain Request-URI with
registered contacts -> ``proxyTo(targets)`` with Record-Route, 3xx recursion
and q-ordered (sequential) groups; otherwise "do our best" -> ``proxyTo(callee)``.
Here an own-domain user with no contact gets 480 instead: the location
service is the authority for our domains (§16.5).

No Twisted here: time comes from the injected clock, DNS from the injected
``resolve`` (a next hop to its ordered targets, RFC 3263 §4.2), sending from
the transaction layer and ``send_stateless``.  Response contexts and their
branches see the proxy only through :class:`~sipproxy.proxy.branch.Environment`.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Container
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sipproxy.calls import CallObserver
from sipproxy.errors import SipError
from sipproxy.flowtoken import Flow, FlowTokens
from sipproxy.locality import canonical_aor
from sipproxy.location import LocationService
from sipproxy.message import ParseError, Request, Response, SipURI, make_response
from sipproxy.message.uri import is_ip_address
from sipproxy.net import Clock, NamedTarget, NextHop, Resolved, Source, Target
from sipproxy.proxy.branch import (
    Environment,
    FlowOpen,
    Resolve,
    SendStateless,
    Transactions,
    guarded,
    reachable,
)
from sipproxy.proxy.explain import explain_route
from sipproxy.proxy.failover import GreyList
from sipproxy.proxy.forward import RECORD_ROUTE_METHODS, add_via, forward_copy
from sipproxy.proxy.outbound import route_flow
from sipproxy.proxy.record import context_record, is_recorded, refused_record
from sipproxy.proxy.responses import ResponseContext
from sipproxy.proxy.routing import LocalAddress, Locality, preprocess_routing, top_route
from sipproxy.proxy.targets import TargetURI, group_by_q, location_targets
from sipproxy.proxy.validate import SUPPORTED_SCHEMES, check_syntax, is_looped, loop_part, make_branch, validate_request
from sipproxy.randomness import random_hex
from sipproxy.transaction import TransactionError

__all__ = ["Proxy", "ProxyLog", "ProxySettings"]


@dataclass(frozen=True)
class ProxySettings:
    """What the proxy does, as a value (h2's ``H2Configuration``)."""

    timer_c: float = 180.0
    """§16.6 step 11: Timer C for INVITE branches, > 3 minutes."""
    max_branches: int = 16
    """Targets tried per request, including those found by 3xx recursion."""
    max_recursion: int = 3
    """How many 3xx deep we follow Contacts."""
    record_route: bool = True
    """Stay on the dialog's path (§16.6 step 4) for the methods in ``RECORD_ROUTE_METHODS``."""
    default_max_forwards: int = 70
    """§16.6 step 3: Max-Forwards for a request that has none."""
    cancel_wait: float = 32.0
    """§9.1: how long a CANCELled branch may stay without a final response (64*T1)."""
    extensions: frozenset[str] = field(default_factory=frozenset)
    """Option tags we accept in Proxy-Require (§16.3 step 5); none by default."""
    max_breadth: int = 60
    """RFC 5393 §5.3: the most concurrent branches of one request (its Max-Breadth, or 60, is lowered to it)."""


class ProxyLog(Protocol):
    """The three calls the proxy makes on its logger (``twisted.logger.Logger`` fits)."""

    def info(self, format: str, **kwargs: object) -> None: ...

    def warn(self, format: str, **kwargs: object) -> None: ...

    def failure(self, format: str, **kwargs: object) -> None: ...


class _NullLog:
    def info(self, format: str, **kwargs: object) -> None:
        pass

    def warn(self, format: str, **kwargs: object) -> None:
        pass

    def failure(self, format: str, **kwargs: object) -> None:
        pass


class ServerTransaction(Protocol):
    request: Request

    def respond(self, response: Response) -> None: ...


Authorize = Callable[[Request, Source], Response | None]


class Proxy:
    """RFC 3261 §16 stateful proxy core; the stack's ``Core`` for every request not for the registrar."""

    def __init__(
        self,
        clock: Clock,
        transactions: Transactions,
        store: LocationService,
        domains: Container[str],
        local: LocalAddress,
        send_stateless: SendStateless,
        resolve: Resolve,
        settings: ProxySettings = ProxySettings(),
        authorize: Authorize | None = None,
        log: ProxyLog | None = None,
        flow_open: FlowOpen | None = None,
        dialog_token: Callable[[str], str] | None = None,
        on_call: CallObserver | None = None,
        flow_tokens: FlowTokens | None = None,
        flow_failed: Callable[[TargetURI], None] | None = None,
    ) -> None:
        self.clock = clock
        self.transactions = transactions
        self.store = store
        self.domains = domains
        self.local = local
        self.locality = Locality(local, domains)
        self.send_stateless = send_stateless
        self.resolve = resolve
        self.settings = settings
        self.authorize = authorize
        self.log: ProxyLog = log if log is not None else _NullLog()
        self.flow_open = flow_open
        """Is the connection to this TCP/TLS flow still open? (``None``: assume so.)"""
        self.dialog_token = dialog_token
        """Call-ID -> the token our Record-Route carries (``None``: no token)."""
        self.flow_tokens = flow_tokens
        """Signs and reads the flow tokens of our Record-Route (RFC 5626 §5.2; ``None``: none)."""
        self.on_call = on_call
        """Told of every finished call (:func:`~sipproxy.proxy.record.is_recorded`): the call log, the recent calls."""
        self._contexts: dict[int, ResponseContext] = {}
        self._counter = itertools.count(1)
        self.greylist = GreyList(clock)
        """Targets put aside after a 503 with Retry-After or a timeout, for every branch (RFC 3263 §4.3)."""
        self.env = Environment(
            clock=clock,
            transactions=transactions,
            settings=settings,
            local=local,
            log=self.log,
            resolve=self.resolve_hop,
            send_stateless=send_stateless,
            unique=self.unique,
            expand=self.expand,
            release=self.release,
            flow_open=flow_open,
            dialog_token=dialog_token,
            greylist=self.greylist,
            finished=self._finished if on_call is not None else None,
            flow_token=self._flow_token if flow_tokens is not None else None,
            flow_failed=flow_failed,
        )
        """What the response contexts and their branches see of the proxy."""

    # -- the stack's Core interface ---------------------------------------

    def handle_request(self, request: Request, source: Source, stx: Any) -> None:
        """Proxy one new request; never raises (bad input is answered, bugs answer 500)."""
        try:
            if request.method == "ACK":
                self._forward_ack(request, source)
            elif request.method == "CANCEL":
                self._cancel(request, stx)
            else:
                self._proxy(request, source, stx)
        except ParseError as error:
            response = self._answer(stx, request, error.status, error.reason)
            if response is not None and request.method not in ("ACK", "CANCEL"):
                self._refused(request, source, response, error.reason, forwarded=False)
        except SipError as refusal:  # RFC 5626 §5.3: a bad flow token (403), a flow that is gone (430)
            response = self._answer(stx, request, refusal.status, refusal.reason)
            if response is not None:
                self._refused(request, source, response, refusal.reason or "", forwarded=False)
        except Exception:
            self.log.failure("Bug while proxying {method} {uri}", method=request.method, uri=request.uri_text)
            self._answer(stx, request, 500, None)

    def handle_response(self, response: Response, source: Source) -> None:
        """§16.7 for a response that matched no client transaction: forward statelessly if the top Via is ours."""
        with self.guard("stray response"):
            try:
                vias = response.vias
            except ParseError:
                return
            if len(vias) < 2 or not self.locality.is_our_via(vias[0]):
                return  # not ours, or meant for us (§16.7 step 3): drop
            forwarded = response.copy()
            forwarded.pop_first("via")
            self.send_stateless(forwarded, None)

    def active_contexts(self) -> int:
        """Response contexts still waiting to send their final response."""
        return len(self._contexts)

    # -- §16.3 - §16.5, then the response context -----------------------

    def _proxy(self, received: Request, source: Source, stx: Any) -> None:
        to_tag = self.new_tag()
        response = validate_request(received, self.locality, self.settings.extensions, to_tag)  # §16.3 steps 1-5
        breadth = received.get("max-breadth")
        if response is None and breadth is not None and not breadth.strip().isdigit():  # RFC 5393 §5.3
            response = make_response(received, 400, "Invalid Max-Breadth", to_tag=to_tag)
        if response is None and self.authorize is not None:
            response = self.authorize(received, source)  # §16.3 step 6
        if response is not None:
            self._respond(stx, response)
            self._refused(received, source, response, _refusal(response), forwarded=False)
            return
        loop = loop_part(received)
        request = received.copy()  # the server transaction keeps the request as received
        ours = preprocess_routing(request, self.locality)  # §16.4
        flow = route_flow(ours, source, self.flow_tokens, self.flow_open)  # RFC 5626 §5.3
        groups = self._target_groups(request, flow)  # §16.5
        if not groups:
            response = make_response(received, 480, to_tag=to_tag)
            self._respond(stx, response)
            aor = canonical_aor(request.uri) if isinstance(request.uri, SipURI) else request.uri_text
            self._refused(received, source, response, f"no binding for {aor}")
            return
        record_route = self.settings.record_route and request.method in RECORD_ROUTE_METHODS
        context = ResponseContext(self.env, request, source, stx, loop, groups, record_route, to_tag)
        self._contexts[id(stx)] = context
        try:
            context.start()
        except Exception:
            self.release(context)
            raise

    def _target_groups(self, request: Request, flow: Target | None = None) -> list[list[TargetURI]]:
        """§16.5: our domain and no Route left -> the location service, in q groups; else the Request-URI.

        With no Route left and a ``flow`` from our Route's flow token (RFC
        5626 §5.3), the Request-URI goes over that flow.
        """
        uri = request.uri
        if not isinstance(uri, SipURI):
            raise ParseError("Unsupported URI Scheme", 416)
        route = top_route(request)
        if route is None and flow is not None:
            return [[TargetURI(uri=uri, flow=flow, flow_bound=True)]]
        if route is None and self.locality.is_us(uri):
            return group_by_q(location_targets(uri, self.store))
        return [[TargetURI(uri=uri)]]

    def expand(self, targets: list[TargetURI]) -> list[TargetURI]:
        """Targets found by recursion: one of our own addresses-of-record becomes its registered contacts."""
        out: list[TargetURI] = []
        for target in targets:
            if self.locality.is_us(target.uri):
                out.extend(location_targets(target.uri, self.store, target.depth))
            else:
                out.append(target)
        return out

    def release(self, context: ResponseContext) -> None:
        """The context sent its final response: CANCELs and late 2xx need no table entry."""
        if self._contexts.get(id(context.stx)) is context:
            del self._contexts[id(context.stx)]

    # -- routing explain ---------------------------------------------------------

    def explain(self, uri: str, from_: str = "", method: str = "INVITE", authorizes: bool = False) -> dict[str, Any]:
        """What §16.3-§16.6 would do with this request, without sending anything (:mod:`~sipproxy.proxy.explain`).

        ``authorizes``: the ``authorize`` hook asks for credentials (``--users``).
        """
        return explain_route(
            uri,
            from_,
            method,
            locality=self.locality,
            store=self.store,
            extensions=self.settings.extensions,
            record_route=self.settings.record_route,
            default_max_forwards=self.settings.default_max_forwards,
            flow_open=self.flow_open,
            authorizes=authorizes,
        )

    # -- the call record -------------------------------------------------------

    def _finished(self, context: ResponseContext, final: Response) -> None:
        """A response context sent its final response: its record to ``on_call`` (never raises)."""
        if self.on_call is None or not is_recorded(context.request, final.status):
            return
        with self.guard("call record"):
            self.on_call(context_record(context, final, self.clock.seconds()))

    def _refused(self, request: Request, source: Source, response: Response, why: str, forwarded: bool = True) -> None:
        """The proxy answered ``request`` itself (§16.3, §16.5): its record to ``on_call``.

        ``forwarded``: False when refused before the target set was looked for (:func:`is_recorded`).
        """
        if self.on_call is None or not is_recorded(request, response.status, forwarded):
            return
        with self.guard("call record"):
            self.on_call(refused_record(request, source, response, why, self.clock.seconds()))

    # -- §16.10 CANCEL -------------------------------------------------------

    def _cancel(self, cancel: Request, stx: Any) -> None:
        """§16.10: 200 at once when the INVITE is known, then cancel its branches; 481 otherwise."""
        check_syntax(cancel)
        invite_stx = self.transactions.find_invite_server_transaction(cancel)
        if invite_stx is None:
            self._answer(stx, cancel, 481, None)
            return
        context = self._contexts.get(id(invite_stx))
        to_tag = context.to_tag if context is not None else self.new_tag()
        self._respond(stx, make_response(cancel, 200, to_tag=to_tag))
        if context is not None:
            context.cancel()

    # -- ACK for a 2xx: stateless (§16.11 for this one method) -------------

    def _forward_ack(self, ack: Request, source: Source) -> None:
        """Forward an ACK that matched no transaction along its Route set; drop it when it cannot go anywhere."""
        check_syntax(ack)
        if ack.uri.scheme not in SUPPORTED_SCHEMES or ack.max_forwards == 0 or is_looped(ack, self.locality):
            return
        loop = loop_part(ack)
        request = ack.copy()
        ours = preprocess_routing(request, self.locality)
        try:
            flow = route_flow(ours, source, self.flow_tokens, self.flow_open)  # RFC 5626 §5.3
        except SipError:
            return  # a forged token, or a flow that is gone: an ACK gets no answer
        groups = self._target_groups(request, flow)
        if not groups:
            return
        target = reachable(groups[0][0], self.flow_open)
        forwarded, hop = forward_copy(request, target, self.settings.default_max_forwards)
        seed = f"{ack.top_via.branch}\x00{forwarded.uri_text}".encode("utf-8", "surrogateescape")
        branch = make_branch(loop, hashlib.sha256(seed).hexdigest()[:16])

        def resolved(targets: list[Target]) -> None:
            if targets:  # no transaction, so no failover: the first one (§16.11), on the transport DNS chose
                add_via(forwarded, self.local, targets[0].transport, branch)
                self.send_stateless(forwarded, targets[0])

        self.resolve_hop(hop, resolved)

    # -- helpers ----------------------------------------------------------

    def resolve_hop(self, hop: NextHop | Target, callback: Callable[[list[Target]], None]) -> None:
        """The targets of ``hop`` through the injected ``resolve`` (RFC 3263 §4); an IP literal is its own target.

        Never raises: a resolver that fails gives no target.  What the
        resolver says of how it found them (:class:`Resolved`) is kept.
        """
        host = hop.host.strip("[]")
        if is_ip_address(host):
            callback(Resolved([Target(hop.transport, host, hop.port)]))
            return

        def done(targets: list[Target] | None) -> None:
            with self.guard("DNS answer"):
                found = [_target(t) for t in targets or ()]
                how, names = getattr(targets, "how", ""), getattr(targets, "names", {})
                labels = {t: names[o] for t, o in zip(found, targets or (), strict=True) if o in names}
                callback(Resolved(found, how, labels))

        try:
            self.resolve(hop, done)
        except Exception:
            self.log.failure("Resolving {host} failed", host=host)
            callback([])

    def _flow_token(self, flow: Target) -> str:
        """RFC 5626 §5.2: the token of ``flow`` (our listener for its transport, the peer's address)."""
        assert self.flow_tokens is not None
        local = self.local.hostport_for(flow.transport)
        return self.flow_tokens.encode(Flow(flow.transport.upper(), local, flow.host, flow.port))

    def unique(self) -> str:
        """The per-branch unique part of our Via branch: a counter, and 32 random bits against forged responses."""
        return f"{next(self._counter):x}{random_hex(4)}"

    @staticmethod
    def new_tag() -> str:
        return random_hex(4)

    def guard(self, what: str) -> AbstractContextManager[None]:
        """Nothing raised by the proxy escapes into the transaction layer or the reactor."""
        return guarded(self.log, what)

    def _respond(self, stx: Any, response: Response) -> None:
        if stx is None:
            return
        try:
            stx.respond(response)
        except TransactionError as error:
            self.log.warn("Could not answer {status}: {error}", status=response.status, error=str(error))

    def _answer(self, stx: Any, request: Request, status: int, reason: str | None) -> Response | None:
        if stx is None or request.method == "ACK":
            return None
        try:
            response = make_response(request, status, reason, to_tag=self.new_tag())
        except Exception:
            self.log.failure("Cannot build a {status} response", status=status)
            return None
        self._respond(stx, response)
        return response


def _refusal(response: Response) -> str:
    """Why the proxy answered a request itself, in the call log's words (§16.3)."""
    if response.status in (401, 407):
        return "credentials requested"
    return f"refused by the proxy ({response.reason})" if response.reason else "refused by the proxy"


def _target(found: Target) -> Target:
    """A resolved target as a plain :class:`Target`, keeping a TLS target's name (:class:`NamedTarget`)."""
    if isinstance(found, NamedTarget):
        return found._replace(host=found.host.strip("[]"))
    return Target(found.transport, found.host.strip("[]"), found.port)
