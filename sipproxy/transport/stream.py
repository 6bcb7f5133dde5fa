# -*- test-case-name: tests.test_transport -*-
"""SIP over a stream: framing by Content-Length, CRLF keep-alives, timeouts (RFC 3261 §18.3, RFC 5626 §3.5.1).

Two clocks run on a connection: the idle timeout (any byte resets it), and
the message deadline: a message must arrive whole within
``message_timeout`` seconds of its first byte, so that a peer trickling a
byte at a time cannot hold a connection slot for ever.

One protocol for every stream transport; its name (``"TCP"``, or
``"TLS"`` in :mod:`sipproxy.transport.tls`) comes from the factory that built it, and goes into its
:class:`~sipproxy.net.Source`, its key in the connection table, its log
lines and its metrics labels.  :class:`StreamSender` is a stream
transport's entry in the transport layer's table of senders: it reuses an
open connection to the destination, else opens one through its connector
(``tcp_connector`` here; a TLS module brings its own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from sipproxy.message import KEEPALIVE, FramingError, ParseError, Request, StreamFramer, make_response, parse_message
from sipproxy.net import Clock, DelayedCall, Source
from sipproxy.transport.address import normalize_host

if TYPE_CHECKING:
    from sipproxy.transport.layer import TransportLayer

__all__ = [
    "Connect",
    "SipClientFactory",
    "SipStreamFactory",
    "SipStreamProtocol",
    "StreamSender",
    "tcp_connector",
]

_PONG = b"\r\n"

HALF_CLOSED_LINGER = 32.0
"""Seconds a half-closed connection waits for its answers: 64*T1, Timer F, a non-INVITE's longest (§17.1.2.2)."""

Connect = Callable[[str, int, "TransportLayer", float], Any]
"""``connect(host, port, layer, timeout)``: open an outbound connection whose protocol reports to ``layer``."""


