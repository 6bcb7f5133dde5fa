# -*- test-case-name: tests.test_transport -*-
"""The transport layer (RFC 3261 §18, RFC 3581): bytes in and out, on every transport registered by name.

Incoming bytes are parsed, a request's top Via is stamped with
``received``/``rport`` (§18.2.1, RFC 3581), and the message goes to the
:class:`~sipproxy.transport.sink.MessageSink` (the admission guard, then
the transaction layer).  Outgoing messages go where §18.2.2 says, through
the :class:`Sender` registered under the transport's name: UDP
(``udp.DatagramSender``) and TCP (``stream.StreamSender``) today; TLS,
WS and WSS are one more registration each, over the same connection table,
keyed by (transport, host, port).

This is the one boundary where errors from the network stop: nothing
raised here escapes into the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from twisted.logger import Logger

from sipproxy.message import ParseError, Request, Response, make_response, parse_message
from sipproxy.message.uri import is_ip_address
from sipproxy.metrics import Metrics
from sipproxy.net import Connection, Source, Target, is_reliable
from sipproxy.transport.address import normalize_host
from sipproxy.transport.sink import MessageSink
from sipproxy.transport.wirelog import WireLog

__all__ = ["Sender", "SentResponse", "StreamConnection", "TransportLayer", "TransportLimits"]

OnError = Callable[[str], None]


@dataclass(frozen=True)
class TransportLimits:
    max_datagram: int = 65507
    max_connections: int = 1024
    max_connections_per_address: int = 64
    idle_timeout: float = 600.0
    connect_timeout: float = 10.0
    max_head: int = 65536
    max_body: int = 1 << 20
    max_message: int | None = None
    """The largest message a stream may buffer (``--max-message-size``; ``None``: ``max_head`` + ``max_body``)."""


class Sender(Protocol):
    """One transport's way out (§18.1.1, §18.2.2), registered with :meth:`TransportLayer.register`."""

    @property
    def name(self) -> str:
        """The transport's name as Via and :class:`~sipproxy.net.Target` spell it: ``"UDP"``, ``"TCP"``."""

    def send(self, host: str, port: int, data: bytes, on_error: OnError) -> None:
        """Send one whole message to ``host`` (a bare IP address) and ``port``; failures raise or go to ``on_error``."""


class StreamConnection(Connection, Protocol):
    """A connection in the table: a :class:`~sipproxy.net.Connection` that knows its key."""

    transport_name: str
    host: str
    port: int

    def close(self) -> None:
        """Close the connection (what is queued is still written)."""


class SentResponse(NamedTuple):
    """A response as sent: its bytes and where they went (the token ``resend_response`` takes).

    ``connection`` is the connection the request came on (reliable
    transports); ``host`` and ``port`` are where the Via sends it otherwise,
    or when that connection has closed.
    """

    data: bytes
    transport: str
    host: str
    port: int
    connection: Any


class DatagramWriter(Protocol):
    def write(self, data: bytes, addr: tuple[str, int]) -> Any: ...


