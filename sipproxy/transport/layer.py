"""The transport layer (RFC 3261 §18, RFC 3581): bytes in and out, on UDP and TCP.

Incoming bytes are parsed and stamped (``received``/``rport``) before they
reach the transaction layer; outgoing messages go where §18.2.2 says.  This
is the one boundary where errors from the network stop: nothing raised here
escapes into the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from twisted.logger import Logger

from sipproxy.message import ParseError, Request, Response, make_response, parse_message
from sipproxy.message.uri import is_ip_address
from sipproxy.metrics import Metrics
from sipproxy.transaction import Source, Target, is_reliable
from sipproxy.transport.address import normalize_host
from sipproxy.transport.wirelog import WireLog

if TYPE_CHECKING:
    from sipproxy.security import Guard
    from sipproxy.transaction import TransactionLayer
    from sipproxy.transport.stream import SipStreamProtocol

__all__ = ["TransportLayer", "TransportLimits", "normalize_host"]


@dataclass(frozen=True)
class TransportLimits:
    max_datagram: int = 65507
    max_connections: int = 1024
    max_connections_per_address: int = 64
    idle_timeout: float = 600.0
    connect_timeout: float = 10.0
    max_head: int = 65536
    max_body: int = 1 << 20


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
    """Implements the transaction layer's ``Transport``; owns the UDP ports and TCP connections."""

    log = Logger()

    def __init__(
        self,
        connect_tcp: Callable[[str, int, Any, float], Any],
        wirelog: WireLog | None = None,
        metrics: Metrics | None = None,
        limits: TransportLimits = TransportLimits(),
    ) -> None:
        self.connect_tcp = connect_tcp
        self.wire = wirelog if wirelog is not None else WireLog()
        self.metrics = metrics if metrics is not None else Metrics()
        self.limits = limits
        self.transactions: TransactionLayer | None = None
        self.guard: Guard | None = None
        """Checks every message before the transaction layer (``sipproxy.security.Guard``)."""
        self.udp: dict[int, DatagramWriter] = {}
        self.connections: dict[tuple[str, int], SipStreamProtocol] = {}
        self._pending: dict[tuple[str, int], list[tuple[bytes, Callable[[str], None]]]] = {}
        self.listening = 0

    # -- incoming -------------------------------------------------------

    def received(self, data: bytes, source: Source) -> None:
        """One whole message from the network.  Never raises."""
        self.wire.incoming(source.transport, source.host, source.port, data)
        try:
            message = parse_message(data)
        except ParseError as exc:
            if self.guard is None or self.guard.admit(None, source, len(data), self._send_to_source):
                self._parse_error(exc, source)
            return
        if self.guard is not None and not self.guard.admit(message, source, len(data), self._send_to_source):
            return  # refused (blocked, over the rate, too large, overloaded): answered statelessly or dropped
        try:
            if isinstance(message, Request):
                self._stamp_via(message, source)
                self.metrics.method(self.metrics.requests_in, message.method)
                assert self.transactions is not None
                self.transactions.receive_request(message, source)
            else:
                self.metrics.status(self.metrics.responses_in, message.status)
                assert self.transactions is not None
                self.transactions.receive_response(message, source)
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
        self._send_to_source(response, source)

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

    def send_request(self, request: Request, target: Target, on_error: Callable[[str], None]) -> None:
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
        transport = via.transport if via.transport in ("UDP", "TCP") else (source.transport if source else "UDP")
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

    def _send_to_source(self, response: Response, source: Source) -> None:
        """Straight back where the request came from, whatever its Via says (its connection, else its address)."""
        self.metrics.status(self.metrics.responses_out, response.status)
        data = response.to_bytes()
        self.resend_response(SentResponse(data, source.transport, source.host, source.port, source.connection))

    def _response_failed(self, reason: str) -> None:
        self.log.warn("Could not send a response: {reason}", reason=reason)

    def _send(self, transport: str, host: str, port: int, data: bytes, on_error: Callable[[str], None]) -> None:
        host = normalize_host(host)
        try:
            if transport == "UDP":
                self._send_udp(host, port, data)
            elif transport == "TCP":
                self._send_tcp(host, port, data, on_error)
            else:
                on_error(f"transport {transport} is not supported")
        except Exception as exc:  # the socket said no: tell the transaction, not the reactor
            on_error(f"{type(exc).__name__}: {exc}")

    def _send_udp(self, host: str, port: int, data: bytes) -> None:
        family = 6 if ":" in host else 4
        writer = self.udp.get(family)
        if writer is None:
            raise OSError(f"no IPv{family} UDP socket to send from")
        if len(data) > self.limits.max_datagram:
            raise OSError("message too large for UDP")
        self.wire.outgoing("UDP", host, port, data)
        writer.write(data, (host, port))

    def _send_tcp(self, host: str, port: int, data: bytes, on_error: Callable[[str], None]) -> None:
        key = (host, port)
        conn = self.connections.get(key)
        if conn is not None and conn.alive:
            conn.send(data)
            return
        pending = self._pending.get(key)
        if pending is not None:
            pending.append((data, on_error))
            return
        self._pending[key] = [(data, on_error)]
        self.connect_tcp(host, port, self, self.limits.connect_timeout)

    # -- connection table (called by the stream protocols) ---------------

    def admit(self, host: str) -> bool:
        """May one more connection from ``host`` be accepted?"""
        if len(self.connections) >= self.limits.max_connections:
            return False
        same = sum(1 for h, _ in self.connections if h == host)
        return same < self.limits.max_connections_per_address

    def connection_made(self, conn: SipStreamProtocol) -> None:
        key = (conn.host, conn.port)
        self.connections[key] = conn
        for data, _ in self._pending.pop(key, []):
            conn.send(data)

    def connection_lost(self, conn: SipStreamProtocol) -> None:
        key = (conn.host, conn.port)
        if self.connections.get(key) is conn:
            del self.connections[key]

    def connect_failed(self, host: str, port: int, reason: str) -> None:
        self.log.warn("TCP connection to {host}:{port} failed: {reason}", host=host, port=port, reason=reason)
        for _, on_error in self._pending.pop((host, port), []):
            try:
                on_error(f"TCP connection to {host}:{port} failed: {reason}")
            except Exception:
                self.log.failure("Bug in a transport error callback")
