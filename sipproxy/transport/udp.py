# -*- test-case-name: tests.test_transport -*-
"""SIP over UDP (RFC 3261 §18.1.1, §18.2.1, §18.2.2): one datagram, one message.

:class:`SipDatagramProtocol` is what the UDP listeners run (one per address
family); :class:`DatagramSender` is UDP's entry in the transport layer's
table of senders, writing from those same sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import DatagramProtocol

from sipproxy.net import Source
from sipproxy.transport.address import normalize_host
from sipproxy.transport.stun import is_stun, stun_answer

if TYPE_CHECKING:
    from sipproxy.transport.layer import TransportLayer

__all__ = ["DatagramSender", "SipDatagramProtocol"]


class SipDatagramProtocol(DatagramProtocol):
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


class DatagramSender:
    """UDP in the transport's table: a datagram from our socket of the destination's address family."""

    name = "UDP"

    def __init__(self, layer: TransportLayer) -> None:
        self.layer = layer

    def send(self, host: str, port: int, data: bytes, on_error: Callable[[str], None]) -> None:
        family = 6 if ":" in host else 4
        writer = self.layer.udp.get(family)
        if writer is None:
            raise OSError(f"no IPv{family} UDP socket to send from")
        if len(data) > self.layer.limits.max_datagram:
            raise OSError("message too large for UDP")
        self.layer.wire.outgoing(self.name, host, port, data)
        writer.write(data, (host, port))