class TransportLayer:
    """Implements the transaction layer's ``Transport``; owns the UDP sockets and the connection table."""

    log = Logger()

    def __init__(
        self,
        wirelog: WireLog | None = None,
        metrics: Metrics | None = None,
        limits: TransportLimits = TransportLimits(),
        sink: MessageSink | None = None,
    ) -> None:
        self.wire = wirelog if wirelog is not None else WireLog()
        self.metrics = metrics if metrics is not None else Metrics()
        self.limits = limits
        self.sink = sink
        """Where every message received goes (the guard in front of the transaction layer)."""
        self.senders: dict[str, Sender] = {}
        """The transports we send on, by name (:meth:`register`)."""
        self.udp: dict[int, DatagramWriter] = {}
        """The UDP sockets by address family (4, 6), filled by the listening ``SipDatagramProtocol``s."""
        self.connections: dict[tuple[str, str, int], StreamConnection] = {}
        """Open stream connections by (transport, host, port), inbound and outbound alike."""
        self._pending: dict[tuple[str, str, int], list[tuple[bytes, OnError]]] = {}
        self.listening = 0

    def register(self, sender: Sender) -> None:
        """Send on ``sender.name`` through ``sender`` (one registration per transport)."""
        self.senders[sender.name.upper()] = sender

    # -- incoming -------------------------------------------------------

    def received(self, data: bytes, source: Source) -> None:
        """One whole message from the network.  Never raises."""
        self.wire.incoming(source.transport, source.host, source.port, data)
        message: Request | Response | None = None
        try:
            try:
                message = parse_message(data)
            except ParseError as exc:
                assert self.sink is not None
                if self.sink.unparseable(exc, source, len(data)):
                    self._parse_error(exc, source)
                return
            if isinstance(message, Request):
                self._stamp_via(message, source)
            assert self.sink is not None
            self.sink.message_received(message, source, len(data))
        except ParseError as exc:
            partial = message if isinstance(message, Request) else None
            self._parse_error(exc.with_partial(partial), source)
        except Exception:
            self.log.failure(
                "Bug while handling a message from {transport} {host}:{port}",
                transport=source.transport,
                host=source.host,
                port=source.port,
            )

    def _parse_error(self, exc: ParseError, source: Source) -> None:
        self.metrics.inc(self.metrics.parse_errors, source.transport)
        partial = exc.partial
        if partial is None or partial.method == "ACK":
            self.log.warn(
                "Dropped unparseable message from {transport} {host}:{port}: {reason}",
                transport=source.transport,
                host=source.host,
                port=source.port,
                reason=exc.reason,
            )
            return
        self.log.warn(
            "Rejected {method} from {transport} {host}:{port}: {status} {reason}",
            method=partial.method,
            transport=source.transport,
            host=source.host,
            port=source.port,
            status=exc.status,
            reason=exc.reason,
        )
        response = make_response(partial, exc.status, exc.reason)
        # The Via may be what was broken: answer the packet's source directly.
        self.send_to_source(response, source)

    def _stamp_via(self, request: Request, source: Source) -> None:
        """§18.2.1 and RFC 3581: add ``received``, fill ``rport``."""
        via = request.top_via
        needs_received = via.host_bare.lower() != source.host.lower()
        if not needs_received and not via.wants_rport:
            return
        via.params["received"] = source.host
        if via.wants_rport:
            via.params["rport"] = str(source.port)
        request.replace_top_via(via)

    # -- outgoing -------------------------------------------------------

    def send_request(self, request: Request, target: Target, on_error: OnError) -> None:
        self.metrics.method(self.metrics.requests_out, request.method)
        self._send(target.transport, target.host, target.port, request.to_bytes(), on_error)

    def send_response(self, response: Response, source: Source | None) -> SentResponse | None:
        """§18.2.2: the connection the request came on, else ``received``/``rport``, else sent-by.

        ``source`` is ``None`` for a response forwarded statelessly (a 2xx
        retransmission): then only its Via says where it goes.  Returns what
        :meth:`resend_response` needs to send the same bytes again, or
        ``None`` when the response went nowhere.
        """
        self.metrics.status(self.metrics.responses_out, response.status)
        sent = self._response_route(response, source)
        if sent is not None:
            self.resend_response(sent)
        return sent

    def resend_response(self, sent: object) -> None:
        """Send a response again, as ``send_response`` sent it (a server transaction's retransmission)."""
        assert isinstance(sent, SentResponse)
        if sent.connection is not None and sent.connection.alive:
            sent.connection.send(sent.data)
            return
        self._send(sent.transport, sent.host, sent.port, sent.data, self._response_failed)

    def send_to_source(self, response: Response, source: Source) -> None:
        """Straight back where the request came from, whatever its Via says (its connection, else its address).

        For answers given before any transaction exists: a 400 for what did
        not parse, and the admission guard's stateless 403/503/513.
        """
        self.metrics.status(self.metrics.responses_out, response.status)
        data = response.to_bytes()
        self.resend_response(SentResponse(data, source.transport, source.host, source.port, source.connection))

    def _response_route(self, response: Response, source: Source | None) -> SentResponse | None:
        data = response.to_bytes()
        conn = source.connection if source is not None else None
        reliable = conn is not None and is_reliable(source.transport) and conn.alive  # type: ignore[union-attr]
        try:
            via = response.top_via
        except ParseError:  # the Via may be what was broken: back to the packet's source
            if source is None:
                return None
            return SentResponse(data, source.transport, source.host, source.port, conn if reliable else None)
        transport = via.transport if via.transport in self.senders else (source.transport if source else "UDP")
        if via.maddr and is_ip_address(via.maddr):
            host, port = normalize_host(via.maddr), via.port or 5060
        elif via.received:
            host = normalize_host(via.received)
            port = via.rport or via.port or 5060
        elif is_ip_address(via.host_bare):
            host, port = normalize_host(via.host_bare), via.port or 5060
        elif source is not None:
            host, port = source.host, source.port
        else:
            self.log.warn("Dropped a response: its Via names host {host}, which we do not resolve", host=via.host)
            return None
        # §18.2.2: on a reliable transport the connection the request came on,
        # and if it is gone by then, where the Via says.
        return SentResponse(data, transport, host, port, conn if reliable else None)

    def _response_failed(self, reason: str) -> None:
        self.log.warn("Could not send a response: {reason}", reason=reason)

    def _send(self, transport: str, host: str, port: int, data: bytes, on_error: OnError) -> None:
        sender = self.senders.get(transport.upper())
        if sender is None:
            on_error(f"transport {transport} is not supported")
            return
        try:
            sender.send(normalize_host(host), port, data, on_error)
        except Exception as exc:  # the socket said no: tell the transaction, not the reactor
            on_error(f"{type(exc).__name__}: {exc}")

    # -- the connection table (the stream protocols and senders) ------------

    def connection(self, transport: str, host: str, port: int) -> StreamConnection | None:
        """The open connection to (``transport``, ``host``, ``port``), if there is one."""
        conn = self.connections.get((transport.upper(), normalize_host(host), port))
        return conn if conn is not None and conn.alive else None

    def has_flow(self, target: Target) -> bool:
        """Is a connection open to ``target`` (its transport, host and port)?  A flow a REGISTER came on, say."""
        return self.connection(target.transport, target.host, target.port) is not None

    def await_connection(self, transport: str, host: str, port: int, data: bytes, on_error: OnError) -> bool:
        """Queue ``data`` for the connection being opened to (transport, host, port).

        True when nothing was queued there yet: the caller opens the
        connection, and :meth:`connection_made` or :meth:`connect_failed`
        then empties the queue.
        """
        key = (transport.upper(), host, port)
        pending = self._pending.get(key)
        if pending is not None:
            pending.append((data, on_error))
            return False
        self._pending[key] = [(data, on_error)]
        return True

    def close_connections(self) -> None:
        """Close every connection in the table (at shutdown)."""
        for conn in list(self.connections.values()):
            conn.close()

    def admit(self, host: str) -> bool:
        """May one more connection from ``host`` be accepted?"""
        if len(self.connections) >= self.limits.max_connections:
            return False
        same = sum(1 for _, h, _ in self.connections if h == host)
        return same < self.limits.max_connections_per_address

    def connection_made(self, conn: StreamConnection) -> None:
        key = (conn.transport_name, conn.host, conn.port)
        self.connections[key] = conn
        for data, _ in self._pending.pop(key, []):
            conn.send(data)

    def connection_lost(self, conn: StreamConnection) -> None:
        key = (conn.transport_name, conn.host, conn.port)
        if self.connections.get(key) is conn:
            del self.connections[key]

    def connect_failed(self, transport: str, host: str, port: int, reason: str) -> None:
        self.log.warn(
            "{transport} connection to {host}:{port} failed: {reason}",
            transport=transport,
            host=host,
            port=port,
            reason=reason,
        )
        for _, on_error in self._pending.pop((transport.upper(), host, port), []):
            try:
                on_error(f"{transport} connection to {host}:{port} failed: {reason}")
            except Exception:
                self.log.failure("Bug in a transport error callback")
