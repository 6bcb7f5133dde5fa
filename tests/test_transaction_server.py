"""Server transactions: INVITE (RFC 3261 §17.2.1, RFC 6026 §7.1) and non-INVITE (§17.2.2)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipproxy.message import Request, make_response
from sipproxy.transaction import (
    InviteServerTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    Source,
    State,
    TimerSettings,
    TransactionError,
    TransactionLayer,
)
from sipproxy.transaction.testing import RecordingTransport, RecordingTU, make_request

UDP = Source("UDP", "192.0.2.7", 5060)
TCP = Source("TCP", "192.0.2.7", 50123, connection=object())

#: Timer G: T1, doubling up to T2, until Timer H (64*T1): retransmissions of a 300-699 (§17.2.1).
TIMER_G_TIMES = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


class Harness:
    def __init__(self, settings: TimerSettings = TimerSettings()) -> None:
        self.clock = Clock()
        self.transport = RecordingTransport(clock=self.clock)
        self.tu = RecordingTU()
        self.timeouts: list[ServerTransaction] = []
        self.layer = TransactionLayer(
            self.clock, self.transport, self.tu, settings, on_server_timeout=self.timeouts.append
        )

    def receive(self, method: str = "INVITE", source: Source = UDP, **kw: object) -> Request:
        kw.setdefault("transport", source.transport)
        request = make_request(method, **kw)  # type: ignore[arg-type]
        self.layer.receive_request(request, source)
        return request

    def stx(self, index: int = -1) -> ServerTransaction:
        stx = self.tu.requests[index][2]
        assert stx is not None
        return stx

    def answer(self, stx: ServerTransaction, status: int, to_tag: str | None = "s1") -> None:
        request = next(r for r, _, s in self.tu.requests if s is stx)  # as the TU keeps it
        stx.respond(make_response(request, status, to_tag=to_tag))

    def ack(self, invite: Request, source: Source = UDP, to_tag: str = "s1", **kw: object) -> Request:
        """The ACK a UAC sends for a non-2xx final (§17.1.1.3): same branch, To with the response's tag."""
        kw.setdefault("transport", source.transport)
        kw.setdefault("to", f"{invite.get('to')};tag={to_tag}")
        ack = make_request("ACK", **kw)  # type: ignore[arg-type]
        self.layer.receive_request(ack, source)
        return ack

    def advance_to(self, end: float) -> None:
        while True:
            due = [call.getTime() for call in self.clock.getDelayedCalls()]
            if not due or min(due) > end:
                break
            self.clock.advance(max(0.0, min(due) - self.clock.seconds()))
        if end > self.clock.seconds():
            self.clock.advance(end - self.clock.seconds())


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- INVITE server: Proceeding and 100 Trying -----------------------------------------


def test_invite_creates_transaction_in_proceeding(h: Harness) -> None:
    invite = h.receive()
    assert len(h.tu.requests) == 1
    request, source, stx = h.tu.requests[0]
    assert request is invite and source == UDP
    assert isinstance(stx, InviteServerTransaction)
    assert stx.request is invite and stx.source == UDP and stx.method == "INVITE"
    assert stx.state is State.PROCEEDING and stx.state == "Proceeding"
    assert stx.last_response is None and not stx.terminated
    assert h.layer.server_transaction_count() == 1


@pytest.mark.parametrize("source", [UDP, TCP])
def test_100_trying_after_200_ms_when_the_tu_is_silent(h: Harness, source: Source) -> None:
    h.receive(source=source, extra=(("Timestamp", "54.21"),))
    h.advance_to(0.199)
    assert h.transport.responses == []
    h.advance_to(0.2)
    assert h.transport.statuses == [100]
    trying, sent_to = h.transport.responses[0]
    assert sent_to == source
    assert trying.to.tag is None
    assert trying.get("timestamp") == "54.21"
    assert h.stx().last_response is trying
    assert h.stx().state is State.PROCEEDING
    assert h.clock.getDelayedCalls() == []


def test_no_100_trying_when_the_tu_answered_at_100_ms(h: Harness) -> None:
    h.receive()
    h.advance_to(0.1)
    h.answer(h.stx(), 180)
    h.advance_to(10)
    assert h.transport.statuses == [180]
    assert h.transport.response_times == [0.1]


def test_no_100_trying_when_the_tu_answers_synchronously(h: Harness) -> None:
    h.tu.on_request = lambda req, src, stx: stx.respond(make_response(req, 100)) if stx else None
    h.receive()
    h.advance_to(10)
    assert h.transport.statuses == [100]


