# -*- test-case-name: tests.test_hep -*-
"""``--hep udp:HOST:PORT``: a HEP3 copy of every SIP message sent and received, to a Homer capture server.

The transport's wire log (:class:`~sipproxy.transport.wirelog.WireLog`)
sees every message's bytes where they cross the socket, received before
they are parsed (so what did not parse is copied too) and sent as they are
written; it hands them to :meth:`HepSender.copy`, which encodes them
(:mod:`sipproxy.transport.hep3`) and sends one datagram each from a UDP socket of its
own.  A copy that cannot go (the capture server unreachable, a message too
long for HEP3's 16-bit length) is dropped and counted, with one warning
line per ten seconds at most: capturing never holds up or breaks SIP.

Our side of each message is the address SIP listens on (``--sip-interface``,
else the advertised host when it is an address, else the unspecified
address of the peer's family) and the transport's port.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sipproxy.net import Clock
from sipproxy.transport.hep3 import CAPTURE_ID, HepError, HepPacket, encode

__all__ = ["HepSender", "LocalSide", "parse_capture_server"]

LocalSide = Callable[[str, str], tuple[str, int]]
"""(transport, peer host) -> our (address, port) for that message."""

log = Logger(namespace="sipproxy.hep")

_WARN_EVERY = 10.0
_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def parse_capture_server(value: str) -> tuple[str, int]:
    """``udp:HOST:PORT`` (``udp:[IPv6]:PORT``) -> (address, port); ``ValueError`` saying what is wrong.

    A host name is resolved once, now (at start-up).
    """
    kind, _, rest = value.partition(":")
    if kind.lower() != "udp":
        raise ValueError("give udp:HOST:PORT, such as udp:192.0.2.10:9060 (HEP goes over UDP)")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("give udp:HOST:PORT, such as udp:192.0.2.10:9060")
    try:
        found = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    except OSError as error:
        raise ValueError(f"cannot resolve {host}: {error}") from None
    address = str(found[0][4][0])
    return address, int(port)


class HepSender(DatagramProtocol):
    """Sends each message :meth:`copy` is given to ``server`` as one HEP3 datagram (see the module docstring)."""

    def __init__(
        self,
        clock: Clock,
        server: tuple[str, int],
        local: LocalSide,
        *,
        capture_id: int = CAPTURE_ID,
        auth_key: str | None = None,
    ) -> None:
        self.clock = clock
        self.server = server
        self.local = local
        self.capture_id = capture_id
        self.auth_key = auth_key
        self.sent = 0
        self.dropped = 0
        self._warned_at: float | None = None

    def copy(self, outgoing: bool, transport: str, host: str, port: int, data: bytes) -> None:
        """One message, ``outgoing`` to ``host:port`` or received from it.  Never raises."""
        writer = self.transport
        if writer is None or not data.strip():  # not listening (yet, or any more); a keep-alive, not SIP
            return
        try:
            ours = self.local(transport, host)
            src, dst = (ours, (host, port)) if outgoing else ((host, port), ours)
            found = _CALL_ID.search(data)
            packet = encode(
                HepPacket(
                    src_host=src[0],
                    src_port=src[1],
                    dst_host=dst[0],
                    dst_port=dst[1],
                    transport=transport,
                    timestamp=self.clock.seconds(),
                    payload=data,
                    capture_id=self.capture_id,
                    auth_key=self.auth_key,
                    correlation_id=found.group(1).strip().decode("utf-8", "surrogateescape") if found else None,
                )
            )
            writer.write(packet, self.server)
        except (HepError, OSError) as error:
            self._dropped(str(error))
            return
        except Exception:
            log.failure("Bug while sending a HEP copy")
            return
        self.sent += 1

    def connectionRefused(self) -> None:
        """The capture server's host said nothing listens there (ICMP port unreachable)."""
        self._dropped("the capture server refused it (nothing listening?)")

    def _dropped(self, why: str) -> None:
        self.dropped += 1
        now = self.clock.seconds()
        if self._warned_at is not None and now - self._warned_at < _WARN_EVERY:
            return
        self._warned_at = now
        log.warn(
            "HEP copy to {host}:{port} dropped: {why} ({dropped} dropped so far; SIP is not affected)",
            host=self.server[0],
            port=self.server[1],
            why=why,
            dropped=self.dropped,
        )
