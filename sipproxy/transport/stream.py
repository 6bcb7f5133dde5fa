"""SIP over TCP: framing by Content-Length, CRLF keep-alives, idle timeout (RFC 3261 §18.3, RFC 5626 §3.5.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from sipproxy.message import KEEPALIVE, FramingError, ParseError, Request, StreamFramer, make_response, parse_message
from sipproxy.transaction import Source
from sipproxy.transport.address import normalize_host

if TYPE_CHECKING:
    from sipproxy.transport.layer import TransportLayer

__all__ = ["SipStreamProtocol", "SipStreamFactory", "SipClientFactory", "tcp_connector"]

_PONG = b"\r\n"


class SipStreamProtocol(Protocol, TimeoutMixin):
    """One TCP connection, inbound or outbound; registered in the transport's connection table."""

    log = Logger()

    def __init__(self, layer: TransportLayer, transport_name: str = "TCP") -> None:
        self.layer = layer
        self.transport_name = transport_name
        self.framer = StreamFramer(layer.limits.max_head, layer.limits.max_body)
        self.host = ""
        self.port = 0
        self.alive = False
        self.source: Source | None = None

    def connectionMade(self) -> None:
        peer: IAddress = self.transport.getPeer()  # type: ignore[union-attr]
        self.host = normalize_host(peer.host)  # type: ignore[attr-defined]
        self.port = peer.port  # type: ignore[attr-defined]
        self.source = Source(self.transport_name, self.host, self.port, self)
        self.alive = True
        self.setTimeout(self.layer.limits.idle_timeout)
        self.layer.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        try:
            items = self.framer.feed(data)
        except FramingError as exc:
            self._framing_error(exc)
            return
        for item in items:
            if item is KEEPALIVE:
                self.transport.write(_PONG)  # type: ignore[union-attr]
            else:
                assert isinstance(item, bytes) and self.source is not None
                self.layer.received(item, self.source)
            if not self.alive:
                return

    def _framing_error(self, exc: FramingError) -> None:
        assert self.source is not None
        self.log.warn(
            "Closing TCP connection from {host}:{port}: {reason}", host=self.host, port=self.port, reason=exc.reason
        )
        self.layer.metrics.parse_errors.labels(self.transport_name).inc()
        if exc.head:
            # Answer what we can (e.g. 400 Missing Content-Length), then close.
            try:
                message = parse_message(exc.head + b"\r\n\r\n")
            except ParseError as inner:
                message = inner.partial
            if isinstance(message, Request) and message.method != "ACK":
                self.send(make_response(message, 400, exc.reason).to_bytes())
        self.alive = False
        self.transport.loseConnection()  # type: ignore[union-attr]

    def send(self, data: bytes) -> None:
        """Write one message (or keep-alive answer) on this connection, with the SIP trace."""
        self.layer.wire.outgoing(self.transport_name, self.host, self.port, data)
        self.transport.write(data)  # type: ignore[union-attr]

    def timeoutConnection(self) -> None:
        self.log.info("Closing idle TCP connection {host}:{port}", host=self.host, port=self.port)
        self.alive = False
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.alive = False
        self.setTimeout(None)
        self.layer.connection_lost(self)


class SipStreamFactory(Factory):
    """Accepts inbound connections, within the transport's limits."""

    log = Logger()
    noisy = False

    def __init__(self, layer: TransportLayer, clock: Any) -> None:
        self.layer = layer
        self.clock = clock

    def buildProtocol(self, addr: IAddress) -> SipStreamProtocol | None:  # type: ignore[override]
        host = normalize_host(addr.host)  # type: ignore[attr-defined]
        if not self.layer.admit(host):
            self.log.warn("Refused TCP connection from {host}: connection limit", host=host)
            self.layer.metrics.blocked.labels("tcp-connections").inc()
            return None
        proto = SipStreamProtocol(self.layer)
        proto.callLater = self.clock.callLater  # type: ignore[method-assign]
        return proto


class SipClientFactory(ClientFactory):
    """An outbound connection opened to send a request (or a response whose connection closed)."""

    noisy = False

    def __init__(self, layer: TransportLayer, clock: Any, host: str, port: int) -> None:
        self.layer = layer
        self.clock = clock
        self.host = host
        self.port = port

    def buildProtocol(self, addr: IAddress) -> SipStreamProtocol:  # type: ignore[override]
        proto = SipStreamProtocol(self.layer)
        proto.callLater = self.clock.callLater  # type: ignore[method-assign]
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.layer.connect_failed(self.host, self.port, reason.getErrorMessage())


def tcp_connector(reactor: Any, clock: Any) -> Any:
    """The ``connect_tcp`` callable for :class:`TransportLayer`, over ``reactor.connectTCP``."""

    def connect(host: str, port: int, layer: TransportLayer, timeout: float) -> None:
        reactor.connectTCP(host, port, SipClientFactory(layer, clock, host, port), timeout=timeout)

    return connect
