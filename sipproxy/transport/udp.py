"""SIP over UDP (RFC 3261 §18.1, §18.2): one datagram, one message."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sipproxy.transaction import Source
from sipproxy.transport.address import normalize_host

if TYPE_CHECKING:
    from sipproxy.transport.layer import TransportLayer

__all__ = ["SipDatagramProtocol"]


class SipDatagramProtocol(DatagramProtocol):
    log = Logger()
    noisy = False

    def __init__(self, layer: TransportLayer, family: int) -> None:
        self.layer = layer
        self.family = family

    def startProtocol(self) -> None:
        self.layer.udp[self.family] = self.transport  # type: ignore[assignment]

    def stopProtocol(self) -> None:
        if self.layer.udp.get(self.family) is self.transport:
            del self.layer.udp[self.family]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        host, port = normalize_host(addr[0]), addr[1]
        if not datagram.strip(b"\r\n\x00 "):
            return  # keep-alive (CRLF or NUL padding): nothing to answer on UDP
        if len(datagram) > self.layer.limits.max_datagram:
            self.log.warn("Dropped oversized datagram from {host}:{port}", host=host, port=port)
            return
        self.layer.received(datagram, Source("UDP", host, port))