def test_no_100_trying_for_non_invite(h: Harness) -> None:
    h.receive("OPTIONS")
    h.advance_to(10)
    assert h.transport.responses == []
    assert h.stx().state is State.TRYING


def test_invite_retransmission_before_any_response_is_absorbed(h: Harness) -> None:
    invite = h.receive()
    h.layer.receive_request(invite.copy(), UDP)
    assert len(h.tu.requests) == 1
    assert h.transport.responses == []
    assert h.layer.server_transaction_count() == 1


def test_invite_retransmission_resends_the_last_provisional(h: Harness) -> None:
    invite = h.receive()
    h.advance_to(0.3)  # 100 Trying sent
    h.layer.receive_request(invite.copy(), UDP)
    assert h.transport.statuses == [100, 100]
    h.answer(h.stx(), 180)
    h.layer.receive_request(invite.copy(), UDP)
    assert h.transport.statuses == [100, 100, 180, 180]
    assert len(h.tu.requests) == 1


# -- INVITE server: Completed (300-699), Timers G and H ------------------------------------


def test_invite_udp_non_2xx_timer_g_retransmits_until_timer_h(h: Harness) -> None:
    h.receive()
    stx = h.stx()
    h.answer(stx, 486)
    assert stx.state is State.COMPLETED
    assert stx.last_response is not None and stx.last_response.status == 486
    h.advance_to(31.9)
    assert h.transport.response_times == [0.0, *TIMER_G_TIMES]
    assert set(h.transport.statuses) == {486}
    assert h.timeouts == []
    h.advance_to(32.0)
    assert stx.state is State.TERMINATED
    assert stx.timed_out
    assert h.timeouts == [stx]
    assert h.layer.server_transaction_count() == 0
    assert h.clock.getDelayedCalls() == []


def test_invite_tcp_non_2xx_no_timer_g_but_timer_h(h: Harness) -> None:
    h.receive(source=TCP)
    stx = h.stx()
    h.answer(stx, 603)
    h.advance_to(31.9)
    assert h.transport.statuses == [603]
    h.advance_to(32.0)
    assert stx.terminated and stx.timed_out
    assert h.timeouts == [stx]
    assert h.clock.getDelayedCalls() == []


def test_invite_retransmission_in_completed_resends_the_final(h: Harness) -> None:
    invite = h.receive()
    h.answer(h.stx(), 404)
    h.advance_to(0.1)
    h.layer.receive_request(invite.copy(), UDP)
    assert h.transport.statuses == [404, 404]
    assert h.transport.response_times == [0.0, 0.1]
    assert len(h.tu.requests) == 1


def test_timer_g_is_capped_at_t2() -> None:
    h = Harness(TimerSettings(t1=0.5, t2=1.0))
    h.receive()
    h.answer(h.stx(), 500)
    h.advance_to(5.0)
    assert h.transport.response_times == [0.0, 0.5, 1.5, 2.5, 3.5, 4.5]


# -- INVITE server: Confirmed, Timer I ----------------------------------------------------


def test_invite_udp_ack_is_absorbed_confirmed_then_timer_i(h: Harness) -> None:
    invite = h.receive()
    stx = h.stx()
    h.answer(stx, 486)
    h.advance_to(1.0)  # one Timer G retransmission at 0.5
    h.ack(invite)
    assert stx.state is State.CONFIRMED
    assert len(h.tu.requests) == 1  # the TU never sees the ACK
    h.ack(invite)  # an ACK retransmission: absorbed too
    h.layer.receive_request(invite.copy(), UDP)  # an INVITE retransmission: absorbed
    assert len(h.tu.requests) == 1
    assert h.transport.statuses == [486, 486]
    h.advance_to(1.0 + 4.99)
    assert stx.state is State.CONFIRMED
    assert h.transport.statuses == [486, 486]  # Timer G stopped
    h.advance_to(1.0 + 5.0)
    assert stx.state is State.TERMINATED
    assert not stx.timed_out and h.timeouts == []
    assert h.layer.server_transaction_count() == 0
    assert h.clock.getDelayedCalls() == []


def test_invite_tcp_ack_terminates_at_once_timer_i_zero(h: Harness) -> None:
    invite = h.receive(source=TCP)
    stx = h.stx()
    h.answer(stx, 486)
    h.ack(invite, source=TCP)
    assert stx.state is State.TERMINATED
    assert len(h.tu.requests) == 1
    assert h.clock.getDelayedCalls() == []
    # a late ACK retransmission now matches nothing: it is an ACK for the TU to forward or drop
    h.ack(invite, source=TCP)
    assert h.tu.requests[-1][2] is None


