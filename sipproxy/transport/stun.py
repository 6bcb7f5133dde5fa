# -*- test-case-name: tests.test_transport_stun -*-
"""STUN keep-alives on the SIP UDP port (RFC 5626 §8.3, RFC 5389): a Binding request gets its success response.

An outbound phone on UDP keeps its NAT mapping open, and checks that it
still has the same one, by sending STUN Binding requests to the port it
sends SIP to; the answer carries the address and port we saw it from
(XOR-MAPPED-ADDRESS), so the phone notices when the NAT moved it and
registers again.  No authentication: RFC 5626 §8.3 runs STUN there
without credentials.

Demultiplexing (RFC 7983 §7, RFC 5389 §6): a STUN message starts with a
byte 0 to 3 (the top two bits of its type are zero) and carries the magic
cookie at bytes 4-7; a SIP message starts with a letter.  :func:`is_stun`
is checked before the SIP parser sees the datagram.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib

__all__ = ["MAGIC_COOKIE", "is_stun", "stun_answer"]

MAGIC_COOKIE = 0x2112A442
_COOKIE = struct.pack("!I", MAGIC_COOKIE)
_HEADER = 20
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101
_XOR_MAPPED_ADDRESS = 0x0020
_FINGERPRINT = 0x8028
_FINGERPRINT_XOR = 0x5354554E


def is_stun(datagram: bytes) -> bool:
    """Does ``datagram`` look like STUN rather than SIP (first byte 0-3, the magic cookie)?"""
    return len(datagram) >= _HEADER and datagram[0] < 4 and datagram[4:8] == _COOKIE


def stun_answer(datagram: bytes, host: str, port: int) -> bytes | None:
    """The Binding success response to a Binding request from ``host:port``; ``None`` for anything else.

    A request that carried FINGERPRINT gets one back (RFC 5389 §7.3.1
    "SHOULD"); anything malformed, or any other STUN method or class (an
    indication, a response), gets no answer.
    """
    if not is_stun(datagram):
        return None
    kind, length = struct.unpack("!HH", datagram[:4])
    if kind != _BINDING_REQUEST or length % 4 or _HEADER + length != len(datagram):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    transaction = datagram[8:_HEADER]
    attributes = _xor_mapped_address(address, port, transaction)
    fingerprinted = _has_fingerprint(datagram[_HEADER:])
    size = len(attributes) + (8 if fingerprinted else 0)
    message = struct.pack("!HH", _BINDING_SUCCESS, size) + _COOKIE + transaction + attributes
    if fingerprinted:
        crc = (zlib.crc32(message) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
        message += struct.pack("!HHI", _FINGERPRINT, 4, crc)
    return message


def _xor_mapped_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, transaction: bytes) -> bytes:
    """RFC 5389 §15.2: the port XORed with the cookie's top 16 bits, the address with the cookie (and the id)."""
    key = _COOKIE if address.version == 4 else _COOKIE + transaction
    xored = bytes(a ^ b for a, b in zip(address.packed, key, strict=True))
    family = 0x01 if address.version == 4 else 0x02
    value = struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored
    return struct.pack("!HH", _XOR_MAPPED_ADDRESS, len(value)) + value


def _has_fingerprint(attributes: bytes) -> bool:
    """Does the attribute list end with FINGERPRINT (RFC 5389 §15.5: always the last one)?"""
    offset = 0
    last = None
    while offset + 4 <= len(attributes):
        kind, length = struct.unpack("!HH", attributes[offset : offset + 4])
        last = kind
        offset += 4 + length + (-length % 4)
    return last == _FINGERPRINT
