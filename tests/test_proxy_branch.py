"""A branch fails over between the targets of its next hop (RFC 3263 §4.3), and a closed TCP flow gives 480.

The proxy runs on the real transaction layer, on a ``task.Clock``, over a
recording transport that can refuse sends to some addresses; the DNS is a
dict.  The caller must see one final answer whatever happened to the
attempts behind it.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock

try:
    from tests.proxy_helpers import ALICE, DOMAINS, LOCAL, RecordingLog, binding, make_request
except ImportError:  # pragma: no cover
    from proxy_helpers import ALICE, DOMAINS, LOCAL, RecordingLog, binding, make_request  # type: ignore[no-redef]

from sipproxy.location import LocationStore
from sipproxy.message import Request, Response, make_response, parse_message
from sipproxy.net import Resolved, Source, Target
from sipproxy.proxy import Proxy, ProxySettings
from sipproxy.proxy.branch import FLOW_GONE, Environment
from sipproxy.proxy.responses import ResponseContext
from sipproxy.proxy.targets import TargetURI
from sipproxy.proxy.validate import loop_part
from sipproxy.transaction import TransactionLayer, build_cancel
from sipproxy.transaction.testing import RecordingTransport

V4 = "198.51.100.10"
V6 = "2001:db8::10"
OTHER_V4 = "198.51.100.11"


@dataclass
class RefusingTransport(RecordingTransport):
    """Records every request; those to an address in ``refuse`` fail with a transport error."""

    refuse: set[str] = field(default_factory=set)

    def send_request(self, request: Request, target: Target, on_error: Callable[[str], None]) -> None:
        super().send_request(request, target, on_error)
        if target.host in self.refuse:
            on_error(f"connection to {target.host} refused")


class _Stack:
    proxy: Proxy

    def request_received(self, request: Request, source: Source, stx: Any) -> None:
        self.proxy.handle_request(request, source, stx)

    def response_received(self, response: Response, source: Source) -> None:
        self.proxy.handle_response(response, source)


class Server:
    """The proxy on the real transaction layer; ``dns`` maps names to addresses, best first."""

    def __init__(self, dns: dict[str, list[str]] | None = None, flow_open: Callable[[Target], bool] | None = None):
        self.clock = Clock()
        self.transport = RefusingTransport(self.clock)
        stack = _Stack()
        self.layer = TransactionLayer(self.clock, self.transport, stack)
        self.store = LocationStore(Clock())
        self.dns = dns or {}
        self.log = RecordingLog()
        self.proxy = Proxy(
            self.clock,
            self.layer,
            self.store,
            DOMAINS,
            LOCAL,
            lambda message, target: None,
            self.resolve,
            ProxySettings(),
            log=self.log,
            flow_open=flow_open,
        )
        stack.proxy = self.proxy

    def resolve(self, hop: Target, found: Callable[[list[Target]], None]) -> None:
        found([hop._replace(host=address) for address in self.dns.get(hop.host, [])])

    def incoming(self, message: Request | Response, source: Source = ALICE) -> None:
        data = parse_message(message.to_bytes())
        if isinstance(data, Request):
            self.layer.receive_request(data, source)
        else:
            self.layer.receive_response(data, source)

    def sent(self, method: str) -> list[tuple[Request, Target]]:
        return [(s.request, s.target) for s in self.transport.requests if s.request.method == method]

    def first_sends(self, method: str) -> list[tuple[Request, Target]]:
        """One entry per client transaction (retransmissions left out)."""
        out: list[tuple[Request, Target]] = []
        for request, target in self.sent(method):
            if all(request.top_via.branch != seen.top_via.branch for seen, _ in out):
                out.append((request, target))
        return out

    def answers(self) -> list[int]:
        return [r.status for r, source in self.transport.responses if source == ALICE]

    def finals(self) -> list[int]:
        return sorted({s for s in self.answers() if s >= 200})


def _call(server: Server, method: str = "INVITE") -> Request:
    request = make_request(method, "sip:carol@far.example.net", to="Carol <sip:carol@far.example.net>")
    server.incoming(request)
    return request


def test_a_transport_error_moves_on_to_the_next_address_with_a_new_branch() -> None:
    server = Server(dns={"far.example.net": [V4, V6]})
    server.transport.refuse = {V4}
    _call(server)
    server.clock.advance(0)  # the transport error reaches the branch
    (first, first_target), (second, second_target) = server.first_sends("INVITE")
    assert [first_target.host, second_target.host] == [V4, V6]  # IPv4 first, as the resolver ordered them
    assert first.top_via.branch != second.top_via.branch  # §16.6 step 8: a new client transaction
    assert first.uri_text == second.uri_text == "sip:carol@far.example.net"
    assert second.get_all("record-route") == first.get_all("record-route")
    server.incoming(make_response(second, 180, to_tag="c1"), Source("UDP", V6, 5060))
    server.incoming(make_response(second, 200, to_tag="c1"), Source("UDP", V6, 5060))
    assert server.finals() == [200]  # one final answer, the second address's


def test_a_timeout_with_no_response_at_all_moves_on_to_the_next_address() -> None:
    server = Server(dns={"far.example.net": [V4, OTHER_V4]})
    _call(server)
    assert [t.host for _, t in server.first_sends("INVITE")] == [V4]
    server.clock.advance(31.9)
    assert [t.host for _, t in server.first_sends("INVITE")] == [V4]
    server.clock.advance(0.2)  # Timer B = 64*T1
    (_, _), (second, target) = server.first_sends("INVITE")
    assert target.host == OTHER_V4
    assert [s for s in server.answers() if s >= 200] == []  # the caller has heard nothing final yet
    server.incoming(make_response(second, 486, to_tag="c2"), Source("UDP", OTHER_V4, 5060))
    assert server.finals() == [486]


def test_when_every_address_fails_the_caller_gets_one_final_response() -> None:
    server = Server(dns={"far.example.net": [V4, V6]})
    server.transport.refuse = {V4, V6}
    _call(server, "MESSAGE")
    server.clock.advance(0)
    assert [t.host for _, t in server.first_sends("MESSAGE")] == [V4, V6]
    assert [s for s in server.answers() if s >= 200] == [500]  # §16.9's 503, which as best response becomes 500

    server = Server(dns={"far.example.net": [V4, V6]})
    _call(server, "MESSAGE")
    for _ in range(70):
        server.clock.advance(1)  # Timer F on each address in turn
    assert [t.host for _, t in server.first_sends("MESSAGE")] == [V4, V6]
    assert [s for s in server.answers() if s >= 200] == [408]
    assert server.proxy.active_contexts() == 0


def test_no_failover_once_the_address_has_answered() -> None:
    """A provisional shows the request arrived: a later timeout must not send it a second time elsewhere."""
    server = Server(dns={"far.example.net": [V4, V6]})
    _call(server, "MESSAGE")
    (request, _) = server.first_sends("MESSAGE")[0]
    server.incoming(make_response(request, 100), Source("UDP", V4, 5060))
    server.clock.advance(32)  # Timer F
    assert [t.host for _, t in server.first_sends("MESSAGE")] == [V4]
    assert [s for s in server.answers() if s >= 200] == [408]


def test_no_failover_after_the_caller_cancelled() -> None:
    server = Server(dns={"far.example.net": [V4, V6]})
    invite = _call(server)
    server.incoming(build_cancel(invite))
    assert 487 in server.answers()
    server.clock.advance(40)  # Timer B of the attempt nobody waits for any more
    assert [t.host for _, t in server.first_sends("INVITE")] == [V4]
    assert server.sent("CANCEL") == []  # no provisional: no CANCEL (§9.1)


def test_a_cancel_goes_to_the_address_that_took_the_invite() -> None:
    server = Server(dns={"far.example.net": [V4, V6]})
    server.transport.refuse = {V4}
    invite = _call(server)
    server.clock.advance(0)
    (_, _), (second, _) = server.first_sends("INVITE")
    server.incoming(make_response(second, 180, to_tag="c3"), Source("UDP", V6, 5060))
    server.incoming(build_cancel(invite))
    [(cancel, target)] = server.sent("CANCEL")
    assert target.host == V6 and cancel.top_via.branch == second.top_via.branch


# -- a phone registered over TCP whose connection is gone (issue 13 item 5) ----------------------

TCP_PHONE = binding(
    aor="sip:dave@example.test",
    contact="sip:dave@192.0.2.30:40111;transport=tcp",
    transport="TCP",
    source=("192.0.2.30", 40111),
)


def test_a_closed_flow_whose_contact_fails_is_480_and_the_log_names_aor_and_contact() -> None:
    flows: list[Target] = []
    server = Server(flow_open=lambda flow: flows.append(flow) or False)
    server.store.update(TCP_PHONE.aor, put=[TCP_PHONE])
    server.transport.refuse = {"192.0.2.30"}
    server.incoming(make_request("INVITE", "sip:dave@example.test", to="Dave <sip:dave@example.test>"))
    server.clock.advance(0)
    assert flows == [Target("TCP", "192.0.2.30", 40111)]
    [(_, target)] = server.first_sends("INVITE")
    assert target == Target("TCP", "192.0.2.30", 40111)  # the Contact, tried since the flow is closed
    assert [s for s in server.answers() if s >= 200] == [480]
    [final] = [r for r, _ in server.transport.responses if r.status == 480]
    assert final.reason == FLOW_GONE == "Flow to the phone is gone"
    [(level, fmt, fields)] = [e for e in server.log.events if "Cannot reach" in e[1]]
    assert level == "warn"
    assert fields["aor"] == "sip:dave@example.test"
    assert fields["contact"] == "sip:dave@192.0.2.30:40111;transport=tcp"


def test_a_closed_flow_whose_contact_times_out_is_480_too() -> None:
    server = Server(flow_open=lambda flow: False)
    server.store.update(TCP_PHONE.aor, put=[TCP_PHONE])
    server.incoming(make_request("MESSAGE", "sip:dave@example.test", to="Dave <sip:dave@example.test>"))
    server.clock.advance(32)
    assert [s for s in server.answers() if s >= 200] == [480]


def test_an_open_flow_is_used_and_a_failure_on_it_stays_a_transport_error() -> None:
    server = Server(flow_open=lambda flow: True)
    phone = binding(
        aor="sip:dave@example.test", contact="sip:dave@10.0.0.5:5060;transport=tcp", transport="TCP",
        source=("192.0.2.30", 40111),
    )  # fmt: skip
    server.store.update(phone.aor, put=[phone])
    server.transport.refuse = {"192.0.2.30"}
    server.incoming(make_request("MESSAGE", "sip:dave@example.test", to="Dave <sip:dave@example.test>"))
    server.clock.advance(0)
    [(_, target)] = server.first_sends("MESSAGE")
    assert target == Target("TCP", "192.0.2.30", 40111)
    assert [s for s in server.answers() if s >= 200] == [500]
    assert not [e for e in server.log.events if "Cannot reach" in e[1]]


# -- the narrow environment -------------------------------------------------------------------


def test_a_response_context_needs_only_its_environment() -> None:
    """No Proxy at all: the context and its branch run on an Environment of plain callables."""
    clock = Clock()
    transport = RefusingTransport(clock, refuse={V4})
    released: list[ResponseContext] = []
    layer = TransactionLayer(clock, transport, _Stack())
    counter = iter(range(1, 100))
    env = Environment(
        clock=clock,
        transactions=layer,
        settings=ProxySettings(),
        local=LOCAL,
        log=RecordingLog(),
        resolve=lambda hop, found: found([hop._replace(host=V4), hop._replace(host=V6)]),
        send_stateless=lambda message, target: None,
        unique=lambda: f"u{next(counter)}",
        expand=lambda targets: targets,
        release=released.append,
    )
    request = make_request("OPTIONS", "sip:carol@far.example.net")

    class Stx:
        def __init__(self) -> None:
            self.responses: list[Response] = []

        def respond(self, response: Response) -> None:
            self.responses.append(response)

    stx = Stx()
    target = TargetURI(uri=request.uri)  # type: ignore[arg-type]
    context = ResponseContext(env, request, ALICE, stx, loop_part(request), [[target]], False, "t1")
    context.start()
    clock.advance(0)
    assert [s.target.host for s in transport.requests] == [V4, V6]
    sent = transport.requests[-1].request
    layer.receive_response(parse_message(make_response(sent, 200, to_tag="c").to_bytes()), Source("UDP", V6, 5060))  # type: ignore[arg-type]
    assert [r.status for r in stx.responses] == [200]
    assert released == [context]


# -- RFC 3263 §4.3: a 503 fails over too, and the grey-list --------------------------------


def _call_n(server: Server, n: int, method: str = "INVITE") -> Request:
    request = make_request(
        method, "sip:carol@far.example.net", to="Carol <sip:carol@far.example.net>", call_id=f"call-{n}@192.0.2.7"
    )
    server.incoming(request)
    return request


def _sends(server: Server, call_id: str, method: str = "INVITE") -> list[tuple[Request, Target]]:
    return [(r, t) for r, t in server.first_sends(method) if r.call_id == call_id]


def _answer(server: Server, request: Request, target: Target, status: int, *headers: str) -> None:
    response = make_response(request, status, to_tag="c1")
    for header in headers:
        name, _, value = header.partition(": ")
        response.add(name, value)
    server.incoming(response, Source("UDP", target.host, target.port))


def _infos(server: Server) -> list[str]:
    return [fmt.format(**kw) for level, fmt, kw in server.log.events if level == "info"]


def test_a_503_moves_on_to_the_next_address_and_the_caller_sees_only_the_final_answer() -> None:
    server = Server(dns={"far.example.net": [V4, OTHER_V4]})
    _call_n(server, 1)
    [(first, to_first)] = _sends(server, "call-1@192.0.2.7")
    _answer(server, first, to_first, 503, "Retry-After: 30")
    (_, _), (second, to_second) = _sends(server, "call-1@192.0.2.7")
    assert to_second.host == OTHER_V4 and second.top_via.branch != first.top_via.branch
    assert [s for s in server.answers() if s >= 200] == []  # the 503 is not forwarded
    _answer(server, second, to_second, 200)
    assert server.finals() == [200]


def test_a_503_with_retry_after_puts_that_target_aside_for_other_calls_that_long() -> None:
    server = Server(dns={"far.example.net": [V4, OTHER_V4]})
    _call_n(server, 1)
    [(first, to_first)] = _sends(server, "call-1@192.0.2.7")
    _answer(server, first, to_first, 503, "Retry-After: 30 (maintenance)")
    _call_n(server, 2)
    assert [t.host for _, t in _sends(server, "call-2@192.0.2.7")] == [OTHER_V4]  # V4 is aside
    server.clock.advance(30)
    _call_n(server, 3)
    assert [t.host for _, t in _sends(server, "call-3@192.0.2.7")] == [V4]  # back after 30 s


def test_a_timeout_puts_that_target_aside_for_32_seconds() -> None:
    server = Server(dns={"far.example.net": [V4, OTHER_V4]})
    _call_n(server, 1, "MESSAGE")
    server.clock.advance(32)  # Timer F on V4
    assert [t.host for _, t in _sends(server, "call-1@192.0.2.7", "MESSAGE")] == [V4, OTHER_V4]
    _call_n(server, 2, "MESSAGE")
    assert [t.host for _, t in _sends(server, "call-2@192.0.2.7", "MESSAGE")] == [OTHER_V4]
    server.clock.advance(32)
    _call_n(server, 3, "MESSAGE")
    assert [t.host for _, t in _sends(server, "call-3@192.0.2.7", "MESSAGE")][0] == V4


def test_a_target_aside_is_still_tried_when_nothing_else_is_left() -> None:
    """One failure never makes the domain unreachable: the only target is tried again, not refused."""
    server = Server(dns={"far.example.net": [V4]})
    _call_n(server, 1)
    [(first, to_first)] = _sends(server, "call-1@192.0.2.7")
    _answer(server, first, to_first, 503, "Retry-After: 300")
    assert server.finals() == [500]  # the lone 503, as a best response, becomes 500 (§16.7 step 6)
    _call_n(server, 2)
    [(again, to_again)] = _sends(server, "call-2@192.0.2.7")
    assert to_again.host == V4


def test_a_503_without_retry_after_fails_over_but_puts_nothing_aside() -> None:
    server = Server(dns={"far.example.net": [V4, OTHER_V4]})
    _call_n(server, 1)
    [(first, to_first)] = _sends(server, "call-1@192.0.2.7")
    _answer(server, first, to_first, 503)
    assert [t.host for _, t in _sends(server, "call-1@192.0.2.7")] == [V4, OTHER_V4]
    _call_n(server, 2)
    assert [t.host for _, t in _sends(server, "call-2@192.0.2.7")] == [V4]


def test_no_failover_on_a_503_after_the_caller_cancelled() -> None:
    server = Server(dns={"far.example.net": [V4, OTHER_V4]})
    invite = _call_n(server, 1)
    [(first, to_first)] = _sends(server, "call-1@192.0.2.7")
    _answer(server, first, to_first, 180)
    server.incoming(build_cancel(invite))
    _answer(server, first, to_first, 503, "Retry-After: 10")
    assert [t.host for _, t in _sends(server, "call-1@192.0.2.7")] == [V4]


def test_a_request_that_failed_over_is_one_info_line_with_what_was_tried() -> None:
    server = Server(dns={"far.example.net": [V4, V6, OTHER_V4]})

    def resolve(hop: Any, found: Callable[[list[Target]], None]) -> None:
        targets = [Target("UDP", V4, 5060), Target("UDP", V6, 5060), Target("UDP", OTHER_V4, 5080)]
        names = dict(zip(targets, ["sip1.far.example.net:5060"] * 2 + ["sip2.far.example.net:5080"], strict=True))
        found(Resolved(targets, "SRV _sip._udp.far.example.net", names))

    server.proxy.resolve = resolve
    server.transport.refuse = {V6}
    _call_n(server, 1)
    [(first, to_first)] = _sends(server, "call-1@192.0.2.7")
    _answer(server, first, to_first, 503, "Retry-After: 30")
    server.clock.advance(0)  # V6 refuses
    *_, (last, to_last) = _sends(server, "call-1@192.0.2.7")
    assert _infos(server) == []  # nothing until it is over
    _answer(server, last, to_last, 200)
    assert _infos(server) == [
        "INVITE sip:carol@far.example.net: SRV _sip._udp.far.example.net -> sip1.far.example.net:5060 "
        "(198.51.100.10) 503 (Retry-After 30), sip1.far.example.net:5060 (2001:db8::10) connection to 2001:db8::10 "
        "refused, "
        "sip2.far.example.net:5080 -> 200"
    ]


def test_a_request_that_failed_everywhere_says_so_in_one_line() -> None:
    server = Server(dns={"far.example.net": [V4, OTHER_V4]})
    _call_n(server, 1, "MESSAGE")
    server.clock.advance(32)
    server.clock.advance(32)
    assert server.finals() == [408]
    assert _infos(server) == [
        f"MESSAGE sip:carol@far.example.net: {V4}:5060 timeout, {OTHER_V4}:5060 timeout -> 408 (no answer)"
    ]


def test_a_request_that_did_not_fail_over_logs_nothing_here() -> None:
    server = Server(dns={"far.example.net": [V4, OTHER_V4]})
    _call_n(server, 1)
    [(first, to_first)] = _sends(server, "call-1@192.0.2.7")
    _answer(server, first, to_first, 200)
    assert _infos(server) == []


def test_a_finished_call_is_freed_as_its_transactions_end_without_the_garbage_collector() -> None:
    """Context, branch and client transaction hold each other while the call is set up; once the last transaction
    ends (Timer M, 32 s after the 2xx), nothing of the call is left for a full collection (``gctune``: ten minutes)."""
    server = Server(dns={"far.example.net": [V4]})
    gc.disable()
    try:
        _call(server)
        server.clock.advance(0)
        [(invite, _)] = server.first_sends("INVITE")
        [context] = server.proxy._contexts.values()
        alive = weakref.ref(context)
        [branch] = context.branches
        branch_alive = weakref.ref(branch)
        del context, branch
        server.incoming(make_response(invite, 200, to_tag="c1"), Source("UDP", V4, 5060))
        assert server.finals() == [200]
        server.clock.advance(31)
        assert alive() is not None  # Timer M: a retransmitted 2xx would still be forwarded
        server.clock.advance(2)
        assert alive() is None and branch_alive() is None
    finally:
        gc.enable()
