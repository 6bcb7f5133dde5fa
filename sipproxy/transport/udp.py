# -*- test-case-name: tests.test_transport -*-
"""SIP over UDP (RFC 3261 §18.1.1, §18.2.1, §18.2.2): one datagram, one message.

:class:`SipDatagramProtocol` is what the UDP listeners run (one per address
family); :class:`DatagramSender` is UDP's entry in the transport layer's
table of senders, writing from those same sockets.

Each datagram's wait: the socket asks the kernel to stamp every datagram as
it arrives (``SO_TIMESTAMPNS``), and the protocol reads its socket itself
(:meth:`SipDatagramProtocol.read`, ``recvmsg`` where Twisted's port uses
``recvfrom``, otherwise the same loop), so that before a datagram is parsed
the message sink learns how long it waited (``datagram_waited``, the
admission guard's overload signal, :mod:`sipproxy.security.congestion`) and
may have it dropped unread.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sipproxy.net import Source
from sipproxy.transport.address import normalize_host
from sipproxy.transport.stun import is_stun, stun_answer

if TYPE_CHECKING:
    from sipproxy.transport.layer import TransportLayer

__all__ = ["DatagramSender", "SipDatagramProtocol", "write_datagram"]

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS): a ``struct timespec`` of the arrival, CLOCK_REALTIME."""
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
_READ_IGNORE = frozenset({errno.EAGAIN, errno.EINTR})  # nothing (more) to read now
_READ_REFUSED = errno.ECONNREFUSED  # an ICMP error for what we sent: nothing to read either
_log = Logger(namespace="sipproxy.transport")


class SipDatagramProtocol(DatagramProtocol):
    noisy = False

    def __init__(self, layer: TransportLayer, family: int) -> None:
        self.layer = layer
        self.family = family
        self._writer: Any = None
        """The port this protocol was started on (Twisted clears ``transport`` before ``stopProtocol``)."""

    def startProtocol(self) -> None:
        self._writer = self.transport
        self.layer.udp[self.family] = self.transport  # type: ignore[assignment]
        self._stamp_arrivals()

    def stopProtocol(self) -> None:
        if self._writer is not None and self.layer.udp.get(self.family) is self._writer:
            del self.layer.udp[self.family]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        host, port = normalize_host(addr[0]), addr[1]
        if is_stun(datagram):  # RFC 5626 §8.3 keep-alive: STUN, not SIP (RFC 7983 demultiplexing)
            answer = stun_answer(datagram, host, port)
            if answer is not None:
                self.transport.write(answer, addr)  # type: ignore[union-attr]
            return
        if not datagram.strip(b"\r\n\x00 "):
            return  # keep-alive (CRLF or NUL padding): nothing to answer on UDP
        if len(datagram) > self.layer.limits.max_datagram:
            self.layer.drops.warn("oversized", host, "Dropped oversized datagram from {host}:{port}", port=port)
            return
        self.layer.received(datagram, Source("UDP", host, port))

    # -- the read path: every datagram with its wait -------------------------------------

    def _stamp_arrivals(self) -> None:
        """Have the kernel stamp arrivals and read the socket ourselves; where it cannot, Twisted's loop stays."""
        port: Any = self.transport
        sock = getattr(port, "socket", None)
        if sock is None or not _ANCILLARY or not hasattr(sock, "recvmsg"):
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            return
        self._socket = sock
        self._max_read = getattr(port, "maxPacketSize", 65535)
        self._max_throughput = getattr(port, "maxThroughput", 256 * 1024)
        # The reactor calls the port's doRead when the socket is readable: this one reads it instead.
        port.doRead = self.read

    def read(self, now: Callable[[], float] = time.time) -> None:
        """Twisted's ``udp.Port.doRead`` with ``recvmsg``: up to ``maxThroughput`` bytes, then back to the reactor.

        Before a datagram goes to :meth:`datagramReceived` the sink is told
        how long it waited since the kernel stamped it (``now`` is the same
        clock, CLOCK_REALTIME); if it answers ``False`` the datagram is
        dropped unread.
        """
        sock, size, anc = self._socket, self._max_read, _ANCILLARY
        waited = getattr(self.layer.sink, "datagram_waited", None)
        read = 0
        while read < self._max_throughput:
            try:
                data, ancillary, _, addr = sock.recvmsg(size, anc)
            except OSError as error:
                if error.errno in _READ_IGNORE or error.errno == _READ_REFUSED:
                    return
                raise
            read += len(data)
            try:
                if waited is not None and ancillary:
                    level, kind, stamp = ancillary[0]
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= _TIMESPEC.size:
                        seconds, nanoseconds = _TIMESPEC.unpack_from(stamp)
                        if not waited(data, now() - seconds - nanoseconds * 1e-9):
                            continue
                self.datagramReceived(data, addr[:2])
            except Exception:
                _log.failure("Bug while reading a UDP datagram")


class DatagramSender:
    """UDP in the transport's table: a datagram from our socket of the destination's address family."""

    name = "UDP"

    def __init__(self, layer: TransportLayer) -> None:
        self.layer = layer

    def send(self, host: str, port: int, data: bytes, on_error: Callable[[str], None]) -> None:
        family = 6 if ":" in host else 4
        writer = self.writer(family)
        if writer is None:
            raise OSError(f"no IPv{family} UDP socket to send from")
        if len(data) > self.layer.limits.max_datagram:
            raise OSError("message too large for UDP")
        self.layer.wire.outgoing(self.name, host, port, data)
        write_datagram(writer, family, host, port, data)

    def writer(self, family: int) -> Any:
        """The port to send from to an address of ``family`` (4 or 6): the listening one; ``None``: none."""
        return self.layer.udp.get(family)


_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def write_datagram(writer: Any, family: int, host: str, port: int, data: bytes) -> None:
    """``writer.write(data, (host, port))`` (Twisted's ``udp.Port``), with its checks made once, in C.

    The port checks every address with ``isIPAddress`` twice and
    ``isIPv6Address`` once (an exception for every IPv4 one): 1.1 us of the
    5.3 us a datagram took to send here.  An address that is one
    for the socket's family (``inet_pton``) goes straight to ``sendto``,
    with the port's handling of its errors (``EINTR`` again, ``ECONNREFUSED``
    -- an ICMP error for an earlier datagram -- ignored); anything else
    (a scoped IPv6 address, a test's fake port) through ``write`` as before.
    """
    sock = getattr(writer, "socket", None)
    if sock is not None:
        try:
            socket.inet_pton(_FAMILY[family], host)
        except (OSError, KeyError):
            pass
        else:
            while True:
                try:
                    sock.sendto(data, (host, port))
                    return
                except OSError as error:
                    if error.errno == errno.EINTR:
                        continue
                    if error.errno == errno.ECONNREFUSED:
                        return
                    raise
    writer.write(data, (host, port))