@implementer(IHalfCloseableProtocol)
class SipStreamProtocol(Protocol, TimeoutMixin):
    """One stream connection, inbound or outbound; registered in the transport's connection table.

    A peer may shut down its sending side after its request (a half-close):
    the connection stays open until every request it sent has its final
    response (or ``HALF_CLOSED_LINGER`` seconds), then closes.
    """

    log = Logger()

    def __init__(self, layer: TransportLayer, transport_name: str, clock: Clock, *, inbound: bool = False) -> None:
        self.layer = layer
        self.transport_name = transport_name
        self.clock = clock
        self.callLater = clock.callLater  # type: ignore[method-assign,assignment]
        self.inbound = inbound
        self.framer = self._new_framer()
        self.host = ""
        self.port = 0
        self.alive = False
        self.source: Source | None = None
        self.last_active = clock.seconds()
        self._deadline: DelayedCall | None = None
        self.read_closed = False
        """The peer half-closed: it sends nothing more."""
        self._unanswered = 0
        """Requests received (not ACK) minus final responses sent: what a half-closed connection waits for."""

    def _new_framer(self) -> StreamFramer:
        limits = self.layer.limits
        return StreamFramer(limits.max_head, limits.max_body, limits.max_message)

    def connectionMade(self) -> None:
        self._opened(self.layer.limits.idle_timeout)
        self.layer.connection_made(self)

    def _opened(self, timeout: float) -> None:
        """Who the peer is; the connection counts as open (not yet in the table: :meth:`connectionMade` puts it)."""
        peer: IAddress = self.transport.getPeer()  # type: ignore[union-attr]
        self.host = normalize_host(peer.host)  # type: ignore[attr-defined]
        self.port = peer.port  # type: ignore[attr-defined]
        self.source = Source(self.transport_name, self.host, self.port, self)
        self.alive = True
        self.setTimeout(timeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.last_active = self.clock.seconds()
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
                self._stop_deadline()  # a message arrived whole: the next one gets its own deadline
                if not item.startswith((b"SIP/", b"ACK ")):
                    self._unanswered += 1
                self.layer.received(item, self.source)
            if not self.alive:
                return
        if self.framer.buffered and self._deadline is None:
            self._deadline = self.callLater(self.layer.limits.message_timeout, self._message_timed_out)
        elif not self.framer.buffered:
            self._stop_deadline()

    @property
    def idle(self) -> float:
        """Seconds since this connection last received a byte (the limits drop the longest idle first)."""
        return self.clock.seconds() - self.last_active

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _message_timed_out(self) -> None:
        """A message started ``message_timeout`` seconds ago and is still not whole: a slow sender holding a slot."""
        self._deadline = None
        self.layer.drops.warn(
            "timeout",
            self.host,
            "Closing {transport} connection from {host}:{port}: no whole message within {timeout:g} s of its "
            "first byte ({size} bytes buffered)",
            transport=self.transport_name,
            port=self.port,
            timeout=self.layer.limits.message_timeout,
            size=self.framer.buffered,
        )
        self.abort("timeout")

    def _framing_error(self, exc: FramingError) -> None:
        assert self.source is not None
        self.layer.drops.warn(
            "framing",
            self.host,
            "Closing {transport} connection from {host}:{port}: {reason}",
            transport=self.transport_name,
            port=self.port,
            reason=exc.reason,
        )
        self.layer.metrics.parse_errors.labels(self.transport_name).inc()
        if exc.head:
            # Answer what we can (e.g. 400 Missing Content-Length), then close.
            try:
                message = parse_message(exc.head + b"\r\n\r\n")
            except ParseError as inner:
                message = inner.partial
            if isinstance(message, Request) and message.method != "ACK":
                if exc.status == 513:
                    self.layer.metrics.inc(self.layer.metrics.blocked, "size")
                self.send(make_response(message, exc.status, exc.reason).to_bytes())
        self.close()

    def send(self, data: bytes) -> None:
        """Write one message (or keep-alive answer) on this connection, with the SIP trace."""
        self.layer.wire.outgoing(self.transport_name, self.host, self.port, data)
        self.transport.write(data)  # type: ignore[union-attr]
        if data.startswith(b"SIP/2.0 ") and data[8:9] in b"23456" and len(data) > 8:
            self._unanswered -= 1
            if self.read_closed and self._unanswered <= 0:
                self.close()

    def readConnectionLost(self) -> None:
        """The peer shut down its side (``shutdown(SHUT_WR)``): answer what it asked, then close (§18.2.2)."""
        self.read_closed = True
        self._stop_deadline()  # a partial message will never be finished
        if self._unanswered <= 0:
            self.close()
        else:
            self.setTimeout(min(HALF_CLOSED_LINGER, self.layer.limits.idle_timeout))

    def writeConnectionLost(self) -> None:
        self.close()

    def close(self) -> None:
        """Close this connection; what was written is still sent."""
        self.alive = False
        self.transport.loseConnection()  # type: ignore[union-attr]

    def abort(self, reason: str) -> None:
        """Drop this connection now, unsent bytes and all (a peer that does not read cannot hold it open)."""
        self.alive = False
        self.layer.metrics.inc(self.layer.metrics.tcp_closed, reason)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def timeoutConnection(self) -> None:
        self.log.info(
            "Closing idle {transport} connection {host}:{port}",
            transport=self.transport_name,
            host=self.host,
            port=self.port,
        )
        self.close()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Leave the table and let go of what the connection held, so that reference counting frees it.

        The server runs full garbage collections only every 10 minutes
        (:mod:`sipproxy.gctune`): a closed connection still in a reference
        cycle (its :class:`~sipproxy.net.Source` names it) kept its partial
        message for that long, 1 MiB each.  Transactions still holding the
        source see ``alive`` False and let go of it when they end.
        """
        self.alive = False
        self.setTimeout(None)
        self._stop_deadline()
        self.layer.connection_lost(self)
        self.source = None
        self.framer = self._new_framer()


class SipStreamFactory(Factory):
    """Accepts inbound connections of one stream transport (``name``), within the transport's limits."""

    noisy = False

    def __init__(
        self,
        layer: TransportLayer,
        clock: Any,
        name: str = "TCP",
        connection_class: type[SipStreamProtocol] = SipStreamProtocol,
    ) -> None:
        self.layer = layer
        self.clock = clock
        self.name = name
        self.connection_class = connection_class

    def buildProtocol(self, addr: IAddress) -> SipStreamProtocol | None:  # type: ignore[override]
        host = normalize_host(addr.host)  # type: ignore[attr-defined]
        if not self.layer.admit(host):
            self.layer.drops.warn(
                "refused",
                host,
                "Refused {transport} connection from {host}: connection limit, every slot holds a registered flow",
                transport=self.name,
            )
            self.layer.metrics.blocked.labels(f"{self.name.lower()}-connections").inc()
            return None
        return self.connection()

    def connection(self) -> SipStreamProtocol:
        """A new inbound connection's protocol, once the limits admitted it."""
        return self.connection_class(self.layer, self.name, self.clock, inbound=True)


class SipClientFactory(ClientFactory):
    """An outbound connection opened to send a request (or a response whose connection closed)."""

    noisy = False

    def __init__(
        self,
        layer: TransportLayer,
        clock: Any,
        host: str,
        port: int,
        name: str,
        connection_class: type[SipStreamProtocol] = SipStreamProtocol,
    ) -> None:
        self.layer = layer
        self.clock = clock
        self.host = host
        self.port = port
        self.name = name
        self.connection_class = connection_class

    def buildProtocol(self, addr: IAddress) -> SipStreamProtocol:  # type: ignore[override]
        return self.connection_class(self.layer, self.name, self.clock)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.layer.connect_failed(self.name, self.host, self.port, reason.getErrorMessage())


class StreamSender:
    """A stream transport in the transport's table: the open connection to the destination, else a new one (§18.1.1).

    Messages sent while the connection is being opened wait for it; if it
    cannot be opened, each one's ``on_error`` hears why.
    """

    def __init__(self, layer: TransportLayer, name: str, connect: Connect) -> None:
        self.layer = layer
        self.name = name
        self.connect = connect

    def send(self, host: str, port: int, data: bytes, on_error: Callable[[str], None]) -> None:
        layer = self.layer
        conn = layer.connection(self.name, host, port)
        if conn is not None:
            conn.send(data)
        elif layer.await_connection(self.name, host, port, data, on_error):
            self.connect(host, port, layer, layer.limits.connect_timeout)


def tcp_connector(reactor: Any, clock: Any) -> Connect:
    """The :data:`Connect` of TCP, over ``reactor.connectTCP``."""

    def connect(host: str, port: int, layer: TransportLayer, timeout: float) -> None:
        reactor.connectTCP(host, port, SipClientFactory(layer, clock, host, port, "TCP"), timeout=timeout)

    return connect
