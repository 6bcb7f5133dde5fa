"""The transaction layer: matching (RFC 3261 §17.1.3, §17.2.3, §9.2), the tables, close(), the FSM tables."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from sipproxy.message import Request, Response, make_response, parse_message
from sipproxy.transaction import (
    ClientTransaction,
    Input,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    Source,
    State,
    Target,
    TransactionError,
    TransactionLayer,
    build_cancel,
    is_reliable,
)
from sipproxy.transaction.machine import LOCAL_INPUTS, Machine
from sipproxy.transaction.testing import RecordingOwner, RecordingTransport, RecordingTU, make_request

REPO = Path(__file__).resolve().parent.parent
UDP = Source("UDP", "192.0.2.7", 5060)
TARGET = Target("UDP", "192.0.2.20", 5060)


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.transport = RecordingTransport(clock=self.clock)
        self.tu = RecordingTU()
        self.owner = RecordingOwner()
        self.layer = TransactionLayer(self.clock, self.transport, self.tu)

    def receive(self, method: str = "INVITE", source: Source = UDP, **kw: object) -> Request:
        request = make_request(method, **kw)  # type: ignore[arg-type]
        self.layer.receive_request(request, source)
        return request

    def stx(self, index: int = -1) -> ServerTransaction:
        stx = self.tu.requests[index][2]
        assert stx is not None
        return stx


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_is_reliable() -> None:
    assert not is_reliable("UDP") and not is_reliable("udp")
    for name in ("TCP", "TLS", "WS", "WSS", "SCTP", "tcp"):
        assert is_reliable(name)


def test_source_and_target_are_named_tuples() -> None:
    assert Source("UDP", "192.0.2.7", 5060) == ("UDP", "192.0.2.7", 5060, None)
    assert Target("TLS", "192.0.2.20", 5061).port == 5061


# -- server matching, RFC 3261 (magic cookie) §17.2.3 ---------------------------------------


def test_retransmission_matches_branch_sent_by_and_method(h: Harness) -> None:
    h.receive("OPTIONS")
    h.receive("OPTIONS", sent_by="pc33.example.test:5060")  # another sent-by: a new transaction
    h.receive("OPTIONS")  # retransmission of the first
    h.receive("OPTIONS", source=Source("UDP", "192.0.2.99", 5060))  # source address is not part of the key
    assert len(h.tu.requests) == 2
    assert h.layer.server_transaction_count() == 2


def test_retransmission_from_a_different_sent_by_is_a_new_transaction(h: Harness) -> None:
    h.receive("INVITE", sent_by="192.0.2.7:5060")
    h.receive("INVITE", sent_by="192.0.2.7:5062")
    h.receive("INVITE", sent_by="192.0.2.8:5060")
    assert len(h.tu.requests) == 3
    assert h.layer.server_transaction_count() == 3


def test_sent_by_host_compares_case_insensitively(h: Harness) -> None:
    h.receive("OPTIONS", sent_by="pc33.example.test")
    h.receive("OPTIONS", sent_by="PC33.Example.TEST")
    assert len(h.tu.requests) == 1


def test_same_branch_other_method_is_another_transaction(h: Harness) -> None:
    h.receive("INVITE")
    h.receive("CANCEL")
    h.receive("OPTIONS", cseq=1)
    assert [r.method for r, _, _ in h.tu.requests] == ["INVITE", "CANCEL", "OPTIONS"]


def test_different_branch_is_another_transaction(h: Harness) -> None:
    h.receive("INVITE", branch="z9hG4bK1")
    h.receive("INVITE", branch="z9hG4bK2")
    assert len(h.tu.requests) == 2


# -- server matching, RFC 2543 fallback §17.2.3 --------------------------------------------------


@pytest.mark.parametrize("branch", [None, "1234abcd"])
def test_rfc2543_retransmission_matches_on_the_fallback_fields(h: Harness, branch: str | None) -> None:
    h.receive("INVITE", branch=branch)
    h.receive("INVITE", branch=branch)  # identical: a retransmission
    h.receive("INVITE", branch=branch, uri="sip:bob@EXAMPLE.test")  # equal per §19.1.4: a retransmission
    assert len(h.tu.requests) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"uri": "sip:carol@example.test"},
        {"uri": "sip:bob@example.test;transport=tcp"},
        {"to": "Bob <sip:bob@example.test>;tag=other"},
        {"from_": "Alice <sip:alice@example.test>;tag=other"},
        {"call_id": "another@pc33.example.test"},
        {"cseq": 2},
        {"sent_by": "192.0.2.7:5062"},
        {"via_params": ";received=192.0.2.70"},
    ],
)
def test_rfc2543_any_differing_field_is_a_new_transaction(h: Harness, change: dict[str, object]) -> None:
    h.receive("INVITE", branch=None)
    h.receive("INVITE", branch=None, **change)
    assert len(h.tu.requests) == 2


def test_rfc2543_non_invite_retransmission_resends_the_final(h: Harness) -> None:
    request = h.receive("OPTIONS", branch=None)
    h.stx().respond(make_response(request, 200, to_tag="s1"))
    h.receive("OPTIONS", branch=None)
    assert len(h.tu.requests) == 1
    assert h.transport.statuses == [200, 200]


def test_rfc2543_ack_matches_the_to_tag_of_the_response_sent(h: Harness) -> None:
    invite = h.receive("INVITE", branch=None)
    stx = h.stx()
    stx.respond(make_response(invite, 486, to_tag="resp-tag"))
    # an ACK whose To tag is not the response's: not ours (TU, no transaction)
    other = h.receive("ACK", branch=None, to="Bob <sip:bob@example.test>;tag=someone-else")
    assert h.tu.requests[-1] == (other, UDP, None)
    assert stx.state is State.COMPLETED
    # the ACK for our 486: absorbed, Confirmed
    h.receive("ACK", branch=None, to="Bob <sip:bob@example.test>;tag=resp-tag")
    assert len(h.tu.requests) == 2
    assert stx.state is State.CONFIRMED
    assert h.layer.server_transaction_count() == 1
    h.clock.advance(5)
    assert stx.terminated
    assert h.layer.server_transaction_count() == 0
    # the alias went with the transaction
    h.receive("ACK", branch=None, to="Bob <sip:bob@example.test>;tag=resp-tag")
    assert h.tu.requests[-1][2] is None


def test_rfc2543_ack_with_different_via_is_not_ours(h: Harness) -> None:
    invite = h.receive("INVITE", branch=None)
    h.stx().respond(make_response(invite, 486, to_tag="t"))
    h.receive("ACK", branch=None, sent_by="192.0.2.8:5060", to="Bob <sip:bob@example.test>;tag=t")
    assert h.stx(0).state is State.COMPLETED
    assert h.tu.requests[-1][2] is None


def test_rfc2543_ack_for_2xx_reaches_the_tu(h: Harness) -> None:
    invite = h.receive("INVITE", branch=None)
    h.stx().respond(make_response(invite, 200, to_tag="t"))
    ack = h.receive("ACK", branch=None, to="Bob <sip:bob@example.test>;tag=t")
    assert h.tu.requests[-1] == (ack, UDP, None)


# -- CANCEL matching §9.2 ------------------------------------------------------------------------


def test_cancel_finds_the_invite_server_transaction(h: Harness) -> None:
    invite = h.receive("INVITE")
    stx = h.stx()
    assert h.layer.find_invite_server_transaction(build_cancel(invite)) is stx
    assert h.layer.find_invite_server_transaction(make_request("CANCEL")) is stx


def test_layer_build_cancel_is_the_module_function(h: Harness) -> None:
    invite = make_request("INVITE")
    assert h.layer.build_cancel(invite).to_bytes() == build_cancel(invite).to_bytes()


def test_cancel_with_another_branch_or_sent_by_finds_nothing(h: Harness) -> None:
    h.receive("INVITE")
    assert h.layer.find_invite_server_transaction(make_request("CANCEL", branch="z9hG4bKother")) is None
    assert h.layer.find_invite_server_transaction(make_request("CANCEL", sent_by="192.0.2.8")) is None


def test_cancel_does_not_find_a_non_invite_transaction(h: Harness) -> None:
    h.receive("OPTIONS", branch="z9hG4bKopt")
    assert h.layer.find_invite_server_transaction(make_request("CANCEL", branch="z9hG4bKopt")) is None


def test_cancel_finds_nothing_once_the_invite_transaction_ended(h: Harness) -> None:
    invite = h.receive("INVITE")
    h.stx().respond(make_response(invite, 200, to_tag="t"))
    assert h.layer.find_invite_server_transaction(build_cancel(invite)) is h.stx()  # Accepted: still there
    h.clock.advance(32)
    assert h.layer.find_invite_server_transaction(build_cancel(invite)) is None


def test_rfc2543_cancel_matching(h: Harness) -> None:
    invite = h.receive("INVITE", branch=None)
    stx = h.stx()
    assert h.layer.find_invite_server_transaction(make_request("CANCEL", branch=None)) is stx
    assert h.layer.find_invite_server_transaction(build_cancel(invite)) is stx
    assert h.layer.find_invite_server_transaction(make_request("CANCEL", branch=None, cseq=7)) is None
    assert h.layer.find_invite_server_transaction(make_request("CANCEL", branch=None, sent_by="192.0.2.9")) is None


# -- client matching §17.1.3 ---------------------------------------------------------------------


def test_response_matches_branch_and_cseq_method(h: Harness) -> None:
    invite_ctx = h.layer.send_request(make_request("INVITE"), TARGET, h.owner)
    # a response to a CANCEL with the INVITE's branch is not the INVITE's (no CANCEL transaction here)
    cancel_response = make_response(build_cancel(invite_ctx.request), 200, to_tag="t")
    h.layer.receive_response(cancel_response, UDP)
    assert h.owner.events == []
    assert [r for r, _ in h.tu.responses] == [cancel_response]
    # with a CANCEL transaction, each response goes to its own
    cancel_ctx = h.layer.send_request(build_cancel(invite_ctx.request), TARGET, h.owner)
    h.layer.receive_response(cancel_response, UDP)
    h.layer.receive_response(make_response(invite_ctx.request, 487, to_tag="t"), UDP)
    assert [(e[1], e[2]) for e in h.owner.events] == [(cancel_ctx, 200), (invite_ctx, 487)]


def test_stray_responses_go_to_the_tu(h: Harness) -> None:
    h.layer.send_request(make_request("INVITE", branch="z9hG4bKmine"), TARGET, h.owner)
    stray_2xx = make_response(make_request("INVITE", branch="z9hG4bKunknown"), 200, to_tag="t")
    no_branch = make_response(make_request("INVITE", branch=None), 180, to_tag="t")
    source = Source("UDP", "192.0.2.20", 5060)
    h.layer.receive_response(stray_2xx, source)
    h.layer.receive_response(no_branch, source)
    assert h.tu.responses == [(stray_2xx, source), (no_branch, source)]
    assert h.owner.events == []


# -- counts, close, stateless --------------------------------------------------------------------------


def test_counts_track_the_tables(h: Harness) -> None:
    assert (h.layer.server_transaction_count(), h.layer.client_transaction_count()) == (0, 0)
    invite = h.receive("INVITE", branch=None)
    h.stx().respond(make_response(invite, 486, to_tag="t"))  # adds an ACK alias, not a transaction
    h.receive("OPTIONS")
    h.layer.send_request(make_request("OPTIONS", branch="z9hG4bKc1"), TARGET, h.owner)
    assert (h.layer.server_transaction_count(), h.layer.client_transaction_count()) == (2, 1)
    assert {type(t) for t in h.layer.server_transactions()} == {InviteServerTransaction, NonInviteServerTransaction}
    assert [type(t) for t in h.layer.client_transactions()] == [NonInviteClientTransaction]


def test_close_cancels_every_timer_and_ignores_later_input(h: Harness) -> None:
    h.receive("INVITE")
    invite2 = h.receive("INVITE", branch="z9hG4bK2")
    h.stx().respond(make_response(invite2, 486, to_tag="t"))
    h.receive("OPTIONS")
    h.layer.send_request(make_request("INVITE", branch="z9hG4bKc1"), TARGET, h.owner)
    h.layer.send_request(make_request("OPTIONS", branch="z9hG4bKc2"), TARGET, h.owner)
    h.transport.fail_with = "refused"
    h.layer.send_request(make_request("OPTIONS", branch="z9hG4bKc3"), TARGET, h.owner)  # a deferred report
    assert h.clock.getDelayedCalls() != []
    txs = [*h.layer.server_transactions(), *h.layer.client_transactions()]
    h.layer.close()
    assert h.clock.getDelayedCalls() == []
    assert (h.layer.server_transaction_count(), h.layer.client_transaction_count()) == (0, 0)
    assert all(tx.terminated for tx in txs)
    calls = len(h.tu.requests)
    h.receive("BYE")
    h.layer.receive_response(make_response(make_request("INVITE", branch="z9hG4bKc1"), 200), UDP)
    assert len(h.tu.requests) == calls and h.tu.responses == []
    h.clock.advance(100)
    assert h.owner.events == []


def test_send_stateless(h: Harness) -> None:
    ack = make_request("ACK", branch="z9hG4bKproxyack")
    h.layer.send_stateless(ack, TARGET)
    assert h.transport.requests[0].request is ack and h.transport.requests[0].target == TARGET
    h.transport.requests[0].on_error("ignored")  # the default on_error swallows
    errors: list[str] = []
    h.layer.send_stateless(ack, TARGET, errors.append)
    h.transport.requests[1].on_error("refused")
    assert errors == ["refused"]
    assert h.layer.client_transaction_count() == 0


def test_tu_may_reenter_the_layer(h: Harness) -> None:
    """A TU that forwards the request at once (a proxy) and answers from inside the callback."""
    owner = RecordingOwner()

    def forward(request: Request, source: Source, stx: ServerTransaction | None) -> None:
        if stx is None or request.method != "INVITE":
            return
        outgoing = request.copy()
        outgoing.add("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKproxy1", first=True)
        h.layer.send_request(outgoing, TARGET, owner)

    def relay(ctx: ClientTransaction, response: Response) -> None:
        upstream = response.copy()
        upstream.pop_first("via")
        h.stx(0).respond(upstream)

    h.tu.on_request = forward
    owner.on_response = relay
    h.receive("INVITE")
    assert h.layer.client_transaction_count() == 1
    ctx = h.layer.client_transactions()[0]
    h.layer.receive_response(make_response(ctx.request, 180, to_tag="b"), UDP)
    h.layer.receive_response(make_response(ctx.request, 486, to_tag="b"), UDP)
    assert h.transport.statuses == [180, 486]
    assert h.transport.methods == ["INVITE", "ACK"]
    assert h.stx(0).state is State.COMPLETED and ctx.state is State.COMPLETED


# -- two layers over an in-memory lossy "network" ---------------------------------------------------


class Wire:
    """Connects a client layer to a server layer through bytes, dropping chosen messages (UDP loss)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.client: TransactionLayer | None = None
        self.server: TransactionLayer | None = None
        self.drop: dict[str, int] = {}
        self.log: list[str] = []

    def _lose(self, label: str) -> bool:
        left = self.drop.get(label, 0)
        if left:
            self.drop[label] = left - 1
            self.log.append(f"lost {label}")
            return True
        self.log.append(label)
        return False

    def send_request(self, request: Request, target: Target, on_error: Callable[[str], None]) -> None:
        message = parse_message(request.to_bytes())
        assert isinstance(message, Request) and self.server is not None
        if not self._lose(request.method):
            self.server.receive_request(message, Source(target.transport, "192.0.2.7", 5060))

    def send_response(self, response: Response, source: Source) -> bytes:
        data = response.to_bytes()
        self.resend_response(data)
        return data

    def resend_response(self, sent: object) -> None:
        assert isinstance(sent, bytes)
        message = parse_message(sent)
        assert isinstance(message, Response) and self.client is not None
        if not self._lose(str(message.status)):
            self.client.receive_response(message, Source("UDP", "192.0.2.20", 5060))


