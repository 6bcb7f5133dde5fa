"""The call-flow capture as the transport's message tap: which messages it keeps, by Call-ID, in and out."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from sipproxy.calls.capture import Capture
from sipproxy.calls.ring import RecentCalls
from sipproxy.message import Request, make_response
from sipproxy.metrics import Metrics
from sipproxy.net import Source, Target
from sipproxy.security import Congestion, Guard
from sipproxy.transport import DatagramSender, SipDatagramProtocol, TransportLayer
from sipproxy.transport.sink import Tapped

try:
    from tests import messages
    from tests.fakes import FakeUDP
    from tests.security_fakes import settings
except ImportError:  # pragma: no cover
    import messages  # type: ignore[no-redef]
    from fakes import FakeUDP  # type: ignore[no-redef]
    from security_fakes import settings  # type: ignore[no-redef]

ALICE = ("192.0.2.7", 5060)


class Sink:
    def __init__(self) -> None:
        self.received: list[Any] = []

    def message_received(self, message: Any, source: Source, data: bytes) -> None:
        self.received.append((message, source))

    def unparseable(self, error: Any, source: Source, size: int) -> bool:
        return False


def stack() -> tuple[TransportLayer, RecentCalls, Clock, Sink, SipDatagramProtocol]:
    clock = Clock()
    clock.advance(1000)
    ring = RecentCalls()
    sink = Sink()
    capture = Capture(ring, clock)
    transport = TransportLayer(sink=Tapped(capture, sink), clock=clock, tap=capture)
    transport.register(DatagramSender(transport))
    protocol = SipDatagramProtocol(transport, 4)
    protocol.transport = FakeUDP()  # type: ignore[assignment]
    protocol.startProtocol()
    return transport, ring, clock, sink, protocol


def request(method: str = "INVITE", call_id: str = "call-1", to: str = "<sip:bob@example.test>") -> bytes:
    return messages.make_request(
        method,
        "sip:bob@example.test",
        via="SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1",
        call_id=call_id,
        to=to,
        cseq=f"1 {method}",
    )


def test_an_invite_starts_a_call_and_its_messages_join_it_both_ways() -> None:
    transport, ring, clock, sink, protocol = stack()
    data = request()
    protocol.datagramReceived(data, ALICE)
    (entry,) = ring.entries.values()
    assert entry.call_id == "call-1" and entry.messages[0].data == data and entry.messages[0].incoming
    invite: Request = sink.received[0][0]
    clock.advance(0.25)
    transport.send_request(invite.copy(), Target("UDP", "192.0.2.20", 5062), lambda reason: None)
    sent = transport.send_response(make_response(invite, 180, to_tag="b1"), sink.received[0][1])
    assert sent is not None
    clock.advance(0.5)
    transport.resend_response(sent)  # a server transaction's retransmission: no message, only bytes
    out = entry.messages[1:]
    assert [(m.incoming, m.host, m.port, m.at) for m in out] == [
        (False, "192.0.2.20", 5062, 1000.25),
        (False, "192.0.2.7", 5060, 1000.25),
        (False, "192.0.2.7", 5060, 1000.75),
    ]
    assert [m.retransmission for m in entry.messages] == [False, False, False, True]
    assert out[1].data.startswith(b"SIP/2.0 180 ")


def test_what_belongs_to_no_call_is_not_kept() -> None:
    transport, ring, clock, sink, protocol = stack()
    protocol.datagramReceived(request("REGISTER", "reg-1"), ALICE)
    protocol.datagramReceived(request("OPTIONS", "ping-1"), ALICE)
    protocol.datagramReceived(request("INVITE", "dialog-1", to="<sip:bob@example.test>;tag=b1"), ALICE)  # re-INVITE
    assert len(sink.received) == 3  # all of them went on to the transactions
    assert ring.entries == {}


def test_an_in_dialog_request_of_a_kept_call_joins_it() -> None:
    transport, ring, clock, sink, protocol = stack()
    protocol.datagramReceived(request(), ALICE)
    protocol.datagramReceived(request("BYE", to="<sip:bob@example.test>;tag=b1"), ALICE)
    (entry,) = ring.entries.values()
    assert [m.data.split(b" ", 1)[0] for m in entry.messages] == [b"INVITE", b"BYE"]


def test_without_a_tap_nothing_is_captured_and_sip_goes_on() -> None:
    clock = Clock()
    sink = Sink()
    transport = TransportLayer(sink=sink, clock=clock)
    transport.received(request(), Source("UDP", *ALICE))
    assert len(sink.received) == 1 and transport.tap is None


def _record(method: str, call_id: str, status: int) -> Any:
    from sipproxy.calls import CallRecord

    return CallRecord(
        method,
        call_id,
        "sip:alice@example.test",
        "sip:bob@example.test",
        "UDP 192.0.2.7:5060",
        1000,
        1000.5,
        status,
        "x",
    )


def test_a_failed_out_of_dialog_message_gets_its_ladder_from_what_was_held() -> None:
    """Issue 18: MESSAGE, OPTIONS, SUBSCRIBE... the proxy forwarded and that failed show their flow too."""
    transport, ring, clock, sink, protocol = stack()
    protocol.datagramReceived(request("MESSAGE", "msg-1"), ALICE)
    assert ring.entries == {} and list(ring.pending) == ["msg-1"]
    message: Request = sink.received[0][0]
    transport.send_request(message.copy(), Target("UDP", "192.0.2.20", 5062), lambda reason: None)
    reply = messages.make_response_bytes(404, "Not Found", method="MESSAGE", call_id="msg-1", cseq="1 MESSAGE")
    protocol.datagramReceived(reply, ("192.0.2.20", 5062))
    transport.send_response(make_response(message, 404), Source("UDP", *ALICE))
    ring(_record("MESSAGE", "msg-1", 404))  # the proxy's record, after its final response went out
    (entry,) = ring.entries.values()
    assert [(m.incoming, m.host, m.data.split(b"\r\n", 1)[0]) for m in entry.messages] == [
        (True, "192.0.2.7", b"MESSAGE sip:bob@example.test SIP/2.0"),
        (False, "192.0.2.20", b"MESSAGE sip:bob@example.test SIP/2.0"),
        (True, "192.0.2.20", b"SIP/2.0 404 Not Found"),
        (False, "192.0.2.7", b"SIP/2.0 404 Not Found"),
    ]
    assert ring.pending == {} and ring.pending_bytes == 0
    assert ring.calls()[0].record is not None and ring.calls()[0].record.method == "MESSAGE"


def test_held_requests_that_never_become_calls_make_way_without_taking_a_calls_place() -> None:
    from sipproxy.calls.ring import PENDING_CALLS

    transport, ring, clock, sink, protocol = stack()
    protocol.datagramReceived(request(), ALICE)  # a call
    for n in range(PENDING_CALLS + 10):  # OPTIONS pings the proxy answers itself: no record ever
        protocol.datagramReceived(request("OPTIONS", f"ping-{n}"), ALICE)
    assert list(ring.entries) == ["call-1"]
    assert len(ring.pending) == PENDING_CALLS and "ping-0" not in ring.pending
    protocol.datagramReceived(request("ACK", "ack-1"), ALICE)
    protocol.datagramReceived(request("CANCEL", "cancel-1"), ALICE)
    assert "ack-1" not in ring.pending and "cancel-1" not in ring.pending


def test_what_the_guard_refuses_never_reaches_the_capture_what_it_admits_does() -> None:
    """Behind the admission guard (as ``build_core`` wires it): a refused INVITE takes no place in the ring."""
    clock = Clock()
    clock.advance(1000)
    ring, sink = RecentCalls(), Sink()
    capture = Capture(ring, clock)
    congestion = Congestion(clock, 0.5, dwell=0)
    guard = Guard(settings(rate=None), clock, Metrics(), sink=Tapped(capture, sink), congestion=congestion)
    transport = TransportLayer(sink=guard, clock=clock, tap=capture)
    transport.register(DatagramSender(transport))
    guard.reply = transport.send_to_source
    protocol = SipDatagramProtocol(transport, 4)
    protocol.transport = FakeUDP()  # type: ignore[assignment]
    protocol.startProtocol()
    congestion.datagram_waited(0.45)  # overloaded: one new request in two refused
    congestion.admitted = 0.5
    for n in range(4):
        protocol.datagramReceived(request(call_id=f"call-{n}"), ALICE)
    assert len(protocol.transport.written) == 2  # type: ignore[attr-defined]  # two 503s
    assert sorted(ring.entries) == ["call-1", "call-3"]  # the admitted, each with its INVITE alone
    assert [len(entry.messages) for entry in ring.entries.values()] == [1, 1]
