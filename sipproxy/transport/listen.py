# -*- test-case-name: tests.test_transport_listen -*-
"""The SIP listeners: UDP and TCP on one port, TLS on another, IPv4 and IPv6, bound before anything starts (§18).

``twistd sipproxy`` binds every socket while it builds the service
(:meth:`SipListeners.bind`), so that a port in use or an address this host
does not have stops start-up with one line naming it, before the web page
or anything else listens; the reactor adopts the bound sockets when the
service starts.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from sipproxy.transport.layer import TransportLayer
from sipproxy.transport.stream import SipStreamFactory
from sipproxy.transport.udp import DatagramSender, SipDatagramProtocol

__all__ = [
    "UDP_MAX_DATAGRAM",
    "UDP_RECEIVE_BUFFER",
    "BindError",
    "SipListeners",
    "bound_socket",
    "describe_socket_error",
    "report_receive_buffer",
]

log = Logger(namespace="sipproxy")

UDP_MAX_DATAGRAM = 65535
"""The most one read from a UDP socket takes: every datagram IPv4 or IPv6 can carry (65,507 / 65,527 bytes).

Twisted reads 8,192 bytes unless told otherwise and drops the rest of a
longer datagram without a word: an 8,336-byte INVITE then failed its
Content-Length check (400) and a 39 KB REGISTER went unanswered.  What is
too large for ``--max-message-size`` gets its 513 from the admission guard.
"""

UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
"""SO_RCVBUF asked for on the UDP sockets (the kernel caps it at ``net.core.rmem_max``).

The default (about 200 KB, a few hundred small datagrams) overflows when
the reactor pauses for a few tens of milliseconds under load (a commit
checkpointing the SQLite WAL, a garbage collection): every datagram lost
then costs its sender a 500 ms retransmission.
"""


def describe_socket_error(error: OSError) -> str:
    """What ``bind`` said, as the rest of a sentence about an address: "is already in use", ..."""
    code = error.errno
    if code == errno.EADDRINUSE:
        return "is already in use"
    if code == errno.EADDRNOTAVAIL:
        return "is not an address of this host"
    if code in (errno.EACCES, errno.EPERM):
        return "is not ours to bind (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if code == errno.EAFNOSUPPORT:
        return "cannot be bound: this host has no IPv6"
    return f"cannot be bound: {error.strerror or error}"


class BindError(Exception):
    """A SIP socket could not be bound: ``str()`` names the transport, address and port, and why."""

    def __init__(self, transport: str, address: str, port: int, error: OSError) -> None:
        shown = f"[{address}]" if ":" in address else address
        super().__init__(f"{transport} {shown}:{port} {describe_socket_error(error)}")
        self.transport = transport
        self.address = address
        self.port = port
        self.errno = error.errno


def bound_socket(family: int, kind: int, address: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking socket bound to ``(address, port)`` (listening, for TCP); IPv6 ones IPv6-only.

    ``reuse_port``: SO_REUSEPORT, so that the worker processes of
    ``--workers`` each bind the port and the kernel spreads what arrives
    over them (by the sender's address and port: one phone, one worker).
    """
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_DGRAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def report_receive_buffer(sock: socket.socket) -> None:
    """Warn when the kernel gave less UDP receive buffer than we asked for (``net.core.rmem_max``)."""
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports twice what it grants
    if granted < UDP_RECEIVE_BUFFER:
        log.warn(
            "UDP receive buffer is {granted} bytes, not the {wanted} asked for (net.core.rmem_max caps it): "
            "bursts may drop requests; raise it with sysctl -w net.core.rmem_max={wanted}",
            granted=granted,
            wanted=UDP_RECEIVE_BUFFER,
        )


@dataclass
class _Bound:
    """One address family's pair of sockets, bound and not yet handed to the reactor."""

    family: int
    address: str
    udp: socket.socket
    tcp: socket.socket
    tls: socket.socket | None = None
    own: bool = False
    """A worker's own port (``--workers``), not the shared one."""

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()
        if self.tls is not None:
            self.tls.close()


class _OwnPort(SipDatagramProtocol):
    """A worker's own UDP port (``--workers``): the requests it forwards leave from it, their responses come to it.

    Its Via names this port (RFC 3261 §18.2.2), and a peer that answers the
    packet's source (RFC 3581, and most phones) finds it too; responses to
    phones leave from the shared port, where they and their NATs expect them.
    """

    def startProtocol(self) -> None:
        senders = self.layer.request_senders
        own = senders.get("UDP")
        if not isinstance(own, _OwnPortSender):
            own = senders["UDP"] = _OwnPortSender(self.layer)
        own.writers[self.family] = self.transport

    def stopProtocol(self) -> None:
        own = self.layer.request_senders.get("UDP")
        if isinstance(own, _OwnPortSender) and own.writers.get(self.family) is self.transport:
            del own.writers[self.family]
            if not own.writers:
                del self.layer.request_senders["UDP"]


class _OwnPortSender(DatagramSender):
    """UDP requests from the worker's own port of the destination's family (else from the shared one)."""

    def __init__(self, layer: TransportLayer) -> None:
        super().__init__(layer)
        self.writers: dict[int, Any] = {}

    def writer(self, family: int) -> Any:
        own = self.writers.get(family)
        return own if own is not None else super().writer(family)