def test_lossy_udp_invite_rejected_recovers_by_retransmission() -> None:
    clock = Clock()
    wire = Wire(clock)
    uas = RecordingTU(on_request=lambda r, s, stx: stx.respond(make_response(r, 486, to_tag="u")) if stx else None)
    owner = RecordingOwner()
    wire.client = TransactionLayer(clock, wire, RecordingTU())
    wire.server = TransactionLayer(clock, wire, uas)
    wire.drop = {"INVITE": 1, "486": 2, "ACK": 1}
    ctx = wire.client.send_request(make_request("INVITE"), TARGET, owner)
    while clock.getDelayedCalls():
        clock.advance(min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds())
    assert owner.statuses == [486]
    assert len(uas.requests) == 1  # the UAS saw the INVITE once; retransmissions were absorbed
    # INVITE lost (0), retransmitted by Timer A (0.5); 486 lost (0.5) and its Timer G copy lost (1.0);
    # the INVITE retransmission (1.5) gets the 486 again; that ACK is lost; Timer G (2.0) brings a new ACK
    assert wire.log == ["lost INVITE", "INVITE", "lost 486", "lost 486", "INVITE", "486", "lost ACK", "486", "ACK"]
    assert ctx.terminated
    assert wire.server.server_transaction_count() == 0 and wire.client.client_transaction_count() == 0
    assert clock.seconds() < 40


