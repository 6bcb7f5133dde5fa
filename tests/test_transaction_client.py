"""Client transactions: INVITE (RFC 3261 §17.1.1, RFC 6026 §8.4) and non-INVITE (§17.1.2), CANCEL/ACK builders."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipproxy.message import Request, Response, make_response, parse_message
from sipproxy.transaction import (
    ClientTransaction,
    InviteClientTransaction,
    NonInviteClientTransaction,
    Source,
    State,
    Target,
    TimerSettings,
    TransactionError,
    TransactionLayer,
    build_ack,
    build_cancel,
)
from sipproxy.transaction.testing import RecordingOwner, RecordingTransport, RecordingTU, make_request

UDP = Target("UDP", "192.0.2.20", 5060)
TCP = Target("TCP", "192.0.2.20", 5060)
UDP_SOURCE = Source("UDP", "192.0.2.20", 5060)

#: Timer A: T1, doubling, until Timer B (64*T1 = 32 s): 6 retransmissions (§17.1.1.2).
INVITE_RETRANSMITS = [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
#: Timer E: T1, doubling up to T2 (4 s), until Timer F (32 s): 10 retransmissions (§17.1.2.2).
NON_INVITE_RETRANSMITS = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


class Harness:
    def __init__(self, settings: TimerSettings = TimerSettings()) -> None:
        self.clock = Clock()
        self.transport = RecordingTransport(clock=self.clock)
        self.tu = RecordingTU()
        self.owner = RecordingOwner()
        self.layer = TransactionLayer(self.clock, self.transport, self.tu, settings)

    def send(self, method: str = "INVITE", target: Target = UDP, **kw: object) -> ClientTransaction:
        kw.setdefault("transport", target.transport)
        return self.layer.send_request(make_request(method, **kw), target, self.owner)  # type: ignore[arg-type]

    def respond(self, ctx: ClientTransaction, status: int, to_tag: str | None = "b1") -> Response:
        response = make_response(ctx.request, status, to_tag=to_tag)
        self.layer.receive_response(response, UDP_SOURCE)
        return response

    def advance_to(self, end: float) -> None:
        """Jump from deadline to deadline (so messages carry the time they were sent at), then to ``end``."""
        while True:
            due = [call.getTime() for call in self.clock.getDelayedCalls()]
            if not due or min(due) > end:
                break
            self.clock.advance(max(0.0, min(due) - self.clock.seconds()))
        if end > self.clock.seconds():
            self.clock.advance(end - self.clock.seconds())

    def retransmit_times(self, method: str) -> list[float]:
        return [
            t
            for t, sent in zip(self.transport.request_times, self.transport.requests, strict=True)
            if sent.request.method == method
        ][1:]


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- TimerSettings ----------------------------------------------------------------


def test_timer_values_follow_table_4() -> None:
    s = TimerSettings()
    assert (s.t1, s.t2, s.t4, s.trying_delay) == (0.5, 4.0, 5.0, 0.2)
    assert s.b() == s.f() == s.h() == s.l() == s.m() == 32.0
    assert s.d(False) == 32.0 and s.d(True) == 0.0
    assert s.i(False) == 5.0 and s.i(True) == 0.0
    assert s.j(False) == 32.0 and s.j(True) == 0.0
    assert s.k(False) == 5.0 and s.k(True) == 0.0
    assert s.next_interval(0.5, cap=False) == 1.0
    assert s.next_interval(4.0, cap=False) == 8.0
    assert s.next_interval(4.0, cap=True) == 4.0


def test_timer_d_covers_timer_h_when_t1_is_raised() -> None:
    assert TimerSettings(t1=1.0).d(False) == 64.0
    assert TimerSettings(t1=0.1, t2=4.0).d(False) == 32.0


@pytest.mark.parametrize("kw", [{"t1": 0}, {"t1": 5.0, "t2": 4.0}, {"t4": 0}, {"trying_delay": -1}])
def test_timer_settings_validate(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TimerSettings(**kw)


def test_timer_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        TimerSettings().t1 = 1.0  # type: ignore[misc]


# -- INVITE client: Calling ---------------------------------------------------------


def test_invite_udp_timer_a_doubles_and_timer_b_times_out(h: Harness) -> None:
    ctx = h.send()
    assert isinstance(ctx, InviteClientTransaction)
    assert ctx.state is State.CALLING and ctx.state == "Calling"
    assert h.transport.request_times == [0.0]
    assert h.transport.requests[0].target == UDP
    h.advance_to(31.9)
    assert h.retransmit_times("INVITE") == INVITE_RETRANSMITS
    assert all(sent.request is ctx.request for sent in h.transport.requests)
    assert h.owner.events == []
    h.advance_to(32.0)
    assert h.owner.events == [("timeout", ctx)]
    assert ctx.state is State.TERMINATED and ctx.terminated
    assert ctx.failure == "timeout"
    assert h.layer.client_transaction_count() == 0
    assert h.clock.getDelayedCalls() == []


def test_invite_tcp_no_retransmissions_timer_b(h: Harness) -> None:
    ctx = h.send(target=TCP)
    assert ctx.reliable
    h.advance_to(31.9)
    assert h.transport.methods == ["INVITE"]
    h.advance_to(32.0)
    assert h.owner.events == [("timeout", ctx)]
    assert h.clock.getDelayedCalls() == []


def test_invite_timers_follow_settings() -> None:
    h = Harness(TimerSettings(t1=0.1, t2=1.0))
    ctx = h.send()
    h.advance_to(10)
    assert h.retransmit_times("INVITE") == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert h.owner.events == [("timeout", ctx)]
    assert h.clock.seconds() == 10


# -- INVITE client: Proceeding ---------------------------------------------------------


@pytest.mark.parametrize("target", [UDP, TCP])
def test_invite_provisional_stops_timers_a_and_b(h: Harness, target: Target) -> None:
    ctx = h.send(target=target)
    h.advance_to(1.0)
    trying = h.respond(ctx, 100, to_tag=None)
    assert ctx.state is State.PROCEEDING
    assert ctx.last_provisional is trying
    assert h.clock.getDelayedCalls() == []
    h.advance_to(100)
    assert h.transport.methods.count("INVITE") == (2 if target is UDP else 1)
    assert h.owner.events == [("response", ctx, 100)]
    ringing = h.respond(ctx, 180)
    h.respond(ctx, 183)
    assert h.owner.statuses == [100, 180, 183]
    assert ctx.last_provisional is not None and ctx.last_provisional.status == 183
    assert ringing is not ctx.last_provisional
    assert ctx.state is State.PROCEEDING and ctx.final_response is None


# -- INVITE client: Completed (300-699) -------------------------------------------------


def test_invite_udp_non_2xx_sends_ack_and_timer_d(h: Harness) -> None:
    ctx = h.send(extra=(("Route", "<sip:p1.example.test;lr>"), ("Route", "<sip:p2.example.test;lr>")))
    h.respond(ctx, 180)
    busy = h.respond(ctx, 486)
    assert ctx.state is State.COMPLETED
    assert ctx.final_response is busy
    assert h.owner.statuses == [180, 486]
    assert h.transport.methods == ["INVITE", "ACK"]
    ack_sent = h.transport.requests[1]
    assert ack_sent.target == UDP
    assert isinstance(ctx, InviteClientTransaction) and ack_sent.request is ctx.ack
    ack = ack_sent.request
    assert ack.get("to") == busy.get("to") and ack.to.tag == "b1"
    assert ack.get_all("route") == ["<sip:p1.example.test;lr>", "<sip:p2.example.test;lr>"]
    # a retransmitted final: ACK again, the owner hears nothing
    h.advance_to(10)
    h.layer.receive_response(busy.copy(), UDP_SOURCE)
    h.respond(ctx, 180)
    assert h.transport.methods == ["INVITE", "ACK", "ACK"]
    assert h.owner.statuses == [180, 486]
    h.advance_to(31.9)
    assert ctx.state is State.COMPLETED
    h.advance_to(32.0)
    assert ctx.state is State.TERMINATED
    assert h.layer.client_transaction_count() == 0
    assert h.clock.getDelayedCalls() == []
    assert len([e for e in h.owner.events if e[0] == "timeout"]) == 0


def test_invite_non_2xx_from_calling_stops_retransmissions(h: Harness) -> None:
    ctx = h.send()
    h.advance_to(0.6)
    h.respond(ctx, 503)
    assert ctx.state is State.COMPLETED
    h.advance_to(31.9)
    assert h.transport.methods == ["INVITE", "INVITE", "ACK"]
    assert h.owner.statuses == [503]


def test_invite_tcp_non_2xx_terminates_at_once_timer_d_zero(h: Harness) -> None:
    ctx = h.send(target=TCP)
    seen: list[State] = []
    h.owner.on_response = lambda c, r: seen.append(c.state)
    h.respond(ctx, 404)
    assert seen == [State.TERMINATED]
    assert h.transport.methods == ["INVITE", "ACK"]
    assert h.transport.requests[1].target == TCP
    assert h.layer.client_transaction_count() == 0
    h.clock.advance(0)  # the notice that it is over comes after the report
    assert h.owner.ended == [ctx] and ctx.owner is not h.owner  # told, and let go of
    assert h.clock.getDelayedCalls() == []
    # a late retransmission of the final no longer matches: it goes to the TU as a stray
    h.respond(ctx, 404)
    assert [r.status for r, _ in h.tu.responses] == [404]


def test_invite_ack_transport_failure_terminates_silently(h: Harness) -> None:
    ctx = h.send()
    h.transport.fail_with = "ICMP port unreachable"
    h.respond(ctx, 480)
    assert ctx.state is State.TERMINATED
    assert h.owner.events == [("response", ctx, 480)]
    assert h.clock.getDelayedCalls() == []


# -- INVITE client: Accepted (RFC 6026) ----------------------------------------------


@pytest.mark.parametrize("target", [UDP, TCP])
def test_invite_2xx_accepted_passes_every_2xx_timer_m(h: Harness, target: Target) -> None:
    ctx = h.send(target=target)
    h.respond(ctx, 180)
    ok = h.respond(ctx, 200)
    assert ctx.state is State.ACCEPTED
    assert ctx.final_response is ok
    h.advance_to(5)
    h.layer.receive_response(ok.copy(), UDP_SOURCE)  # a retransmission: passed up (RFC 6026)
    h.respond(ctx, 200, to_tag="fork2")  # a forked 2xx: passed up
    h.respond(ctx, 183)  # absorbed
    h.respond(ctx, 486)  # absorbed
    assert h.owner.statuses == [180, 200, 200, 200]
    assert ctx.final_response is ok
    assert h.transport.methods == ["INVITE"]  # the ACK for a 2xx is not the transaction's
    h.advance_to(31.9)
    assert ctx.state is State.ACCEPTED
    h.advance_to(32.0)
    assert ctx.state is State.TERMINATED
    assert h.clock.getDelayedCalls() == []
    h.respond(ctx, 200)
    assert [r.status for r, _ in h.tu.responses] == [200]
    assert h.owner.statuses == [180, 200, 200, 200]


# -- non-INVITE client -------------------------------------------------------------------


def test_non_invite_udp_timer_e_capped_at_t2_and_timer_f(h: Harness) -> None:
    ctx = h.send("OPTIONS")
    assert isinstance(ctx, NonInviteClientTransaction)
    assert ctx.state is State.TRYING
    h.advance_to(31.9)
    assert h.retransmit_times("OPTIONS") == NON_INVITE_RETRANSMITS
    h.advance_to(32.0)
    assert h.owner.events == [("timeout", ctx)]
    assert ctx.state is State.TERMINATED
    assert h.clock.getDelayedCalls() == []


def test_non_invite_tcp_no_retransmissions_timer_f(h: Harness) -> None:
    ctx = h.send("REGISTER", target=TCP)
    h.advance_to(31.9)
    assert h.transport.methods == ["REGISTER"]
    h.advance_to(32.0)
    assert h.owner.events == [("timeout", ctx)]
    assert h.clock.getDelayedCalls() == []


def test_non_invite_proceeding_timer_e_at_t2_and_timer_f_still_runs(h: Harness) -> None:
    ctx = h.send("BYE")
    h.advance_to(0.2)
    h.respond(ctx, 100, to_tag=None)
    assert ctx.state is State.PROCEEDING
    assert ctx.last_provisional is not None
    h.advance_to(31.9)
    # E still fires at 0.5 (armed in Trying), then every T2
    assert h.retransmit_times("BYE") == [0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    h.advance_to(32.0)
    assert h.owner.events == [("response", ctx, 100), ("timeout", ctx)]
    assert h.clock.getDelayedCalls() == []


def test_non_invite_udp_final_completed_timer_k(h: Harness) -> None:
    ctx = h.send("REGISTER")
    h.advance_to(0.7)
    ok = h.respond(ctx, 200)
    assert ctx.state is State.COMPLETED
    assert ctx.final_response is ok
    h.respond(ctx, 200)
    h.respond(ctx, 100)
    assert h.owner.statuses == [200]
    h.advance_to(0.7 + 4.99)
    assert ctx.state is State.COMPLETED
    assert h.transport.methods == ["REGISTER", "REGISTER"]  # no retransmission after the final
    h.advance_to(0.7 + 5.0)
    assert ctx.state is State.TERMINATED
    assert h.clock.getDelayedCalls() == []


@pytest.mark.parametrize("status", [200, 404, 503])
def test_non_invite_tcp_final_terminates_at_once(h: Harness, status: int) -> None:
    ctx = h.send("MESSAGE", target=TCP)
    h.respond(ctx, status)
    assert ctx.state is State.TERMINATED
    assert h.owner.statuses == [status]
    assert h.layer.client_transaction_count() == 0
    assert h.clock.getDelayedCalls() == []


def test_non_invite_final_from_proceeding(h: Harness) -> None:
    ctx = h.send("SUBSCRIBE")
    h.respond(ctx, 100, to_tag=None)
    h.respond(ctx, 202)
    assert ctx.state is State.COMPLETED
    assert h.owner.statuses == [100, 202]


# -- transport failures ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"])
def test_synchronous_transport_failure_is_reported_from_the_clock(h: Harness, method: str) -> None:
    h.transport.fail_with = "connection refused"
    ctx = h.send(method, target=TCP)
    # the transaction is over at once, but the owner hears about it only after send_request returned
    assert ctx.state is State.TERMINATED
    assert ctx.failure == "connection refused"
    assert h.layer.client_transaction_count() == 0
    assert h.owner.events == []
    h.clock.advance(0)
    assert h.owner.events == [("transport", ctx, "connection refused")]
    assert h.clock.getDelayedCalls() == []


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"])
def test_later_transport_failure_terminates(h: Harness, method: str) -> None:
    ctx = h.send(method)
    h.advance_to(2.0)
    h.transport.requests[0].on_error("ICMP port unreachable")
    assert h.owner.events == [("transport", ctx, "ICMP port unreachable")]
    assert ctx.state is State.TERMINATED
    assert h.clock.getDelayedCalls() == []
    sent = len(h.transport.requests)
    h.advance_to(40)
    assert len(h.transport.requests) == sent
    # a second report, or a response, for the dead transaction changes nothing
    h.transport.requests[1].on_error("again")
    assert h.owner.events == [("transport", ctx, "ICMP port unreachable")]


def test_transport_failure_during_retransmission(h: Harness) -> None:
    ctx = h.send()
    h.advance_to(1.0)
    h.transport.fail_with = "network unreachable"
    h.advance_to(1.5)
    assert h.owner.events == [("transport", ctx, "network unreachable")]
    assert ctx.state is State.TERMINATED
    assert h.clock.getDelayedCalls() == []


def test_transport_failure_in_proceeding(h: Harness) -> None:
    ctx = h.send(target=TCP)
    h.respond(ctx, 180)
    h.transport.requests[0].on_error("connection lost")
    assert h.owner.events == [("response", ctx, 180), ("transport", ctx, "connection lost")]
    assert ctx.state is State.TERMINATED


def test_transport_failure_after_final_is_ignored(h: Harness) -> None:
    ctx = h.send("OPTIONS")
    h.respond(ctx, 200)
    h.transport.requests[0].on_error("late ICMP")
    assert ctx.state is State.COMPLETED
    assert h.owner.events == [("response", ctx, 200)]


# -- re-entrancy and exceptions --------------------------------------------------------------


def test_owner_may_send_cancel_from_a_callback(h: Harness) -> None:
    cancels: list[ClientTransaction] = []

    def on_response(ctx: ClientTransaction, response: Response) -> None:
        if response.status == 180 and ctx.method == "INVITE":
            cancels.append(h.layer.send_request(build_cancel(ctx.request), ctx.target, h.owner))

    h.owner.on_response = on_response
    invite = h.send()
    h.respond(invite, 180)
    assert len(cancels) == 1
    cancel = cancels[0]
    assert cancel.state is State.TRYING
    assert h.layer.client_transaction_count() == 2
    assert h.transport.methods == ["INVITE", "CANCEL"]
    # the CANCEL's 200 goes to the CANCEL transaction, the INVITE's 487 to the INVITE one
    h.respond(cancel, 200)
    assert cancel.state is State.COMPLETED and invite.state is State.PROCEEDING
    h.respond(invite, 487)
    assert invite.state is State.COMPLETED
    assert [(e[1], e[2]) for e in h.owner.events] == [(invite, 180), (cancel, 200), (invite, 487)]


def test_owner_exception_propagates_after_state_is_consistent(h: Harness) -> None:
    ctx = h.send()

    def explode(ctx: ClientTransaction, response: Response) -> None:
        raise RuntimeError("owner bug")

    h.owner.on_response = explode
    with pytest.raises(RuntimeError):
        h.respond(ctx, 486)
    assert ctx.state is State.COMPLETED
    assert h.transport.methods == ["INVITE", "ACK"]
    h.owner.on_response = None
    h.respond(ctx, 486)
    assert h.transport.methods == ["INVITE", "ACK", "ACK"]
    h.advance_to(32)
    assert ctx.terminated
    assert h.clock.getDelayedCalls() == []


def test_owner_exception_on_timeout_leaves_layer_clean(h: Harness) -> None:
    ctx = h.send("OPTIONS", target=TCP)

    def explode(ctx: ClientTransaction) -> None:
        raise RuntimeError("owner bug")

    h.owner.timed_out = explode  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        h.advance_to(32)
    assert ctx.terminated
    assert h.layer.client_transaction_count() == 0
    assert h.clock.getDelayedCalls() == []


def test_owner_may_close_the_layer_from_a_callback(h: Harness) -> None:
    ctx = h.send()
    h.owner.on_response = lambda c, r: h.layer.close()
    h.respond(ctx, 180)
    assert ctx.terminated
    assert h.clock.getDelayedCalls() == []


# -- send_request refusals ---------------------------------------------------------------------


def test_send_request_refuses_ack(h: Harness) -> None:
    with pytest.raises(TransactionError):
        h.send("ACK")
    assert h.transport.requests == []


def test_send_request_refuses_missing_branch(h: Harness) -> None:
    with pytest.raises(TransactionError):
        h.send("OPTIONS", branch=None)


def test_send_request_refuses_cseq_method_mismatch(h: Harness) -> None:
    with pytest.raises(TransactionError):
        h.send("OPTIONS", cseq_method="INFO")


def test_send_request_refuses_duplicate_branch(h: Harness) -> None:
    h.send("OPTIONS", branch="z9hG4bKsame")
    with pytest.raises(TransactionError):
        h.send("OPTIONS", branch="z9hG4bKsame")
    h.send("INFO", branch="z9hG4bKsame")  # another method: another transaction (§17.1.3)
    assert h.layer.client_transaction_count() == 2
    assert h.transport.methods == ["OPTIONS", "INFO"]


def test_send_request_refused_after_close(h: Harness) -> None:
    h.layer.close()
    with pytest.raises(TransactionError):
        h.send()


# -- ClientTransaction attributes ---------------------------------------------------------------


def test_client_transaction_attributes(h: Harness) -> None:
    ctx = h.send("INVITE", target=TCP)
    assert ctx.method == "INVITE"
    assert ctx.target == TCP
    assert ctx.owner is h.owner
    assert ctx.last_provisional is None and ctx.final_response is None
    assert not ctx.terminated
    assert ctx.key == ("z9hG4bK776asdhds", "INVITE")
    assert "INVITE" in repr(ctx) and "Calling" in repr(ctx)


# -- build_cancel / build_ack ----------------------------------------------------------------------


INVITE_BYTES = (
    b"INVITE sip:bob@example.test;transport=udp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP proxy.example.test:5060;branch=z9hG4bKnashds8, SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKuac\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.9;branch=z9hG4bKfirst\r\n"
    b"Route: <sip:p1.example.test;lr>, <sip:p2.example.test;lr>\r\n"
    b"Max-Forwards: 69\r\n"
    b'From: "Alice" <sip:alice@example.test>;tag=1928301774\r\n'
    b"To: Bob <sip:bob@example.test>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.test\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.7:5062>\r\n"
    b"Record-Route: <sip:proxy.example.test;lr>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def _invite() -> Request:
    message = parse_message(INVITE_BYTES)
    assert isinstance(message, Request)
    return message


def test_build_cancel_follows_9_1() -> None:
    invite = _invite()
    cancel = build_cancel(invite)
    assert cancel.method == "CANCEL"
    assert cancel.uri_text == invite.uri_text
    assert cancel.get_all("via") == ["SIP/2.0/UDP proxy.example.test:5060;branch=z9hG4bKnashds8"]
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.get_all("route") == ["<sip:p1.example.test;lr>", "<sip:p2.example.test;lr>"]
    assert cancel.get("from") == invite.get("from")
    assert cancel.get("to") == invite.get("to")
    assert cancel.call_id == invite.call_id
    assert (cancel.cseq.seq, cancel.cseq.method) == (314159, "CANCEL")
    assert cancel.max_forwards == 70
    assert cancel.body == b"" and cancel.content_length == 0
    for absent in ("contact", "record-route", "content-type"):
        assert not cancel.has(absent)
    reparsed = parse_message(cancel.to_bytes())
    assert isinstance(reparsed, Request) and reparsed.method == "CANCEL"


def test_build_cancel_keeps_to_tag() -> None:
    invite = make_request("INVITE", to="<sip:bob@example.test>;tag=dialog1")
    assert build_cancel(invite).to.tag == "dialog1"


def test_build_ack_follows_17_1_1_3() -> None:
    invite = _invite()
    response = make_response(invite, 486, to_tag="8321234356")
    ack = build_ack(invite, response)
    assert ack.method == "ACK"
    assert ack.uri_text == invite.uri_text
    assert ack.get_all("via") == ["SIP/2.0/UDP proxy.example.test:5060;branch=z9hG4bKnashds8"]
    assert ack.get_all("route") == ["<sip:p1.example.test;lr>", "<sip:p2.example.test;lr>"]
    assert ack.get("from") == invite.get("from")
    assert ack.get("to") == response.get("to")
    assert ack.to.tag == "8321234356"
    assert ack.call_id == invite.call_id
    assert (ack.cseq.seq, ack.cseq.method) == (314159, "ACK")
    assert ack.max_forwards == 70
    assert ack.body == b""
    assert not ack.has("contact") and not ack.has("content-type")
    assert isinstance(parse_message(ack.to_bytes()), Request)


@pytest.mark.parametrize("builder", [build_cancel, lambda r: build_ack(r, make_response(r, 404, to_tag="x"))])
def test_builders_need_an_invite(builder: object) -> None:
    with pytest.raises(TransactionError):
        builder(make_request("OPTIONS"))  # type: ignore[operator]
