# -*- test-case-name: tests.test_transport_websocket -*-
"""SIP over WebSocket (RFC 7118): the ``sip`` subprotocol, one SIP message per WebSocket message, WS and WSS.

The browser phones (JsSIP, SIP.js) open a WebSocket to us and keep it: it is
the only way to reach them (their Contact names a ``.invalid`` host), so we
never open one ourselves; :class:`WebSocketSender` sends on the open
connection or fails at once.

- The opening handshake (RFC 6455 §4, RFC 7118 §4.1) must ask for the
  ``sip`` subprotocol, and we select it in our answer (JsSIP drops a
  connection whose answer does not); without it the answer is ``400``.
  With an Origin allow-list, a browser page from another origin gets
  ``403`` (RFC 6455 §10.2).
- Each WebSocket message, text or binary, is one whole SIP message
  (RFC 7118 §5.1): no Content-Length framing; we send text when the
  message is UTF-8 (every SIP message without a binary body), else binary.
- Pings are answered; we send one every ``ping_interval`` seconds so that
  NATs keep the connection and a dead peer is noticed.  RFC 7118 has no
  CRLF keep-alive, but SIP.js sends RFC 5626's double CRLF as a message of
  its own and waits for the single CRLF: we answer it so (JsSIP's
  ``Transport._onData`` answers a server's ``"\r\n\r\n"`` the same way
  and ignores a lone ``"\r\n"``).  A message larger
  than the transport's limit closes the connection with 1009.

The WebSocket layer is ``wsproto`` (sans-I/O, the library under Twisted
26.10's own ``twisted.web.websocket``), driven by this protocol: Twisted's
``WebSocketResource`` answers every handshake with ``AcceptConnection()``
and no subprotocol, so it cannot select ``sip``; autobahn would be a second
WebSocket stack (and WAMP) beside the one Twisted already depends on.
Everything else (the connection table, limits, idle timeout, the SIP trace)
is :class:`~sipproxy.transport.stream.SipStreamProtocol`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from sipproxy.transport.stream import SipStreamFactory, SipStreamProtocol

if TYPE_CHECKING:
    from sipproxy.net import DelayedCall
    from sipproxy.transport.layer import TransportLayer

__all__ = ["SUBPROTOCOL", "SipWebSocketFactory", "SipWebSocketProtocol", "WebSocketSender", "WebSocketSettings"]

SUBPROTOCOL = "sip"
"""RFC 7118 §4.1, registered with IANA: the subprotocol a SIP WebSocket client asks for and the server selects."""

KEEPALIVE_PING = b"\r\n\r\n"
"""RFC 5626 §4.4.1: the double-CRLF keep-alive, here one WebSocket message; its pong is one CRLF."""

MESSAGE_TOO_BIG = 1009
"""RFC 6455 §7.4.1: the close code for a message larger than we take."""


@dataclass(frozen=True)
class WebSocketSettings:
    origins: frozenset[str] | None = None
    """Origins (``https://phone.example.com``) whose pages may connect; ``None``: any (and clients that send none)."""
    ping_interval: float = 30.0
    """Seconds between our pings on an idle connection (0: none)."""


class SipWebSocketProtocol(SipStreamProtocol):
    """One inbound WebSocket connection carrying SIP; nothing is sent on it before its handshake is accepted."""

    def __init__(
        self,
        layer: TransportLayer,
        transport_name: str,
        clock: Any,
        *,
        inbound: bool = True,
        settings: WebSocketSettings = WebSocketSettings(),
    ) -> None:
        super().__init__(layer, transport_name, clock, inbound=inbound)
        self.settings = settings
        self.ws = WSConnection(ConnectionType.SERVER)
        self.accepted = False
        self._parts: list[bytes] = []
        self._size = 0
        self._ping: DelayedCall | None = None

    def connectionMade(self) -> None:
        # In the table (and counted by the limits) at once; the handshake must be done within the message deadline.
        self._opened(self.layer.limits.message_timeout)
        self.layer.connection_made(self)

    # -- incoming ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.last_active = self.clock.seconds()
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                self._event(event)
                if not self.alive:
                    return
        except (RemoteProtocolError, LocalProtocolError) as error:
            self._refuse(f"not a WebSocket peer ({error})")

    def _event(self, event: Any) -> None:
        if isinstance(event, Request):
            self._handshake(event)
        elif isinstance(event, TextMessage | BytesMessage):
            self._fragment(event)
        elif isinstance(event, Ping):
            self._write(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            if self.ws.state is not ConnectionState.CLOSED:
                self._write(self.ws.send(event.response()))
            self.close()

    def _handshake(self, request: Request) -> None:
        """RFC 6455 §4.2 and RFC 7118 §4.1: the ``sip`` subprotocol, and an Origin on the allow-list."""
        headers = {name.lower(): value for name, value in request.extra_headers}
        origin = headers.get(b"origin", b"").decode("latin-1")
        allowed = self.settings.origins
        if SUBPROTOCOL not in request.subprotocols:
            self._reject(400, "the WebSocket handshake must ask for the sip subprotocol (RFC 7118 section 4.1)")
            return
        if allowed is not None and origin not in allowed:
            self._reject(403, f"origin {origin or '(none)'} is not allowed")
            return
        self._write(self.ws.send(AcceptConnection(subprotocol=SUBPROTOCOL)))
        self.accepted = True
        self.setTimeout(self.layer.limits.idle_timeout)
        self._schedule_ping()

    def _reject(self, status: int, why: str) -> None:
        self.layer.drops.warn(
            "websocket-handshake",
            self.host,
            "Refused {transport} handshake from {host}:{port}: {status} {reason}",
            transport=self.transport_name,
            port=self.port,
            status=status,
            reason=why,
        )
        body = why.encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        self._write(self.ws.send(RejectConnection(status_code=status, headers=headers, has_body=True)))
        self._write(self.ws.send(RejectData(data=body)))
        self.close()

    def _fragment(self, event: Message[Any]) -> None:
        """RFC 7118 §5.1: a WebSocket message (perhaps in fragments) is one SIP message."""
        data = event.data.encode() if isinstance(event.data, str) else bytes(event.data)
        self._parts.append(data)
        self._size += len(data)
        limits = self.layer.limits
        if self._size > (limits.max_message or limits.max_head + limits.max_body):
            self.layer.metrics.inc(self.layer.metrics.blocked, "size")
            self._close_with(MESSAGE_TOO_BIG, "SIP message too large")
            return
        if not event.message_finished:
            return
        message, self._parts, self._size = b"".join(self._parts), [], 0
        if message == KEEPALIVE_PING:
            # RFC 5626 §4.4.1's double-CRLF ping in a frame of its own (SIP.js sends it and waits for the
            # CRLF; JsSIP answers ours so): the pong, one CRLF, as a text message.  Not a SIP message.
            self._write(self.ws.send(TextMessage(data="\r\n")))
            return
        if not message.strip():
            return  # an empty message, or a CRLF pong: nothing to hand up
        if not message.startswith((b"SIP/", b"ACK ")):
            self._unanswered += 1
        assert self.source is not None
        self.layer.received(message, self.source)

    def _refuse(self, why: str) -> None:
        self.layer.drops.warn(
            "framing",
            self.host,
            "Closing {transport} connection from {host}:{port}: {reason}",
            transport=self.transport_name,
            port=self.port,
            reason=why,
        )
        self.abort("framing")

    # -- outgoing ---------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """One SIP message as one WebSocket message: text if it is UTF-8, else binary (RFC 7118 §5.1)."""
        if not self.accepted or self.ws.state is not ConnectionState.OPEN:
            return
        self.layer.wire.outgoing(self.transport_name, self.host, self.port, data)
        try:
            frame = self.ws.send(TextMessage(data=data.decode("utf-8")))
        except UnicodeDecodeError:
            frame = self.ws.send(BytesMessage(data=data))
        self._write(frame)
        if data.startswith(b"SIP/2.0 ") and data[8:9] in b"23456":
            self._unanswered -= 1

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)  # type: ignore[call-arg,misc]

    def _close_with(self, code: int, reason: str) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
        self.close()

    def _schedule_ping(self) -> None:
        if self.settings.ping_interval > 0:
            self._ping = self.callLater(self.settings.ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        self._ping = None
        if self.alive and self.ws.state is ConnectionState.OPEN:
            self._write(self.ws.send(Ping(payload=b"sipproxy")))
            self._schedule_ping()

    def readConnectionLost(self) -> None:
        self.close()

    def timeoutConnection(self) -> None:
        if self.accepted:
            super().timeoutConnection()
        else:
            self._refuse("no WebSocket handshake within the message timeout")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        self._ping = None
        self._parts = []
        super().connectionLost(reason)


class SipWebSocketFactory(SipStreamFactory):
    """Accepts WebSocket connections (``name`` "WS", or "WSS" behind TLS) within the transport's limits."""

    def __init__(
        self, layer: TransportLayer, clock: Any, name: str = "WS", settings: WebSocketSettings = WebSocketSettings()
    ) -> None:
        super().__init__(layer, clock, name)
        self.settings = settings

    def connection(self) -> SipStreamProtocol:
        return SipWebSocketProtocol(self.layer, self.name, self.clock, settings=self.settings)


class WebSocketSender:
    """WS or WSS in the transport's table: only the connection the phone opened (we open none)."""

    def __init__(self, layer: TransportLayer, name: str) -> None:
        self.layer = layer
        self.name = name

    def send(self, host: str, port: int, data: bytes, on_error: Callable[[str], None], server_name: str = "") -> None:
        conn = self.layer.connection(self.name, host, port)
        if conn is None:
            on_error(f"no {self.name} connection from {host}:{port}: a WebSocket phone is reached only over its own")
            return
        conn.send(data)
