"""Tests for sipproxy.transport.stun and the UDP listener's STUN keep-alive answers (RFC 5626 §8.3, RFC 5389)."""

from __future__ import annotations

import ipaddress
import struct
import zlib

import pytest

from sipproxy.transport.stun import is_stun, stun_answer

try:
    from tests.test_transport import make_stack, options
except ImportError:  # pragma: no cover
    from test_transport import make_stack, options  # type: ignore[no-redef]

COOKIE = 0x2112A442
TXID = bytes(range(12))


def binding_request(fingerprint: bool = False, txid: bytes = TXID) -> bytes:
    """A Binding request as a phone's STUN client writes it (RFC 5389 §6, §15.5)."""
    message = struct.pack("!HHI", 0x0001, 8 if fingerprint else 0, COOKIE) + txid
    if fingerprint:
        crc = (zlib.crc32(message) ^ 0x5354554E) & 0xFFFFFFFF
        message += struct.pack("!HHI", 0x8028, 4, crc)
    return message


def mapped(response: bytes) -> tuple[str, int]:
    """Read XOR-MAPPED-ADDRESS back, as the phone does."""
    kind, length, cookie = struct.unpack("!HHI", response[:8])
    assert (kind, cookie, response[8:20], len(response)) == (0x0101, COOKIE, TXID, 20 + length)
    offset = 20
    while offset < len(response):
        attr, size = struct.unpack("!HH", response[offset : offset + 4])
        value = response[offset + 4 : offset + 4 + size]
        if attr == 0x0020:
            family, xport = value[1], struct.unpack("!H", value[2:4])[0]
            key = struct.pack("!I", COOKIE) + (TXID if family == 2 else b"")
            raw = bytes(a ^ b for a, b in zip(value[4:], key, strict=True))
            return str(ipaddress.ip_address(raw)), xport ^ (COOKIE >> 16)
        offset += 4 + size + (-size % 4)
    raise AssertionError("no XOR-MAPPED-ADDRESS")


@pytest.mark.parametrize(("host", "port"), [("203.0.113.9", 40000), ("2001:db8::7", 5062)])
def test_a_binding_request_gets_the_address_we_saw_it_from(host: str, port: int) -> None:
    assert mapped(stun_answer(binding_request(), host, port)) == (host, port)  # type: ignore[arg-type]


def test_a_fingerprinted_request_gets_a_valid_fingerprint_back() -> None:
    answer = stun_answer(binding_request(fingerprint=True), "203.0.113.9", 40000)
    assert answer is not None and mapped(answer) == ("203.0.113.9", 40000)
    attr, size, crc = struct.unpack("!HHI", answer[-8:])
    assert (attr, size) == (0x8028, 4)
    assert crc == (zlib.crc32(answer[:-8]) ^ 0x5354554E) & 0xFFFFFFFF


@pytest.mark.parametrize(
    "datagram",
    [
        struct.pack("!HHI", 0x0011, 0, COOKIE) + TXID,  # a Binding indication: no answer (RFC 5389 §7.3.2)
        struct.pack("!HHI", 0x0101, 0, COOKIE) + TXID,  # a response
        binding_request()[:-1],  # truncated
        struct.pack("!HHI", 0x0001, 4, COOKIE) + TXID,  # length says more than there is
    ],
)
def test_anything_but_a_whole_binding_request_gets_no_answer(datagram: bytes) -> None:
    assert stun_answer(datagram, "203.0.113.9", 40000) is None


def test_sip_is_never_taken_for_stun() -> None:
    assert not is_stun(options()) and not is_stun(b"\r\n\r\n") and is_stun(binding_request())


def test_the_udp_listener_answers_stun_before_the_sip_parser_and_sip_still_works() -> None:
    transport, udp, _, _ = make_stack()
    proto = transport.udp[4]
    from sipproxy.transport.udp import SipDatagramProtocol

    listener = SipDatagramProtocol(transport, 4)
    listener.transport = proto  # type: ignore[assignment]
    listener.datagramReceived(binding_request(), ("203.0.113.9", 40000))
    [(answer, addr)] = udp.written
    assert addr == ("203.0.113.9", 40000) and mapped(answer) == ("203.0.113.9", 40000)
    assert transport.metrics.value(transport.metrics.parse_errors, "UDP") == 0  # never seen as a broken SIP message
    udp.written.clear()
    listener.datagramReceived(options(), ("192.0.2.7", 5062))
    [(data, _)] = udp.written
    assert data.startswith(b"SIP/2.0 200 OK")
