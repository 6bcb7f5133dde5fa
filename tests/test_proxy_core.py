"""The Proxy as the stack sees it: ACK and stray responses (stateless), robustness, and the real transaction layer."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

try:
    from tests.messages import make_response_bytes, parse_response
    from tests.proxy_helpers import ALICE, DOMAINS, LOCAL, Harness, binding, make_request
except ImportError:  # pragma: no cover
    from messages import make_response_bytes, parse_response  # type: ignore[no-redef]
    from proxy_helpers import ALICE, DOMAINS, LOCAL, Harness, binding, make_request  # type: ignore[no-redef]

from sipproxy.location import LocationStore
from sipproxy.message import Request, Response, make_response, parse_message
from sipproxy.proxy import Proxy
from sipproxy.proxy.validate import split_branch
from sipproxy.transaction import Source, Target, TransactionLayer, build_cancel
from sipproxy.transaction.testing import RecordingTransport

BOB = Source("UDP", "192.0.2.20", 5060)

# -- ACK for a 2xx: stateless, along the Route set -------------------------------------


def _ack(**kw: Any) -> Request:
    kw.setdefault("to", "Bob <sip:bob@example.test>;tag=b1")
    kw.setdefault("headers", ("Route: <sip:192.0.2.1:5060;lr>",))
    return make_request("ACK", "sip:bob@192.0.2.20:5062", **kw)


def test_ack_is_loose_routed_statelessly() -> None:
    h = Harness()
    h.send(_ack())
    ((ack, target),) = h.stateless
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert target == Target("UDP", "192.0.2.20", 5062)
    assert not ack.has("route")
    assert ack.max_forwards == 69
    assert len(ack.vias) == 2 and ack.top_via.host == "192.0.2.1"
    assert split_branch(ack.top_via.branch) is not None
    assert not ack.has("record-route")
    assert h.tx.sent == []


def test_ack_retransmission_gets_the_same_branch() -> None:
    h = Harness()
    h.send(_ack(branch="z9hG4bKack1"))
    h.send(_ack(branch="z9hG4bKack1"))
    h.send(_ack(branch="z9hG4bKack2"))
    branches = [m.top_via.branch for m, _ in h.stateless]
    assert branches[0] == branches[1] != branches[2]


def test_ack_follows_the_remaining_route() -> None:
    h = Harness()
    h.send(_ack(headers=("Route: <sip:192.0.2.1;lr>, <sip:192.0.2.99:5070;lr>",)))
    ((ack, target),) = h.stateless
    assert target == Target("UDP", "192.0.2.99", 5070)
    assert ack.get_all("route") == ["<sip:192.0.2.99:5070;lr>"]  # type: ignore[union-attr]


def test_ack_to_our_domain_without_route_goes_to_the_binding() -> None:
    h = Harness()
    h.register(binding())
    h.send(make_request("ACK", "sip:bob@example.test", to="Bob <sip:bob@example.test>;tag=b1"))
    ((ack, target),) = h.stateless
    assert target == Target("UDP", "192.0.2.20", 5060)
    assert ack.uri_text == "sip:bob@192.0.2.20:5060"  # type: ignore[union-attr]


def test_bad_acks_are_dropped_silently() -> None:
    h = Harness()
    h.send(_ack(max_forwards=0))
    h.send(make_request("ACK", "tel:+1555", to="B <sip:b@example.test>;tag=1"))
    h.send(make_request("ACK", "sip:nobody@example.test", to="B <sip:b@example.test>;tag=1"))
    h.send(_ack(headers=("Route: <sip:bad host;lr>",)))
    assert h.stateless == []
    assert h.log.failures == []


def test_ack_to_a_host_name_is_resolved() -> None:
    h = Harness(dns={"ua.example.net": "198.51.100.7"})
    h.send(make_request("ACK", "sip:bob@ua.example.net", to="B <sip:b@example.test>;tag=1"))
    ((_, target),) = h.stateless
    assert target == Target("UDP", "198.51.100.7", 5060)


# -- stray responses (§16.7 with no client transaction, §18.2.2) -----------------------


def _response(status: int, *vias: str) -> Response:
    """A response to Alice's INVITE with these Via lines, as it arrives from downstream."""
    return parse_response(
        make_response_bytes(
            status,
            "OK",
            via=vias,
            from_="<sip:alice@example.test>;tag=a1",
            to="<sip:bob@example.test>;tag=b1",
            call_id="c1",
        )
    )