# -- INVITE server: Accepted (RFC 6026), Timer L --------------------------------------------


@pytest.mark.parametrize("source", [UDP, TCP])
def test_invite_2xx_accepted_absorbs_retransmissions_passes_acks(h: Harness, source: Source) -> None:
    invite = h.receive(source=source)
    stx = h.stx()
    h.answer(stx, 180)
    h.answer(stx, 200)
    assert stx.state is State.ACCEPTED
    assert h.transport.statuses == [180, 200]
    h.layer.receive_request(invite.copy(), source)  # absorbed: nothing sent, the TU is not called
    assert h.transport.statuses == [180, 200]
    assert len(h.tu.requests) == 1
    # the 2xx is retransmitted by the TU (or a forked 2xx forwarded): sent
    h.answer(stx, 200)
    h.answer(stx, 200, to_tag="fork2")
    assert h.transport.statuses == [180, 200, 200, 200]
    # an ACK for the 2xx (same branch here) goes to the TU with no transaction
    ack = h.ack(invite, source=source)
    assert h.tu.requests[-1] == (ack, source, None)
    assert stx.state is State.ACCEPTED
    h.advance_to(31.9)
    assert h.transport.statuses == [180, 200, 200, 200]  # the transaction does not retransmit 2xx
    h.advance_to(32.0)
    assert stx.state is State.TERMINATED
    assert not stx.timed_out
    assert h.clock.getDelayedCalls() == []


@pytest.mark.parametrize("status", [180, 486])
def test_invite_accepted_refuses_non_2xx(h: Harness, status: int) -> None:
    h.receive()
    stx = h.stx()
    h.answer(stx, 200)
    with pytest.raises(TransactionError):
        h.answer(stx, status)
    assert h.transport.statuses == [200]
    assert stx.last_response is not None and stx.last_response.status == 200


def test_ack_for_2xx_with_its_own_branch_reaches_the_tu(h: Harness) -> None:
    invite = h.receive()
    h.answer(h.stx(), 200)
    ack = h.ack(invite, branch="z9hG4bKendtoend")
    assert h.tu.requests[-1] == (ack, UDP, None)


def test_ack_matching_nothing_reaches_the_tu(h: Harness) -> None:
    ack = h.receive("ACK", to="<sip:bob@example.test>;tag=x")
    assert h.tu.requests == [(ack, UDP, None)]
    assert h.layer.server_transaction_count() == 0


def test_ack_before_any_final_is_absorbed(h: Harness) -> None:
    invite = h.receive()
    h.ack(invite)
    assert len(h.tu.requests) == 1
    assert h.stx().state is State.PROCEEDING


# -- responding in the wrong state ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "first"), [("INVITE", 486), ("INVITE", 302), ("OPTIONS", 200), ("BYE", 481)])
@pytest.mark.parametrize("second", [100, 180, 200, 486])
def test_responding_after_a_final_raises_and_sends_nothing(h: Harness, method: str, first: int, second: int) -> None:
    h.receive(method)
    stx = h.stx()
    h.answer(stx, first)
    sent = list(h.transport.statuses)
    with pytest.raises(TransactionError):
        h.answer(stx, second)
    assert h.transport.statuses == sent
    assert stx.final_status == first and stx.final_sent


@pytest.mark.parametrize("source", [UDP, TCP])
def test_responding_after_terminated_raises(h: Harness, source: Source) -> None:
    h.receive("OPTIONS", source=source)
    stx = h.stx()
    h.answer(stx, 200)
    h.advance_to(40)
    assert stx.terminated
    with pytest.raises(TransactionError):
        h.answer(stx, 200)
    assert h.transport.statuses == [200]


@pytest.mark.parametrize("status", [99, 700])
def test_bad_status_raises(h: Harness, status: int) -> None:
    h.receive("OPTIONS")
    with pytest.raises(TransactionError):
        h.answer(h.stx(), status)
    assert h.transport.responses == []


# -- non-INVITE server ---------------------------------------------------------------------------