def test_lossy_udp_non_invite_recovers() -> None:
    clock = Clock()
    wire = Wire(clock)
    uas = RecordingTU(on_request=lambda r, s, stx: stx.respond(make_response(r, 200, to_tag="u")) if stx else None)
    owner = RecordingOwner()
    wire.client = TransactionLayer(clock, wire, RecordingTU())
    wire.server = TransactionLayer(clock, wire, uas)
    wire.drop = {"200": 3}
    wire.client.send_request(make_request("REGISTER"), TARGET, owner)
    clock.pump([0.5] * 100)
    assert owner.statuses == [200]
    assert len(uas.requests) == 1
    assert wire.log.count("REGISTER") == 4
    assert clock.getDelayedCalls() == []


# -- the tables: every (state, input) pair transitions or fails closed (h2 style) -----------------------


MACHINES: list[type[Machine]] = [
    InviteClientTransaction,
    NonInviteClientTransaction,
    InviteServerTransaction,
    NonInviteServerTransaction,
]


def _states(cls: type[Machine]) -> list[State]:
    return sorted({cls.INITIAL, *(s for s, _ in cls.TRANSITIONS)}, key=list(State).index)


def _new_machine(cls: type[Machine], h: Harness) -> Machine:
    if issubclass(cls, ServerTransaction):
        h.receive("INVITE" if cls is InviteServerTransaction else "OPTIONS")
        return h.stx()
    method = "INVITE" if cls is InviteClientTransaction else "OPTIONS"
    return h.layer.send_request(make_request(method), TARGET, h.owner)