def test_stray_2xx_retransmission_with_our_via_is_forwarded() -> None:
    h = Harness()
    h.proxy.handle_response(
        _response(200, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx", "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa"),
        BOB,
    )
    ((response, target),) = h.stateless
    assert target is None
    assert response.get_all("via") == ["SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa"]


def test_stray_response_not_for_us_is_dropped() -> None:
    h = Harness()
    h.proxy.handle_response(
        _response(200, "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKx", "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa"),
        BOB,
    )
    h.proxy.handle_response(_response(200, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx"), BOB)  # nothing below ours
    assert h.stateless == []


# -- never raise ---------------------------------------------------------------------------


def test_a_bug_answers_500_and_is_logged() -> None:
    h = Harness()

    def broken(aor: str) -> list[Any]:
        raise RuntimeError("boom")

    h.store.lookup = broken  # type: ignore[method-assign]
    stx = h.send(make_request("INVITE", "sip:bob@example.test"))
    assert stx.statuses == [500]
    assert h.log.failures


def test_a_bug_in_a_branch_callback_does_not_escape() -> None:
    h = Harness()
    h.register(binding())
    stx = h.send(make_request("INVITE", "sip:bob@example.test"))
    stx.respond = None  # type: ignore[assignment]  # calling it raises TypeError
    h.reply(h.branches()[0], 180)
    assert h.log.failures


def test_a_resolver_that_raises_fails_the_branch() -> None:
    h = Harness()

    def resolve(host: str, callback: Any) -> None:
        raise OSError("no resolver")

    h.proxy.resolve = resolve
    stx = h.send(make_request("MESSAGE", "sip:carol@elsewhere.example.net"))
    assert stx.statuses == [500]


# -- with the real transaction layer ---------------------------------------------------------


class _Stack:
    """The stack's dispatch, reduced to what reaches the proxy."""

    proxy: Proxy

    def request_received(self, request: Request, source: Source, stx: Any) -> None:
        self.proxy.handle_request(request, source, stx)

    def response_received(self, response: Response, source: Source) -> None:
        self.proxy.handle_response(response, source)


class _Real:
    def __init__(self) -> None:
        self.clock = Clock()
        self.transport = RecordingTransport(self.clock)
        self.stack = _Stack()
        self.layer = TransactionLayer(self.clock, self.transport, self.stack)
        self.store = LocationStore(Clock())
        self.stateless: list[tuple[Request | Response, Target | None]] = []
        self.proxy = Proxy(
            self.clock,
            self.layer,
            self.store,
            DOMAINS,
            LOCAL,
            self._send_stateless,
            lambda host, cb: cb(None),
        )
        self.stack.proxy = self.proxy
        self.store.update("sip:bob@example.test", put=[binding()])

    def _send_stateless(self, message: Request | Response, target: Target | None) -> None:
        self.stateless.append((message, target))
        if isinstance(message, Request) and target is not None:
            self.layer.send_stateless(message, target)

    def incoming(self, message: Request | Response, source: Source) -> None:
        data = parse_message(message.to_bytes())
        if isinstance(data, Request):
            self.layer.receive_request(data, source)
        else:
            self.layer.receive_response(data, source)

    def sent(self, method: str) -> list[Request]:
        return [s.request for s in self.transport.requests if s.request.method == method]

    def answers(self) -> list[int]:
        return [r.status for r, source in self.transport.responses if source == ALICE]


def test_real_layer_invite_180_200_ack_bye() -> None:
    r = _Real()
    invite = make_request("INVITE", "sip:bob@example.test", headers=("Contact: <sip:alice@192.0.2.7>",))
    r.incoming(invite, ALICE)
    (forwarded,) = r.sent("INVITE")
    assert forwarded.uri_text == "sip:bob@192.0.2.20:5060"
    assert r.transport.requests[0].target == Target("UDP", "192.0.2.20", 5060)
    r.incoming(make_response(forwarded, 180, to_tag="b1"), BOB)
    ok = make_response(forwarded, 200, to_tag="b1")
    ok.add("Contact", "<sip:bob@192.0.2.20:5060>")
    for value in forwarded.get_all("record-route"):
        ok.add("Record-Route", value)
    r.incoming(ok, BOB)
    assert r.answers() == [180, 200]
    final = [resp for resp, _ in r.transport.responses if resp.status == 200][0]
    assert final.get_all("via") == invite.get_all("via")
    assert final.get_all("record-route") == ["<sip:192.0.2.1:5060;lr>"]
    assert r.proxy.active_contexts() == 0
    # Bob's 200 is retransmitted: the client transaction (RFC 6026 Accepted) passes it on, statelessly
    r.incoming(ok, BOB)
    assert [m.status for m, _ in r.stateless if isinstance(m, Response)] == [200]
    # Alice's ACK for the 2xx and BYE follow the route set through us
    ack = make_request(
        "ACK",
        "sip:bob@192.0.2.20:5060",
        to="Bob <sip:bob@example.test>;tag=b1",
        headers=("Route: <sip:192.0.2.1:5060;lr>",),
    )
    r.incoming(ack, ALICE)
    (sent_ack,) = r.sent("ACK")
    assert not sent_ack.has("route")
    bye = make_request(
        "BYE",
        "sip:bob@192.0.2.20:5060",
        cseq=2,
        to="Bob <sip:bob@example.test>;tag=b1",
        headers=("Route: <sip:192.0.2.1:5060;lr>",),
    )
    r.incoming(bye, ALICE)
    (sent_bye,) = r.sent("BYE")
    r.incoming(make_response(sent_bye, 200), BOB)
    assert r.answers()[-1] == 200
    r.clock.advance(64)
    assert r.layer.client_transaction_count() == 0


def test_real_layer_cancel() -> None:
    r = _Real()
    invite = make_request("INVITE", "sip:bob@example.test")
    r.incoming(invite, ALICE)
    (forwarded,) = r.sent("INVITE")
    r.incoming(make_response(forwarded, 180, to_tag="b1"), BOB)
    r.incoming(build_cancel(invite), ALICE)
    assert r.answers() == [180, 200]  # the 200 is the CANCEL's
    (sent_cancel,) = r.sent("CANCEL")
    assert sent_cancel.top_via.branch == forwarded.top_via.branch
    r.incoming(make_response(sent_cancel, 200, to_tag="b1"), BOB)
    r.incoming(make_response(forwarded, 487, to_tag="b1"), BOB)
    assert r.answers() == [180, 200, 487]
    assert [a.method for a in r.sent("ACK")] == ["ACK"]  # the client transaction ACKs Bob's 487 itself


def test_real_layer_timeout_is_408() -> None:
    r = _Real()
    r.incoming(make_request("INVITE", "sip:bob@example.test"), ALICE)
    r.clock.advance(0.2)
    assert r.answers() == [100]  # the server transaction's own 100 Trying
    for _ in range(80):
        r.clock.advance(0.5)
    assert len(r.sent("INVITE")) > 1  # Timer A retransmissions
    assert r.answers()[:2] == [100, 408]
    assert set(r.answers()[2:]) <= {408}  # Timer G: the 408 is retransmitted until Alice ACKs it


def test_real_layer_transport_failure_is_500() -> None:
    r = _Real()
    r.transport.fail_with = "connection refused"
    r.incoming(make_request("MESSAGE", "sip:bob@example.test"), ALICE)
    r.clock.advance(0)
    assert r.answers() == [500]
