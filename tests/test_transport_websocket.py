"""SIP over WebSocket (RFC 7118) against a pure-Python peer (wsproto's client) on a StringTransport: no sockets.

What a browser phone would notice: the handshake selects ``sip`` (and is
refused without it, or from an origin not allowed), each WebSocket message
is one SIP message arriving as "WS", answers go back as one text message
each, pings are answered and sent, an oversized message closes the
connection with 1009, and nothing is ever sent to a phone whose WebSocket
is gone.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from sipproxy.metrics import Metrics
from sipproxy.net import Source
from sipproxy.transport import TransportLayer, TransportLimits
from sipproxy.transport.websocket import SipWebSocketFactory, WebSocketSender, WebSocketSettings

PHONE = IPv4Address("TCP", "192.0.2.9", 40400)

REGISTER = (
    "REGISTER sip:example.test SIP/2.0\r\n"
    "Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK-ws1\r\n"
    "From: <sip:alice@example.test>;tag=a1\r\n"
    "To: <sip:alice@example.test>\r\n"
    "Call-ID: ws1@df7jal23ls0d.invalid\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>;reg-id=1\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


class Sink:
    def __init__(self) -> None:
        self.received: list[tuple[Any, Source]] = []

    def message_received(self, message: Any, source: Source, data: bytes) -> None:
        self.received.append((message, source))

    def unparseable(self, error: Any, source: Source, size: int) -> bool:
        return True


class Browser:
    """A WebSocket client (wsproto) on a StringTransport wired to one of our connections."""

    def __init__(
        self, settings: WebSocketSettings = WebSocketSettings(), limits: TransportLimits = TransportLimits()
    ) -> None:
        self.clock = Clock()
        self.layer = TransportLayer(metrics=Metrics(), limits=limits)
        self.sink = Sink()
        self.layer.sink = self.sink
        self.proto = SipWebSocketFactory(self.layer, self.clock, "WS", settings).buildProtocol(PHONE)
        assert self.proto is not None
        self.wire = StringTransport(peerAddress=PHONE)
        self.proto.makeConnection(self.wire)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Any] = []

    def handshake(self, subprotocols: list[str] = ["sip"], origin: str | None = None) -> Any:  # noqa: B006
        headers = [(b"origin", origin.encode())] if origin else []
        self.send(Request(host="sip.example.test", target="/", subprotocols=subprotocols, extra_headers=headers))
        return self.read()[0]

    def send(self, event: Any) -> None:
        self.proto.dataReceived(self.ws.send(event))

    def read(self) -> list[Any]:
        data = self.wire.value()
        self.wire.clear()
        self.ws.receive_data(data)
        events = list(self.ws.events())
        self.events += events
        return events


def test_the_handshake_selects_sip_and_a_message_arrives_as_one_sip_message_over_ws() -> None:
    browser = Browser()
    accepted = browser.handshake()
    assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "sip"
    browser.send(TextMessage(data=REGISTER))
    [(message, source)] = browser.sink.received
    assert message.method == "REGISTER"
    assert (source.transport, source.host, source.port) == ("WS", "192.0.2.9", 40400)
    assert browser.layer.connection("WS", "192.0.2.9", 40400) is source.connection


def test_a_message_in_fragments_and_a_binary_message_are_each_one_sip_message() -> None:
    browser = Browser()
    browser.handshake()
    half = len(REGISTER) // 2
    browser.send(TextMessage(data=REGISTER[:half], message_finished=False))
    assert browser.sink.received == []
    browser.send(TextMessage(data=REGISTER[half:], message_finished=True))
    browser.send(BytesMessage(data=REGISTER.replace("ws1", "ws2").encode()))
    assert [m.call_id for m, _ in browser.sink.received] == ["ws1@df7jal23ls0d.invalid", "ws2@df7jal23ls0d.invalid"]


def test_our_answer_is_one_text_message() -> None:
    browser = Browser()
    browser.handshake()
    browser.send(TextMessage(data=REGISTER))
    [(_, source)] = browser.sink.received
    assert source.connection is not None
    source.connection.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    [answer] = browser.read()
    assert isinstance(answer, TextMessage) and answer.data.startswith("SIP/2.0 200 OK")


def test_without_the_sip_subprotocol_the_handshake_is_400_and_nothing_is_taken() -> None:
    browser = Browser()
    rejected = browser.handshake(subprotocols=["chat"])
    assert isinstance(rejected, RejectConnection) and rejected.status_code == 400
    assert any(isinstance(e, RejectData) and b"sip subprotocol" in e.data for e in browser.events + browser.read())
    assert browser.wire.disconnecting
    assert browser.layer.connection("WS", "192.0.2.9", 40400) is None  # nothing is sent on it


def test_an_origin_not_allowed_is_403_and_one_allowed_connects() -> None:
    settings = WebSocketSettings(origins=frozenset({"https://phone.example.test"}))
    refused = Browser(settings).handshake(origin="https://evil.example")
    assert isinstance(refused, RejectConnection) and refused.status_code == 403
    assert isinstance(Browser(settings).handshake(origin="https://phone.example.test"), AcceptConnection)


def test_pings_are_answered_and_sent_on_an_idle_connection() -> None:
    browser = Browser(WebSocketSettings(ping_interval=30))
    browser.handshake()
    browser.send(Ping(payload=b"are you there"))
    [pong] = browser.read()
    assert isinstance(pong, Pong) and pong.payload == b"are you there"
    browser.clock.advance(30)
    [ping] = browser.read()
    assert isinstance(ping, Ping)


def test_a_message_over_the_limit_closes_with_1009() -> None:
    browser = Browser(limits=TransportLimits(max_message=1000))
    browser.handshake()
    browser.send(TextMessage(data="x" * 1001))
    [close] = browser.read()
    assert isinstance(close, CloseConnection) and close.code == 1009
    assert browser.sink.received == []
    assert browser.wire.disconnecting


def test_a_peer_that_is_not_websocket_is_dropped() -> None:
    browser = Browser()
    browser.proto.dataReceived(REGISTER.encode())  # SIP over plain TCP on the WebSocket port
    assert browser.wire.disconnecting or browser.wire.disconnected
    assert browser.sink.received == []


def test_a_close_from_the_phone_is_answered_and_the_connection_leaves_the_table() -> None:
    browser = Browser()
    browser.handshake()
    browser.send(CloseConnection(code=1000))
    [close] = browser.read()
    assert isinstance(close, CloseConnection)
    browser.proto.connectionLost(None)
    assert browser.layer.connections == {}


def test_the_sender_uses_the_phones_connection_and_never_opens_one() -> None:
    browser = Browser()
    browser.handshake()
    sender = WebSocketSender(browser.layer, "WS")
    errors: list[str] = []
    sender.send("192.0.2.9", 40400, b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n", errors.append)
    [frame] = browser.read()
    assert isinstance(frame, TextMessage) and frame.data.startswith("OPTIONS sip:x")
    sender.send("192.0.2.10", 40400, b"OPTIONS sip:y SIP/2.0\r\n\r\n", errors.append)
    assert errors == ["no WS connection from 192.0.2.10:40400: a WebSocket phone is reached only over its own"]


def test_a_connection_that_never_completes_its_handshake_counts_and_is_closed_after_the_message_timeout() -> None:
    browser = Browser(limits=TransportLimits(message_timeout=30))
    assert browser.layer.connection("WS", "192.0.2.9", 40400) is browser.proto  # the limits count it
    browser.clock.advance(30)
    assert browser.wire.disconnecting or browser.wire.disconnected


def test_a_double_crlf_message_is_answered_with_one_crlf_and_a_lone_crlf_is_dropped() -> None:
    # RFC 5626 §4.4.1 keep-alive as SIP.js sends it over a WebSocket (JsSIP answers ours the same way)
    browser = Browser()
    browser.handshake()
    browser.send(TextMessage(data="\r\n\r\n"))
    [pong] = browser.read()
    assert isinstance(pong, TextMessage) and pong.data == "\r\n"
    browser.send(TextMessage(data="\r\n"))  # a pong of the phone's: nothing to answer, nothing for SIP
    assert browser.read() == [] and browser.sink.received == []
