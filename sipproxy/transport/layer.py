# -*- test-case-name: tests.test_transport -*-
"""The transport layer (RFC 3261 §18, RFC 3581): bytes in and out, on every transport registered by name.

Incoming bytes are parsed, a request's top Via is stamped with
``received``/``rport`` (§18.2.1, RFC 3581), and the message goes to the
:class:`~sipproxy.transport.sink.MessageSink` (the admission guard, then
the transaction layer).  Outgoing messages go where §18.2.2 says, through
the :class:`Sender` registered under the transport's name: UDP
(``udp.DatagramSender``), TCP (``stream.StreamSender``) and TLS
(``tls.TLSSender``); WS and WSS are one more registration each, over the same connection table,
keyed by (transport, host, port).

This is the one boundary where errors from the network stop: nothing
raised here escapes into the reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from twisted.logger import Logger

from sipproxy.message import ParseError, Request, Response, Via, make_response, parse_message
from sipproxy.message.uri import is_ip_address
from sipproxy.metrics import Metrics
from sipproxy.net import Clock, Connection, Source, Target, is_reliable
from sipproxy.transport.address import address_key, normalize_host
from sipproxy.transport.droplog import DropLog
from sipproxy.transport.sink import MessageSink, MessageTap
from sipproxy.transport.wirelog import WireLog

__all__ = ["HoldsFlow", "Sender", "SentResponse", "StreamConnection", "TransportLayer", "TransportLimits"]

OnError = Callable[[str], None]


@dataclass(frozen=True)
class TransportLimits:
    max_datagram: int = 65507
    max_connections: int = 1024
    max_connections_per_address: int = 64
    idle_timeout: float = 600.0
    message_timeout: float = 30.0
    """Seconds a stream message (header section and body) may take from its first byte (``--tcp-message-timeout``)."""
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
        """Send one whole message to ``host`` (a bare IP address) and ``port``; failures raise or go to ``on_error``.

        A sender for a transport that checks certificates (TLS) also takes
        ``server_name=``, the name the peer's certificate must show
        (:attr:`sipproxy.net.Target.name`), given whenever the target has one.
        """


class StreamConnection(Connection, Protocol):
    """A connection in the table: a :class:`~sipproxy.net.Connection` that knows its key."""

    transport_name: str
    host: str
    port: int
    inbound: bool
    """Did the peer open it (the limits may close it), or did we (to send)?"""

    @property
    def idle(self) -> float:
        """Seconds since it last received a byte."""

    def close(self) -> None:
        """Close the connection (what is queued is still written)."""

    def abort(self, reason: str) -> None:
        """Drop the connection now, for ``reason`` (a ``sip_tcp_connections_closed`` label)."""


HoldsFlow = Callable[[str, str, int], bool]
"""``holds_flow(transport, host, port)``: does a registered binding come from that connection (RFC 5626 §3)?"""


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
        *,
        holds_flow: HoldsFlow = lambda transport, host, port: False,
        clock: Clock | None = None,
        tap: MessageTap | None = None,
    ) -> None:
        self.wire = wirelog if wirelog is not None else WireLog()
        self.metrics = metrics if metrics is not None else Metrics()
        self.limits = limits
        self.holds_flow = holds_flow
        self.drops = DropLog(clock)
        """Warnings about what is dropped, bounded per source and per 10 s (``clock``: none, every one is written)."""
        """Connections holding a registered binding are never closed to make room (``flows.RegisteredFlows``)."""
        self.tap = tap
        """Sees every message sent (the recent calls' capture, which a ``Tapped`` sink shows what is admitted);
        ``None``: nobody."""
        self.feedback: Callable[[Via], Via | None] | None = None
        """Rewrites the client's Via of each response we send (RFC 7339 ``oc``, the security layer's); ``None``
        or a ``None`` answer: it goes as it is."""
        self.sink = sink
        """Where every message received goes (the guard in front of the transaction layer)."""
        self.senders: dict[str, Sender] = {}
        """The transports we send on, by name (:meth:`register`)."""
        self.udp: dict[int, DatagramWriter] = {}
        self.request_senders: dict[str, Sender] = {}
        """Senders for requests only, by transport: with ``--workers``, UDP from the worker's own port."""
        """The UDP sockets by address family (4, 6), filled by the listening ``SipDatagramProtocol``s."""
        self.connections: dict[tuple[str, str, int], StreamConnection] = {}
        """Open stream connections by (transport, host, port), inbound and outbound alike."""
        self._pending: dict[tuple[str, str, int], list[tuple[bytes, OnError]]] = {}
        self.flow_closed: Callable[[str, str, int], None] | None = None
        """Told (transport, host, port) when a connection left the table: its flow is gone (RFC 5626 §5.3)."""
        self.listening = 0
        self.metrics.watch(self.metrics.tcp_connections, lambda: len(self.connections))

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
            self.sink.message_received(message, source, data)
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
            self.drops.warn(
                "unparseable",
                source.host,
                "Dropped unparseable message from {transport} {host}:{port}: {reason}",
                transport=source.transport,
                port=source.port,
                reason=exc.reason,
            )
            return
        self.drops.warn(
            "rejected",
            source.host,
            "Rejected {method} from {transport} {host}:{port}: {status} {reason}",
            method=partial.method,
            transport=source.transport,
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
        data = request.to_bytes()
        if self.tap is not None:
            self.tap.sent(request, target.transport, target.host, target.port, data)
        self._send(target.transport, target.host, target.port, data, on_error, target.name, requests=True)

    def send_response(self, response: Response, source: Source | None) -> SentResponse | None:
        """§18.2.2: the connection the request came on, else ``received``/``rport``, else sent-by.

        ``source`` is ``None`` for a response forwarded statelessly (a 2xx
        retransmission): then only its Via says where it goes.  Returns what
        :meth:`resend_response` needs to send the same bytes again, or
        ``None`` when the response went nowhere.
        """
        self.metrics.status(self.metrics.responses_out, response.status)
        if self.feedback is not None:
            self._feed_back(response)
        sent = self._response_route(response, source)
        if sent is not None:
            self._deliver(sent, response)
        return sent

    def resend_response(self, sent: object) -> None:
        """Send a response again, as ``send_response`` sent it (a server transaction's retransmission)."""
        assert isinstance(sent, SentResponse)
        self._deliver(sent, None)

    def _deliver(self, sent: SentResponse, response: Response | None) -> None:
        if self.tap is not None:
            self.tap.sent(response, sent.transport, sent.host, sent.port, sent.data)
        self.resend_refusal(sent)

    def send_to_source(self, response: Response, source: Source) -> SentResponse:
        """Straight back where the request came from, whatever its Via says (its connection, else its address).

        For answers given before any transaction exists: a 400 for what did
        not parse, and the admission guard's stateless 403/503/513.
        """
        self.metrics.status(self.metrics.responses_out, response.status)
        if self.feedback is not None:
            self._feed_back(response)
        data = response.to_bytes()
        sent = SentResponse(data, source.transport, source.host, source.port, source.connection)
        self._deliver(sent, response)
        return sent

    def send_data_to_source(self, data: bytes, status: int, source: Source) -> SentResponse:
        """:meth:`send_to_source` for a refusal already serialized (``response_bytes``), ``status`` its code.

        For the admission guard's refusals, which come by the thousand under
        overload: no RFC 7339 feedback (the guard serializes only those
        whose Via asked for none), and not shown to the tap, which never saw
        the request either (the guard refused it before the capture).
        """
        self.metrics.status(self.metrics.responses_out, status)
        sent = SentResponse(data, source.transport, source.host, source.port, source.connection)
        self.resend_refusal(sent)
        return sent

    def resend_refusal(self, sent: object) -> None:
        """Send a refusal again, byte for byte (a copy of the refused request came); not shown to the tap.

        Every response goes out here, the tap shown it first (``_deliver``) for all but the refusals.
        """
        assert isinstance(sent, SentResponse)
        if sent.connection is not None and sent.connection.alive:
            sent.connection.send(sent.data)
            return
        self._send(sent.transport, sent.host, sent.port, sent.data, self._response_failed)

    def _feed_back(self, response: Response) -> None:
        assert self.feedback is not None
        try:
            via = response.top_via
        except ParseError:
            return
        stamped = self.feedback(via)
        if stamped is not None:
            response.replace_top_via(stamped)

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

    def _send(
        self,
        transport: str,
        host: str,
        port: int,
        data: bytes,
        on_error: OnError,
        name: str = "",
        requests: bool = False,
    ) -> None:
        sender = (self.request_senders.get(transport.upper()) if requests else None) or self.senders.get(
            transport.upper()
        )
        if sender is None:
            on_error(f"transport {transport} is not supported")
            return
        try:
            if name:  # the name a TLS peer's certificate must show (only targets of such transports carry one)
                sender.send(normalize_host(host), port, data, on_error, server_name=name)  # type: ignore[call-arg]
            else:
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
        """May one more connection from ``host`` be accepted?  Makes room if it can.

        At ``max_connections_per_address`` (counted per IPv6 /64) from the
        same peer, or ``max_connections`` in all, the connection that
        received nothing for longest among those the peers opened and that
        carry no registered binding (:attr:`holds_flow`) is dropped for the
        newcomer: a peer holding slots idle loses them to the next one, a
        registered phone keeps its flow.  False when every candidate holds a
        flow (:attr:`full`, if it is the total).
        """
        limits = self.limits
        key = address_key(host)
        same = [conn for conn in self.connections.values() if address_key(conn.host) == key]
        if len(same) >= limits.max_connections_per_address:
            return self._make_room(same)
        if len(self.connections) >= limits.max_connections:
            return self._make_room(self.connections.values())
        return True

    @property
    def full(self) -> bool:
        """Is every connection slot taken by connections the limits keep (we opened them, or they hold a flow)?"""
        conns = self.connections
        return len(conns) >= self.limits.max_connections and self._evictable(conns.values()) is None

    def _evictable(self, candidates: Iterable[StreamConnection]) -> StreamConnection | None:
        oldest: StreamConnection | None = None
        longest = -1.0
        for conn in candidates:
            if not conn.inbound:
                continue
            idle = conn.idle
            if idle > longest and not self.holds_flow(conn.transport_name, conn.host, conn.port):
                oldest, longest = conn, idle
        return oldest

    def _make_room(self, candidates: Iterable[StreamConnection]) -> bool:
        victim = self._evictable(candidates)
        if victim is None:
            return False
        key = (victim.transport_name, victim.host, victim.port)
        del self.connections[key]
        self.drops.warn(
            "evicted",
            victim.host,
            "Closing {transport} connection from {host}:{port}, idle {idle:.0f} s without a registered binding, "
            "to make room for a new one (connection limit)",
            transport=victim.transport_name,
            port=victim.port,
            idle=victim.idle,
        )
        victim.abort("evicted")
        return True

    def connection_made(self, conn: StreamConnection) -> None:
        key = (conn.transport_name, conn.host, conn.port)
        self.connections[key] = conn
        for data, _ in self._pending.pop(key, []):
            conn.send(data)

    def connection_lost(self, conn: StreamConnection) -> None:
        key = (conn.transport_name, conn.host, conn.port)
        if self.connections.get(key) is conn:
            del self.connections[key]
            if self.flow_closed is not None:
                try:
                    self.flow_closed(*key)
                except Exception:
                    self.log.failure("Bug while dropping the bindings of a closed flow")

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
