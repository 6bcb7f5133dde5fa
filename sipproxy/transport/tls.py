# -*- test-case-name: tests.test_transport_tls -*-
"""SIP over TLS (RFC 3261 §26.2, §18; RFC 5922 §7): the stream protocol over a TLS transport, registered as "TLS".

The same :class:`~sipproxy.transport.stream.SipStreamProtocol` as TCP
(framing by Content-Length, keep-alives, timeouts, the connection table),
wrapped in Twisted's ``TLSMemoryBIOProtocol``:

- inbound (:func:`tls_server_factory`): the listener's connections, each made
  from the certificate current when it is accepted
  (:class:`~sipproxy.transport.certificates.TLSCertificates`);
- outbound (:func:`tls_connector`, :class:`TLSSender`): a connection opened to
  send is checked against the name the target was resolved from (the host
  of the ``sips:`` URI or ``transport=tls`` hop, RFC 5922 §7.2; an IP
  address when that is all we have: a phone's Contact) by
  ``service_identity``.  It joins the connection table only once the
  handshake succeeded: what waits for it is sent then; a handshake that
  fails (a certificate for another name, from an unknown CA, or none)
  fails the waiting messages at once with one warning naming the peer and
  the reason, so that the proxy's branch moves on instead of waiting for
  Timer B.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from service_identity import VerificationError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IHandshakeListener
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from sipproxy.transport.certificates import describe_ssl_error
from sipproxy.transport.stream import SipClientFactory, SipStreamFactory, SipStreamProtocol

if TYPE_CHECKING:
    from sipproxy.transport.layer import TransportLayer

__all__ = [
    "SipTLSProtocol",
    "TLSConnect",
    "TLSSender",
    "describe_tls_failure",
    "tls_connector",
    "tls_server_factory",
    "tls_wrap",
]


class ClientOptions(Protocol):
    def client_options(self, name: str) -> Any: ...


TLSConnect = Callable[[str, int, "TransportLayer", float, str], Any]
"""``connect(host, port, layer, timeout, name)``: a TLS connection to ``host``, its certificate checked for ``name``."""


def describe_tls_failure(failure: Failure | BaseException) -> str:
    """Why a TLS handshake failed, in words for the log."""
    error = failure.value if isinstance(failure, Failure) else failure
    if isinstance(error, VerificationError):
        names = ", ".join(sorted({_mismatched(e) for e in error.errors}))
        return f"its certificate is not for {names} (RFC 5922 §7.2)"
    if isinstance(error, ConnectionDone | ConnectionLost):
        return "the peer closed the connection during the TLS handshake"
    text = describe_ssl_error(error)
    if "certificate verify failed" in text:
        return f"its certificate is not signed by a CA we trust ({text}; --tls-ca names a private CA)"
    return text


def _mismatched(error: Any) -> str:
    ident = getattr(error, "mismatched_id", None)
    value = getattr(ident, "hostname", None) or getattr(ident, "ip", None) or ident or error
    return value.decode() if isinstance(value, bytes) else str(value)


@implementer(IHandshakeListener)
class SipTLSProtocol(SipStreamProtocol):
    """A stream connection over TLS; an outbound one enters the connection table once its handshake succeeded."""

    handshaken = False

    def connectionMade(self) -> None:
        if self.inbound:
            super().connectionMade()
        else:  # the handshake (certificate check included) must finish within the connect timeout
            self._opened(self.layer.limits.connect_timeout)

    def handshakeCompleted(self) -> None:
        self.handshaken = True
        if not self.inbound:
            self.setTimeout(self.layer.limits.idle_timeout)
            self.layer.connection_made(self)

    def timeoutConnection(self) -> None:
        if self.handshaken:
            super().timeoutConnection()
        else:
            self.abort("timeout")
            self._handshake_failed("no TLS handshake within the connect timeout")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.handshaken:
            self._handshake_failed(describe_tls_failure(reason) if reason is not None else "closed")
        super().connectionLost(reason)

    def _handshake_failed(self, why: str) -> None:
        if self.handshaken or getattr(self, "_reported", False):
            return
        self._reported = True
        if self.inbound:
            self.layer.drops.warn(
                "tls-handshake",
                self.host,
                "TLS handshake with {host}:{port} failed: {reason}",
                port=self.port,
                reason=why,
            )
        else:
            self.layer.connect_failed(self.transport_name, self.host, self.port, why)


class _TLSServerFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` whose wrapped factory may refuse a connection (the connection limits)."""

    def buildProtocol(self, addr: IAddress | None) -> Any:
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)


def tls_server_factory(layer: TransportLayer, clock: Any, certificates: Any) -> TLSMemoryBIOFactory:
    """The listener's factory: SIP streams named "TLS", each connection from ``certificates``' current context."""
    return tls_wrap(SipStreamFactory(layer, clock, "TLS", connection_class=SipTLSProtocol), certificates, clock)


def tls_wrap(factory: Any, certificates: Any, clock: Any) -> TLSMemoryBIOFactory:
    """``factory``'s connections over TLS with ``certificates`` (the TLS listener's, WSS's)."""
    return _TLSServerFactory(certificates, False, factory, clock)


def tls_connector(reactor: Any, clock: Any, certificates: ClientOptions) -> TLSConnect:
    """The :data:`TLSConnect` over ``reactor.connectSSL``, checking the peer with ``certificates.client_options``."""

    def connect(host: str, port: int, layer: TransportLayer, timeout: float, name: str) -> None:
        factory = SipClientFactory(layer, clock, host, port, "TLS", connection_class=SipTLSProtocol)
        reactor.connectSSL(host, port, factory, certificates.client_options(name), timeout=timeout)

    return connect


class TLSSender:
    """TLS in the transport's table: the open connection to the destination, else a new one, checked (§26.2.2).

    ``server_name`` is the name the destination was resolved from
    (:attr:`sipproxy.net.Target.name`); without one, the certificate must
    name the IP address.  An open connection is reused whatever name it was
    opened for (RFC 5923 connection reuse across names is not done).
    """

    name = "TLS"

    def __init__(self, layer: TransportLayer, connect: TLSConnect) -> None:
        self.layer = layer
        self.connect = connect

    def send(self, host: str, port: int, data: bytes, on_error: Callable[[str], None], server_name: str = "") -> None:
        layer = self.layer
        conn = layer.connection(self.name, host, port)
        if conn is not None:
            conn.send(data)
        elif layer.await_connection(self.name, host, port, data, on_error):
            self.connect(host, port, layer, layer.limits.connect_timeout, server_name or host)
