# -*- test-case-name: tests.test_proxy_branch -*-
"""One branch of a response context (RFC 3261 §16.6 steps 7-11, §16.8, §16.9, §9.1; RFC 3263 §4.3).

A :class:`Branch` forwards the request to one target of the target set:
§16.6 steps 1-7 once (:func:`~sipproxy.proxy.forward.forward_copy`), then
the next hop is resolved into an ordered list of addresses (RFC 3263 §4.2)
and tried one after the other: each attempt is a new client transaction
with a new branch id in our Via (§16.6 step 8), and a transport error
(§16.9) or a timeout with no response at all (Timer B/F, §16.8) moves on to
the next address (RFC 3263 §4.3), and so does a 503 (§4.3; RFC 3261
§21.5.4).  A target that answered 503 with ``Retry-After`` is put aside for
that long, one that timed out for 32 s, in the proxy's
:class:`~sipproxy.proxy.greylist.GreyList`: other calls try it last.  The
response context hears of the branch once: its responses, or one failure
when no address is left.  A request that failed over is one info line
saying what was tried ("INVITE sip:bob@other.example: SRV
_sip._udp.other.example -> sip1.other.example:5060 503 (Retry-After 30),
sip2.other.example:5060 -> 200").

A binding reached over the TCP/TLS flow its REGISTER came on is sent there
while the connection is open; once it has closed, the Contact is tried
instead, and if that fails too the phone is out of reach: 480, with one
warning that names the address-of-record and the contact.

A flow-bound binding (RFC 5626 outbound, or a WebSocket phone) is reached
over its flow only: when that flow is gone (its connection closed, a
transport error on it, or a ``430 Flow Failed`` from beyond it) the
binding is dropped (``Environment.flow_failed``, RFC 5626 §7) and the
branch tries the same instance's next flow (``TargetURI.alternates``);
with none left it fails 480, "Flow to the phone is gone".  Our
Record-Route carries the flow tokens of such flows (RFC 5626 §5.2,
:func:`~sipproxy.proxy.routing.record_route_values`).

What a branch and its response context use of the proxy is one narrow
value, :class:`Environment`, not the proxy itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from sipproxy.message import ParseError, Request, Response
from sipproxy.net import Clock, NextHop, Target, is_reliable
from sipproxy.proxy.failover import TIMEOUT_ASIDE, GreyList, Trail, retry_after
from sipproxy.proxy.forward import forward_copy, stamp
from sipproxy.proxy.outbound import FLOW_FAILED, flow_gone, incoming_flow_token, same_flow
from sipproxy.proxy.routing import is_sips_request
from sipproxy.proxy.targets import TargetURI
from sipproxy.proxy.validate import make_branch
from sipproxy.transaction import NO_USER, TransactionError

if TYPE_CHECKING:
    from sipproxy.proxy.core import ProxyLog, ProxySettings
    from sipproxy.proxy.responses import ResponseContext
    from sipproxy.proxy.routing import LocalAddress

__all__ = [
    "FLOW_GONE",
    "SIPS_OVER_TLS_ONLY",
    "Branch",
    "Environment",
    "FlowOpen",
    "Resolve",
    "SendStateless",
    "Transactions",
    "guarded",
    "reachable",
]

SendStateless = Callable[[Request | Response, Target | None], None]
Resolve = Callable[[NextHop | Target, Callable[[list[Target]], None]], None]
"""A next hop to its targets, best first (RFC 3263 §4); an empty list when nothing resolves."""
FlowOpen = Callable[[Target], bool]
"""Is the connection of this flow (transport, host, port) still open?"""

SIPS_OVER_TLS_ONLY = "Not reachable over TLS"
"""The reason phrase of the 480 for a sips: request whose target is reached only over UDP or TCP (§26.2.2)."""

FLOW_GONE = "Flow to the phone is gone"
"""The reason phrase of the 480 for a phone whose flow closed and whose Contact does not answer."""


class Transactions(Protocol):
    """The part of :class:`sipproxy.transaction.TransactionLayer` the proxy uses."""

    def send_request(self, request: Request, target: Target, owner: Any) -> Any: ...

    def find_invite_server_transaction(self, cancel: Request) -> Any: ...

    def build_cancel(self, invite: Request) -> Request: ...


@dataclass(frozen=True)
class Environment:
    """What a response context and its branches use of the proxy, and nothing else (h2's configuration value)."""

    clock: Clock
    transactions: Transactions
    settings: ProxySettings
    local: LocalAddress
    log: ProxyLog
    resolve: Resolve
    """Never raises; IP literals answered at once (``Proxy.resolve_hop``)."""
    send_stateless: SendStateless
    unique: Callable[[], str]
    """The per-branch unique part of a Via branch."""
    expand: Callable[[list[TargetURI]], list[TargetURI]]
    """Targets from a 3xx: our own addresses-of-record become their contacts."""
    release: Callable[[ResponseContext], None]
    """The context has sent its final response."""
    flow_open: FlowOpen | None = None
    """``None``: every flow is taken as open."""
    dialog_token: Callable[[str], str] | None = None
    """Call-ID -> the token our Record-Route carries (``None``: no token)."""
    greylist: GreyList | None = None
    """Targets put aside after a 503 with Retry-After or a timeout (``None``: none kept)."""
    finished: Callable[[ResponseContext, Response], None] | None = None
    """The context has sent ``response``, its final one: the proxy's call record (``None``: nobody listens)."""
    flow_token: Callable[[Target], str] | None = None
    """A flow (transport, peer address) -> its signed flow token for our Record-Route (``None``: no tokens)."""
    flow_failed: Callable[[TargetURI], None] | None = None
    """The flow of this flow-bound binding is gone: drop the binding (RFC 5626 §7; ``None``: keep it)."""


@contextmanager
def guarded(log: ProxyLog, what: str) -> Iterator[None]:
    """Nothing raised by the proxy escapes into the transaction layer or the reactor."""
    try:
        yield
    except Exception:
        log.failure("Bug in the proxy: {what}", what=what)


def reachable(target: TargetURI, flow_open: FlowOpen | None) -> TargetURI:
    """``target``, or its Contact alone when it came with a TCP/TLS flow whose connection is closed.

    Reusing the connection a REGISTER came on is right while it is open;
    once it is closed, its source port was the client's ephemeral port,
    where nothing listens, and the Contact is where the user agent said
    it can be reached.
    """
    flow = target.flow
    if flow is None or target.flow_bound or flow_open is None or not is_reliable(flow.transport) or flow_open(flow):
        return target
    return replace(target, flow=None)


class Branch:
    """One target being tried: the client transaction user of one forwarded request (§16.6-§16.9).

    ``settled`` means the response context no longer waits for this branch
    (it answered, failed, timed out, or was given up after a CANCEL);
    ``final`` is the first final response the transaction really received.
    ``request``, ``hop`` and ``client`` are those of the current attempt;
    ``targets`` the addresses of the next hop not tried yet.
    """

    def __init__(self, context: ResponseContext, target: TargetURI, breadth: int | None = None) -> None:
        self.context = context
        self.env: Environment = context.env
        self.target = target
        self.breadth = breadth if breadth is not None else context.breadth
        """RFC 5393 §5.3: this branch's share of the request's Max-Breadth, sent in its Max-Breadth."""
        self.forwarded: Request | None = None
        """§16.6 steps 1-7 done; every attempt stamps a copy (steps 4 and 8)."""
        self.gone_flow: Target | None = None
        """The closed flow this binding came on, when its Contact is tried instead."""
        self.targets: deque[Target] = deque()
        self.request: Request | None = None
        self.hop: Target | None = None
        self.next_hop: NextHop | Target | None = None
        """The next hop before resolving (RFC 3263 §4.2): the host the DNS was asked for."""
        self.client: Any = None
        self.provisional: Response | None = None
        self.final: Response | None = None
        self.settled = False
        self.cancel_wanted = False
        self.cancel_sent = False
        self.timer_c: Any = None
        self.cancel_timer: Any = None
        self.trail = Trail()
        """What was tried, for the log line of a request that failed over."""
        self.failure: tuple[int, str] | None = None
        """The status and reason the response context was given instead of a response (§16.8, §16.9)."""
        self.why = ""
        """That failure in the operator's words, for the call record."""

    def __repr__(self) -> str:
        return f"<Branch {self.target.uri} settled={self.settled}>"

    @property
    def is_invite(self) -> bool:
        return self.context.is_invite

    # -- sending (§16.6) -----------------------------------------------

    def start(self) -> None:
        """§16.6 steps 1-7, then resolve the next hop (RFC 3263 §4.2) and try its targets."""
        env = self.env
        if flow_gone(self.target, env.flow_open):
            self._flow_failed("its connection is closed")
            return
        target = reachable(self.target, env.flow_open)
        if target.flow is None and self.target.flow is not None:
            self.gone_flow = self.target.flow
        try:
            self.forwarded, hop = forward_copy(self.context.request, target, env.settings.default_max_forwards)
        except ParseError as error:
            self._fail(error.status, error.reason)
            return
        if self.breadth < self.context.breadth or self.context.request.has("max-breadth"):
            self.forwarded.set("Max-Breadth", str(self.breadth))  # RFC 5393 §5.3: forked, or passed on
        self.next_hop = hop
        env.resolve(hop, self._resolved)

    def _resolved(self, targets: list[Target] | None) -> None:
        if self.settled or self.forwarded is None:
            return  # cancelled while the name was being looked up
        if not targets:
            host = self.next_hop.host if self.next_hop is not None else "the next hop"
            self._give_up(503, "Next hop not found in DNS", f"DNS: {host} does not resolve")
            return
        self.trail.found(targets)
        greylist = self.env.greylist
        self.targets = deque(greylist.order(targets) if greylist is not None else targets)
        self._attempt()

    def _attempt(self) -> None:
        """§16.6 steps 4, 8, 10 and 11 for the next target: a new branch id, a new client transaction."""
        env, ctx = self.env, self.context
        assert self.forwarded is not None
        token = env.dialog_token(self.forwarded.call_id) if env.dialog_token and ctx.record_route else None
        flow_in = incoming_flow_token(env.flow_token, ctx.source, ctx.request) if ctx.record_route else None
        bound = self.target.flow if self.target.flow_bound and env.flow_token is not None else None
        why = ""
        status = 503
        # §26.2.2: a request with a SIPS Request-URI (the caller's, or the target's) leaves only over TLS.
        sips = is_sips_request(ctx.request) or is_sips_request(self.forwarded)
        while self.targets:
            hop = self.targets.popleft()
            if sips and hop.transport.upper() != "TLS":
                status, why = 480, SIPS_OVER_TLS_ONLY
                continue
            # The last address may take the forwarded copy itself: nothing is tried after it.
            request = self.forwarded.copy() if self.targets else self.forwarded
            branch = make_branch(ctx.loop, env.unique())
            flow_out = env.flow_token(hop) if bound is not None and same_flow(hop, bound) else None  # type: ignore[misc]
            stamp(
                request,
                env.local,
                branch,
                ctx.source.transport,
                hop.transport,
                ctx.record_route,
                token,
                flow_in=flow_in,
                flow_out=flow_out,
            )
            self.request, self.hop, self.provisional = request, hop, None
            try:
                self.client = env.transactions.send_request(request, hop, self)
            except TransactionError as error:
                why = f"Not sent: {error}"
                continue
            if self.is_invite and self.final is None and not self.settled:
                self._start_timer_c()  # §16.6 step 11
            return
        self._give_up(status, why, why)

    def _next_target(self) -> bool:
        """RFC 3263 §4.3: after a transport error or a timeout, the next address, if there is one and we still care."""
        if self.settled or self.final is not None or self.provisional is not None or not self.targets:
            return False
        self._stop_timers()
        self._attempt()
        return True

    def _give_up(self, status: int, reason: str, why: str) -> None:
        """No target of the next hop was reached: the failure for the response context (§16.8, §16.9)."""
        self._log_failover(f"{status} ({why or reason})", current=False)
        flow = self.gone_flow
        if flow is not None and not self.settled:
            self.env.log.warn(
                "Cannot reach {aor} at {contact}: the {transport} connection its REGISTER came on "
                "({host}:{port}) is closed, and the Contact is out of reach ({why}); answering 480",
                aor=self.target.aor or str(self.target.uri),
                contact=str(self.target.uri),
                transport=flow.transport,
                host=flow.host,
                port=flow.port,
                why=why,
            )
            status, reason = 480, FLOW_GONE  # RFC 5626 §5.3: 430 (Flow Failed) once outbound is supported
            why = f"flow gone: the {flow.transport} connection of its REGISTER is closed, and the Contact: {why}"
        if not self.settled:
            self.why = why
        self._fail(status, reason)

    def _fail(self, status: int, reason: str) -> None:
        self._stop_timers()
        self.context.on_failure(self, status, reason)

    def _flow_failed(self, why: str) -> None:
        """RFC 5626 §7: this binding's flow is gone: drop the binding, try the instance's next flow, else 480."""
        env, target = self.env, self.target
        if env.flow_failed is not None and target.aor is not None:
            with guarded(env.log, "dropping the binding of a failed flow"):
                env.flow_failed(target)
        flow = target.flow
        assert flow is not None
        if self.settled or self.final is not None:
            return
        if target.alternates:
            following, *rest = target.alternates
            env.log.info(
                "{aor}: the {transport} flow of {contact} ({host}:{port}) is gone ({why}); trying its next flow {next}",
                aor=target.aor or str(target.uri),
                transport=flow.transport,
                contact=str(target.uri),
                host=flow.host,
                port=flow.port,
                why=why,
                next=str(following.uri),
            )
            self._stop_timers()
            self.target = replace(following, alternates=tuple(rest))
            self.forwarded, self.targets, self.request, self.hop, self.client = None, deque(), None, None, None
            self.provisional = None
            self.trail = Trail()
            self.start()
            return
        if target.aor is None:  # the flow of our Route's flow token (RFC 5626 §5.3), in a dialog
            self.why = f"flow gone: the {flow.transport} flow {flow.host}:{flow.port} of the dialog ({why})"
            self._fail(*FLOW_FAILED)
            return
        env.log.warn(
            "Cannot reach {aor} at {contact}: the {transport} flow it registered on ({host}:{port}) is gone "
            "({why}; RFC 5626 §5.3); answering 480",
            aor=target.aor or str(target.uri),
            contact=str(target.uri),
            transport=flow.transport,
            host=flow.host,
            port=flow.port,
            why=why,
        )
        self.why = f"flow gone: the {flow.transport} flow it registered on ({why})"
        self._fail(480, FLOW_GONE)

    # -- ClientTransactionUser (§16.7 steps 1-2) -------------------------

    def response_received(self, ctx: Any, response: Response) -> None:
        with guarded(self.env.log, "response to a branch"):
            if len(response.vias) < 2:
                # §16.7 step 3: no Via left once ours is gone -> meant for us, never forwarded.
                self.env.log.warn(
                    "Dropped a {status} from {host}:{port} without the caller's Via",
                    status=response.status,
                    host=ctx.target.host,
                    port=ctx.target.port,
                )
                if response.status >= 200 and self.final is None:
                    self._stop_timers()
                    self.context.on_failure(self, 502, "Bad Gateway")
                return
            if response.status < 200:
                self._provisional(response)
            elif response.status == 430 and self.target.flow_bound and self.final is None:
                self._flow_failed("430 Flow Failed from beyond it")  # RFC 5626 §7
            elif response.status != 503 or not self._fail_over_503(response):
                self._final(response)

    def timed_out(self, ctx: Any) -> None:
        """§16.8: a timeout is a 408 for the response context, once no other address is left."""
        with guarded(self.env.log, "branch timeout"):
            self._put_aside(TIMEOUT_ASIDE)
            self._tried("timeout")
            if self.final is None and not self._next_target():
                self._stop_timers()
                self._give_up(408, "Request Timeout", "no answer")

    def terminated(self, ctx: Any) -> None:
        """A client transaction of this branch is over: the response context may be done with its branches."""
        if ctx is self.client:
            self.context.branch_over()

    @property
    def over(self) -> bool:
        """Nothing more can come to this branch: it settled and its last transaction ended (or it sent none)."""
        return self.settled and (self.client is None or self.client.terminated)

    def transport_failed(self, ctx: Any, reason: str) -> None:
        """§16.9: a transport error is a 503 for the response context, once no other address is left."""
        with guarded(self.env.log, "branch transport failure"):
            if self.target.flow_bound and self.final is None and self.provisional is None and not self.settled:
                self._flow_failed(f"transport error: {reason}")  # a flow has no other address to try
                return
            self._tried(reason)
            if self.final is None and not self._next_target():
                self._stop_timers()
                self._give_up(503, "Service Unavailable", f"transport error: {reason}")

    def _provisional(self, response: Response) -> None:
        if self.final is not None:
            return
        self.provisional = response
        if self.is_invite and response.status > 100 and self.timer_c is not None:
            self._start_timer_c()  # §16.7 step 2: 101-199 reset Timer C
        if self.cancel_wanted:
            self.send_cancel()  # §9.1: the CANCEL we held back until a provisional arrived
            return
        if not self.settled:
            self.context.on_provisional(self, response)

    def _final(self, response: Response) -> None:
        if self.final is None:
            self.final = response
            self._stop_timers()
            self._log_failover(str(response.status), current=True)
        self.context.on_final(self, response)

    # -- RFC 3263 §4.3: 503, the grey-list, the log line ------------------

    def _fail_over_503(self, response: Response) -> bool:
        """A 503: put its target aside for its Retry-After, and try the next target if there is one and we care."""
        seconds = retry_after(response)
        if seconds is not None:
            self._put_aside(seconds)
        cancelled = self.cancel_wanted or self.cancel_sent or self.context.closed
        if self.settled or self.final is not None or cancelled or not self.targets:
            return False
        self._tried("503" if seconds is None else f"503 (Retry-After {seconds})")
        self._stop_timers()
        self._attempt()
        return True

    def _put_aside(self, seconds: float) -> None:
        if self.env.greylist is not None and self.hop is not None:
            self.env.greylist.put_aside(self.hop, seconds)

    def _tried(self, outcome: str) -> None:
        if self.hop is not None and self.final is None and not self.settled:
            self.trail.failed_at(self.hop, outcome)

    def _log_failover(self, outcome: str, current: bool) -> None:
        """One info line for a request that failed over: what was tried, and how it ended."""
        fields = None if self.settled else self.trail.ending(self.hop, outcome, current)
        if fields is not None:
            request = self.context.request
            self.env.log.info(
                "{method} {uri}: {how}{tried}{ending}", method=request.method, uri=str(self.target.uri), **fields
            )

    # -- Timer C (§16.8) and CANCEL (§16.10, §9.1) -----------------------

    def _start_timer_c(self) -> None:
        if self.timer_c is not None and self.timer_c.active():
            self.timer_c.cancel()
        self.timer_c = self.env.clock.callLater(self.env.settings.timer_c, self._timer_c_fired)

    def _timer_c_fired(self) -> None:
        """§16.8: with a provisional, CANCEL the branch; without one, act as if it answered 408."""
        with guarded(self.env.log, "Timer C"):
            self.timer_c = None
            if self.final is not None:
                return
            if self.provisional is not None:
                self.send_cancel()
            elif not self.settled:
                self.cancel_wanted = True
                self.context.on_failure(self, 408, "Request Timeout")
            else:
                self.cancel_wanted = False  # given up long ago and still silent: stop caring

    def cancel(self) -> None:
        """Cancel this branch for the response context (§16.10, §16.7 step 10).

        Not yet sent: dropped.  A non-INVITE: no longer waited for (CANCEL
        does nothing useful there).  An INVITE with a provisional: CANCEL
        now and wait for its final response (normally 487).  Without one:
        the CANCEL waits for the first provisional (§9.1), and the context
        stops waiting for this branch.
        """
        if self.final is not None or self.settled:
            return
        if not self.is_invite or self.client is None:
            self.settled = True
            self._stop_timers()
            return
        if self.provisional is not None:
            self.send_cancel()
        else:
            self.cancel_wanted = True
            self.settled = True

    def send_cancel(self) -> None:
        """§9.1: a CANCEL for this branch's INVITE, to the same hop, once."""
        if self.cancel_sent or self.final is not None or self.request is None or self.hop is None:
            return
        self.cancel_sent = True
        env = self.env
        try:
            cancel = env.transactions.build_cancel(self.request)
            env.transactions.send_request(cancel, self.hop, NO_USER)  # its response tells us nothing (§9.1)
        except TransactionError as error:
            env.log.warn("Could not CANCEL {uri}: {error}", uri=self.request.uri_text, error=str(error))
        self.cancel_timer = env.clock.callLater(env.settings.cancel_wait, self._cancel_expired)

    def _cancel_expired(self) -> None:
        """§9.1: no final response 64*T1 after our CANCEL: consider the INVITE cancelled (a 408 here)."""
        with guarded(self.env.log, "CANCEL wait"):
            self.cancel_timer = None
            if self.final is None:
                self._stop_timers()
                self.context.on_failure(self, 408, "Request Timeout")

    def _stop_timers(self) -> None:
        for timer in (self.timer_c, self.cancel_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.timer_c = self.cancel_timer = None