class SipListeners(Service):
    """UDP and TCP on the same port, TLS on its own when enabled, on IPv4 and IPv6 (each family its own sockets).

    The sockets are bound by :meth:`bind` and handed to the reactor with
    ``adoptDatagramPort``/``adoptStreamPort`` when the service starts, so
    that IPv6 ones can be IPv6-only and share the port number with the IPv4
    ones.  Port 0 picks a port free for UDP and TCP alike (and, for
    ``tls_port`` 0, one for TLS).  ``tls_factory`` is the TLS listener's
    factory (:func:`sipproxy.transport.tls.tls_server_factory`); ``None``:
    no TLS.
    """

    def __init__(
        self,
        reactor: Any,
        transport: TransportLayer,
        port: int,
        interface: str,
        *,
        tls_port: int = 5061,
        tls_factory: Any = None,
        reuse_port: bool = False,
        own_port: int | None = None,
    ) -> None:
        """``reuse_port``, ``own_port``: a worker of ``--workers`` (see :func:`bound_socket`; its Via's port)."""
        self.reactor = reactor
        self.reuse_port = reuse_port
        self.own_port = own_port
        self.transport = transport
        self.requested_port = port
        self.interface = interface
        self.port = port
        """The port bound (``requested_port`` unless that was 0)."""
        self.tls_factory = tls_factory
        self.requested_tls_port = tls_port
        self.tls_port = tls_port
        """The TLS port bound (``requested_tls_port`` unless that was 0)."""
        self.ports: list[Any] = []
        self._bound: list[_Bound] = []

    @property
    def listening(self) -> int:
        """How many sockets the reactor is serving SIP on (0 before start and after stop)."""
        return len(self.ports)

    def _addresses(self) -> list[tuple[int, str]]:
        if not self.interface:
            return [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        return [(family, self.interface)]

    def bind(self) -> None:
        """Bind every socket now, unless done already; :class:`BindError` says which one failed and why."""
        if self._bound or self.ports:
            return
        for attempt in range(20):
            try:
                self._bound = self._bind_all(self.requested_port)
                break
            except BindError as error:
                fixed = self.requested_tls_port != 0 if error.transport == "TLS" else self.requested_port != 0
                if fixed or attempt == 19:
                    raise
        report_receive_buffer(self._bound[0].udp)

    def _bind_all(self, port: int) -> list[_Bound]:
        bound: list[_Bound] = []
        self.tls_port = self.requested_tls_port
        try:
            for family, address in self._addresses():
                try:
                    udp = bound_socket(family, socket.SOCK_DGRAM, address, port, reuse_port=self.reuse_port)
                except OSError as exc:
                    if family == socket.AF_INET6 and not self.interface and exc.errno != errno.EADDRINUSE:
                        log.warn("No IPv6 SIP listener: {error}", error=str(exc))
                        continue
                    raise BindError("UDP", address, port, exc) from None
                if port == 0:
                    port = udp.getsockname()[1]
                try:
                    tcp = bound_socket(family, socket.SOCK_STREAM, address, port, reuse_port=self.reuse_port)
                except OSError as exc:
                    udp.close()
                    raise BindError("TCP", address, port, exc) from None
                pair = _Bound(family, address, udp, tcp)
                bound.append(pair)
                if self.tls_factory is not None:
                    pair.tls = self._bind_tls(family, address)
                if self.own_port is not None:
                    bound.append(self._bind_own(family, address, self.own_port))
        except BindError:
            for pair in bound:
                pair.close()
            raise
        self.port = port
        return bound

    def _bind_own(self, family: int, address: str, port: int) -> _Bound:
        """This worker's own UDP and TCP port (its Via's): not shared, so responses reach this worker."""
        try:
            udp = bound_socket(family, socket.SOCK_DGRAM, address, port)
        except OSError as exc:
            raise BindError("UDP", address, port, exc) from None
        try:
            tcp = bound_socket(family, socket.SOCK_STREAM, address, port)
        except OSError as exc:
            udp.close()
            raise BindError("TCP", address, port, exc) from None
        return _Bound(family, address, udp, tcp, own=True)

    def _bind_tls(self, family: int, address: str) -> socket.socket:
        try:
            tls = bound_socket(family, socket.SOCK_STREAM, address, self.tls_port, reuse_port=self.reuse_port)
        except OSError as exc:
            raise BindError("TLS", address, self.tls_port, exc) from None
        if self.tls_port == 0:
            self.tls_port = tls.getsockname()[1]
        return tls

    def close(self) -> None:
        """Close sockets bound but never handed to the reactor (start-up stopped after :meth:`bind`)."""
        for pair in self._bound:
            pair.close()
        self._bound = []

    def startService(self) -> None:
        super().startService()
        self.bind()
        for pair in self._bound:
            version = 6 if pair.family == socket.AF_INET6 else 4
            udp = (_OwnPort if pair.own else SipDatagramProtocol)(self.transport, version)
            self.ports.append(
                self.reactor.adoptDatagramPort(pair.udp.fileno(), pair.family, udp, maxPacketSize=UDP_MAX_DATAGRAM)
            )
            tcp = SipStreamFactory(self.transport, self.reactor)
            self.ports.append(self.reactor.adoptStreamPort(pair.tcp.fileno(), pair.family, tcp))
            if pair.tls is not None:
                self.ports.append(self.reactor.adoptStreamPort(pair.tls.fileno(), pair.family, self.tls_factory))
            pair.close()  # the reactor listens on duplicates of the descriptors
            shown = f"[{pair.address}]" if pair.family == socket.AF_INET6 else pair.address
            if pair.own:
                log.info("This worker's own UDP and TCP port (its Via): {port}", port=self.own_port)
                continue
            log.info("SIP listening on UDP and TCP {address}:{port}", address=shown, port=self.port)
            if pair.tls is not None:
                log.info("SIP listening on TLS {address}:{port}", address=shown, port=self.tls_port)
        self._bound = []

    def stopService(self) -> Any:
        super().stopService()
        for conn in list(self.transport.connections.values()):
            conn.transport.loseConnection()
        for port in self.ports:
            port.stopListening()
        self.ports = []
        self.close()