def _argument(tx: Machine, event: Input) -> object:
    request = tx.request  # type: ignore[attr-defined]
    status = {
        Input.SEND_1XX: 180,
        Input.RECV_1XX: 180,
        Input.SEND_2XX: 200,
        Input.RECV_2XX: 200,
        Input.SEND_FINAL: 486,
        Input.RECV_FINAL: 486,
    }.get(event)
    if status is not None:
        return make_response(request, status, to_tag="t")
    if event is Input.ACK:
        return make_request("ACK")
    if event is Input.TRANSPORT_ERROR:
        return "boom"
    return request


@pytest.mark.parametrize("cls", MACHINES, ids=lambda c: c.__name__)
def test_every_state_input_pair_transitions_or_fails_closed(cls: type[Machine]) -> None:
    for state in _states(cls):
        for event in Input:
            h = Harness()
            tx = _new_machine(cls, h)
            tx.state = state
            transition = cls.TRANSITIONS.get((state, event))
            if transition is None:
                if event in LOCAL_INPUTS:
                    with pytest.raises(TransactionError):
                        tx._dispatch(event, _argument(tx, event))
                else:
                    assert tx._dispatch(event, _argument(tx, event)) is None
                assert tx.state is state, (cls.__name__, state, event)
            else:
                tx._dispatch(event, _argument(tx, event))
                assert tx.state is transition[1], (cls.__name__, state, event)


