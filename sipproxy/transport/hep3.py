# -*- test-case-name: tests.test_hep -*-
"""HEP version 3 (HEP3, EEP), the Homer capture protocol: one SIP message as one packet of chunks.

Pure: bytes in, bytes out, no socket (the sender is
:mod:`sipproxy.transport.hep`).  A HEP3 packet (the sipcapture "HEP3
Network Protocol Specification") is a 6-byte header, ``"HEP3"`` and the
total length (16 bits, network order, the header included), followed by
chunks.  Each chunk is a 6-byte header, the vendor ID (16 bits; 0x0000 is
the generic vendor, the only one used here), the type ID (16 bits) and the
chunk's length (16 bits, its header included), then its value:

====== ============================ ==========================================
type   chunk                        value
====== ============================ ==========================================
0x0001 IP protocol family           8 bits: 2 IPv4 (AF_INET), 10 IPv6 (AF_INET6)
0x0002 IP protocol ID               8 bits: 17 UDP, 6 TCP (also WS, WSS), 22 TLS
0x0003 IPv4 source address          4 bytes
0x0004 IPv4 destination address     4 bytes
0x0005 IPv6 source address          16 bytes
0x0006 IPv6 destination address     16 bytes
0x0007 source port                  16 bits
0x0008 destination port             16 bits
0x0009 timestamp, seconds           32 bits (Unix time)
0x000a timestamp, microseconds      32 bits (offset into that second)
0x000b protocol type                8 bits: 1 SIP
0x000c capture agent ID             32 bits
0x000e authentication key           text (the capture server's password)
0x000f captured payload             the SIP message's bytes as on the wire
0x0011 internal correlation ID      text (the Call-ID, so Homer groups a call)
====== ============================ ==========================================

TLS has no IP protocol number of its own: 22 (``IPPROTO_IDP``) is the one
reSIProcate's and sofia-sip's HEP senders use for it.  Integers are unsigned, in network byte order.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from dataclasses import dataclass

__all__ = [
    "CAPTURE_ID",
    "CHUNKS",
    "PROTOCOLS",
    "HepError",
    "HepPacket",
    "decode",
    "encode",
]

CAPTURE_ID = 2001
"""``--hep-capture-id``'s default: the capture agent ID Homer's examples use."""

PROTOCOLS = {"UDP": 17, "TCP": 6, "TLS": 22, "SCTP": 132, "WS": 6, "WSS": 22}
"""Transport name -> HEP's IP protocol ID (see the module docstring for TLS)."""

CHUNKS = {
    "family": 0x0001,
    "protocol": 0x0002,
    "src_ip4": 0x0003,
    "dst_ip4": 0x0004,
    "src_ip6": 0x0005,
    "dst_ip6": 0x0006,
    "src_port": 0x0007,
    "dst_port": 0x0008,
    "seconds": 0x0009,
    "microseconds": 0x000A,
    "protocol_type": 0x000B,
    "capture_id": 0x000C,
    "auth_key": 0x000E,
    "payload": 0x000F,
    "correlation_id": 0x0011,
}
"""The generic vendor's chunk types this module writes, by name."""

_AF_INET, _AF_INET6 = 2, 10
_SIP = 1
_HEADER = struct.Struct("!4sH")
_CHUNK = struct.Struct("!HHH")
_MAX = 0xFFFF
"""A packet's length field is 16 bits: nothing longer can be said in HEP3."""


class HepError(ValueError):
    """A packet that cannot be written (too long, an address that is not one) or read (not HEP3, truncated)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HepPacket:
    """One SIP message as seen on the wire: who sent it to whom, when, over what."""

    src_host: str
    src_port: int
    dst_host: str
    dst_port: int
    transport: str
    timestamp: float
    payload: bytes
    capture_id: int = CAPTURE_ID
    auth_key: str | None = None
    correlation_id: str | None = None


def _chunk(kind: int, value: bytes) -> bytes:
    return _CHUNK.pack(0, kind, _CHUNK.size + len(value)) + value


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        raise HepError(f"{text!r} is not an IP address") from None


def encode(packet: HepPacket) -> bytes:
    """The HEP3 packet for ``packet``; :class:`HepError` if it cannot be one (addresses, length).

    Both addresses must be of one family: an IPv4 address talking to an
    IPv6 peer is written as its IPv4-mapped IPv6 form.
    """
    src, dst = _address(packet.src_host), _address(packet.dst_host)
    if src.version != dst.version:
        src, dst = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst))
    protocol = PROTOCOLS.get(packet.transport.upper())
    if protocol is None:
        raise HepError(f"no HEP protocol ID for transport {packet.transport!r}")
    seconds = math.floor(packet.timestamp)
    microseconds = min(999_999, round((packet.timestamp - seconds) * 1_000_000))
    family, src_kind, dst_kind = (
        (_AF_INET, CHUNKS["src_ip4"], CHUNKS["dst_ip4"])
        if src.version == 4
        else (_AF_INET6, CHUNKS["src_ip6"], CHUNKS["dst_ip6"])
    )
    parts = [
        _chunk(CHUNKS["family"], bytes([family])),
        _chunk(CHUNKS["protocol"], bytes([protocol])),
        _chunk(src_kind, src.packed),
        _chunk(dst_kind, dst.packed),
        _chunk(CHUNKS["src_port"], struct.pack("!H", packet.src_port)),
        _chunk(CHUNKS["dst_port"], struct.pack("!H", packet.dst_port)),
        _chunk(CHUNKS["seconds"], struct.pack("!I", seconds & 0xFFFFFFFF)),
        _chunk(CHUNKS["microseconds"], struct.pack("!I", microseconds)),
        _chunk(CHUNKS["protocol_type"], bytes([_SIP])),
        _chunk(CHUNKS["capture_id"], struct.pack("!I", packet.capture_id & 0xFFFFFFFF)),
    ]
    if packet.auth_key:
        parts.append(_chunk(CHUNKS["auth_key"], packet.auth_key.encode("utf-8")))
    if packet.correlation_id:
        parts.append(_chunk(CHUNKS["correlation_id"], packet.correlation_id.encode("utf-8", "surrogateescape")))
    parts.append(_chunk(CHUNKS["payload"], packet.payload))
    body = b"".join(parts)
    length = _HEADER.size + len(body)
    if length > _MAX:
        raise HepError(f"a HEP3 packet holds at most {_MAX} bytes; this message needs {length}")
    return _HEADER.pack(b"HEP3", length) + body


def decode(data: bytes) -> dict[int, bytes]:
    """The chunks of one HEP3 packet, type -> value (generic vendor only); :class:`HepError` if it is not one.

    For capture servers in tests and for checking what :func:`encode` wrote.
    """
    if len(data) < _HEADER.size:
        raise HepError("shorter than a HEP3 header")
    magic, length = _HEADER.unpack_from(data)
    if magic != b"HEP3":
        raise HepError(f"not HEP3 (starts {magic!r})")
    if length != len(data):
        raise HepError(f"the header says {length} bytes, the packet has {len(data)}")
    chunks: dict[int, bytes] = {}
    offset = _HEADER.size
    while offset < length:
        if length - offset < _CHUNK.size:
            raise HepError(f"a truncated chunk header at byte {offset}")
        vendor, kind, size = _CHUNK.unpack_from(data, offset)
        if size < _CHUNK.size or offset + size > length:
            raise HepError(f"chunk 0x{kind:04x} at byte {offset} says {size} bytes, which do not fit")
        if vendor == 0:
            chunks[kind] = data[offset + _CHUNK.size : offset + size]
        offset += size
    return chunks