def test_non_invite_udp_trying_proceeding_completed_timer_j(h: Harness) -> None:
    request = h.receive("REGISTER")
    stx = h.stx()
    assert isinstance(stx, NonInviteServerTransaction)
    assert stx.state is State.TRYING
    h.layer.receive_request(request.copy(), UDP)  # Trying: nothing to resend, absorbed
    assert h.transport.responses == [] and len(h.tu.requests) == 1
    h.answer(stx, 100, to_tag=None)
    assert stx.state is State.PROCEEDING
    h.layer.receive_request(request.copy(), UDP)  # Proceeding: the provisional again
    assert h.transport.statuses == [100, 100]
    h.answer(stx, 183)
    assert stx.state is State.PROCEEDING
    h.advance_to(1.0)
    h.answer(stx, 200)
    assert stx.state is State.COMPLETED
    h.layer.receive_request(request.copy(), UDP)  # Completed: the final again
    assert h.transport.statuses == [100, 100, 183, 200, 200]
    assert len(h.tu.requests) == 1
    h.advance_to(1.0 + 31.99)
    assert stx.state is State.COMPLETED
    assert h.transport.statuses == [100, 100, 183, 200, 200]  # no retransmission on its own
    h.advance_to(1.0 + 32.0)
    assert stx.state is State.TERMINATED
    assert h.layer.server_transaction_count() == 0
    assert h.clock.getDelayedCalls() == []
    # after Timer J a retransmission is a new request
    h.layer.receive_request(request.copy(), UDP)
    assert len(h.tu.requests) == 2


def test_non_invite_final_straight_from_trying(h: Harness) -> None:
    h.receive("OPTIONS")
    stx = h.stx()
    h.answer(stx, 404)
    assert stx.state is State.COMPLETED
    assert h.transport.statuses == [404]


@pytest.mark.parametrize("status", [200, 403])
def test_non_invite_tcp_final_terminates_at_once_timer_j_zero(h: Harness, status: int) -> None:
    h.receive("REGISTER", source=TCP)
    stx = h.stx()
    h.answer(stx, status)
    assert stx.state is State.TERMINATED
    assert h.transport.responses[0][1] == TCP
    assert h.layer.server_transaction_count() == 0
    assert h.clock.getDelayedCalls() == []


def test_cancel_gets_its_own_server_transaction(h: Harness) -> None:
    h.receive("INVITE")
    h.receive("CANCEL")
    assert [(r.method, type(s).__name__) for r, _, s in h.tu.requests] == [
        ("INVITE", "InviteServerTransaction"),
        ("CANCEL", "NonInviteServerTransaction"),
    ]
    assert h.layer.server_transaction_count() == 2


# -- TU failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"])
def test_tu_exception_answers_500_and_propagates(h: Harness, method: str) -> None:
    def explode(request: Request, source: Source, stx: ServerTransaction | None) -> None:
        raise RuntimeError("TU bug")

    h.tu.on_request = explode
    with pytest.raises(RuntimeError):
        h.receive(method)
    stx = h.stx()
    assert h.transport.statuses == [500]
    assert h.transport.responses[0][0].to.tag  # a final response carries a To tag
    assert stx.state is State.COMPLETED
    h.advance_to(40)
    assert stx.terminated
    assert h.clock.getDelayedCalls() == []


def test_tu_exception_after_final_sends_nothing_more(h: Harness) -> None:
    def answer_then_explode(request: Request, source: Source, stx: ServerTransaction | None) -> None:
        assert stx is not None
        stx.respond(make_response(request, 200, to_tag="ok"))
        raise RuntimeError("TU bug after answering")

    h.tu.on_request = answer_then_explode
    with pytest.raises(RuntimeError):
        h.receive("INVITE")
    assert h.transport.statuses == [200]
    assert h.stx().state is State.ACCEPTED


def test_tu_exception_on_ack_propagates(h: Harness) -> None:
    def explode(request: Request, source: Source, stx: ServerTransaction | None) -> None:
        raise RuntimeError("TU bug")

    h.tu.on_request = explode
    with pytest.raises(RuntimeError):
        h.receive("ACK")
    assert h.transport.responses == []
    assert h.layer.server_transaction_count() == 0


def test_repr_names_method_and_state(h: Harness) -> None:
    h.receive("OPTIONS")
    assert "OPTIONS" in repr(h.stx()) and "Trying" in repr(h.stx())


def test_finished_non_invite_keeps_only_what_a_retransmission_needs() -> None:
    """Timer J holds the transaction 32 s: the messages go, the token to resend the response stays."""
    h = Harness()
    h.receive("REGISTER")
    stx = h.stx()
    h.answer(stx, 200)
    assert (stx.request, stx.last_response, stx.final_status) == (None, None, 200)
    h.receive("REGISTER")  # a retransmission still gets the same 200
    assert h.transport.statuses == [200, 200]
    assert h.transport.responses[1] == h.transport.responses[0]