@pytest.mark.parametrize("cls", MACHINES, ids=lambda c: c.__name__)
def test_every_timer_has_a_transition_in_its_state(cls: type[Machine]) -> None:
    for state, timers in cls.TIMERS.items():
        for timer in timers:
            assert (state, timer) in cls.TRANSITIONS, (cls.__name__, state, timer)
    assert State.TERMINATED not in cls.TIMERS
    assert all(s is not State.TERMINATED for s, _ in cls.TRANSITIONS)


@pytest.mark.parametrize("cls", MACHINES, ids=lambda c: c.__name__)
def test_terminated_ignores_the_wire_and_refuses_the_tu(cls: type[Machine]) -> None:
    h = Harness()
    tx = _new_machine(cls, h)
    tx._shutdown()
    for event in Input:
        if event in LOCAL_INPUTS:
            with pytest.raises(TransactionError):
                tx._dispatch(event, _argument(tx, event))
        else:
            assert tx._dispatch(event, _argument(tx, event)) is None
    assert tx.terminated


# -- purity ---------------------------------------------------------------------------------------------


def test_transaction_package_imports_without_twisted() -> None:
    code = (
        "import sys; sys.modules['twisted'] = None\n"
        "import sipproxy.transaction, sipproxy.transaction.testing\n"
        "assert not any(m.startswith('twisted') and sys.modules[m] for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
