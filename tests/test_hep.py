"""HEP3 (issue 18): the chunk layout of the HEP3 specification, and the sender the wire log copies to."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python import usage

from sipproxy.tap import Options
from sipproxy.transport.hep import HepSender, parse_capture_server
from sipproxy.transport.hep3 import CHUNKS, HepError, HepPacket, decode, encode
from sipproxy.transport.wirelog import WireLog

INVITE = b"INVITE sip:bob@example.test SIP/2.0\r\nCall-ID: abc@192.0.2.7\r\nContent-Length: 0\r\n\r\n"


def packet(**fields: Any) -> HepPacket:
    values: dict[str, Any] = {
        "src_host": "192.0.2.7",
        "src_port": 5062,
        "dst_host": "192.0.2.1",
        "dst_port": 5060,
        "transport": "UDP",
        "timestamp": 1_714_566_896.25,
        "payload": INVITE,
        "capture_id": 2001,
    }
    values.update(fields)
    return HepPacket(**values)


def chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """(vendor, type, value) of each chunk, read by the specification's layout (independently of ``decode``)."""
    assert data[:4] == b"HEP3"
    (total,) = struct.unpack("!H", data[4:6])
    assert total == len(data)
    out, offset = [], 6
    while offset < total:
        vendor, kind, length = struct.unpack("!HHH", data[offset : offset + 6])
        out.append((vendor, kind, data[offset + 6 : offset + length]))
        offset += length
    assert offset == total
    return out


def test_an_ipv4_udp_message_is_the_specifications_chunks_in_network_order() -> None:
    data = encode(packet(correlation_id="abc@192.0.2.7"))
    assert chunks(data) == [
        (0, 0x0001, b"\x02"),  # IPv4
        (0, 0x0002, b"\x11"),  # UDP, 17
        (0, 0x0003, bytes([192, 0, 2, 7])),
        (0, 0x0004, bytes([192, 0, 2, 1])),
        (0, 0x0007, struct.pack("!H", 5062)),
        (0, 0x0008, struct.pack("!H", 5060)),
        (0, 0x0009, struct.pack("!I", 1_714_566_896)),
        (0, 0x000A, struct.pack("!I", 250_000)),
        (0, 0x000B, b"\x01"),  # SIP
        (0, 0x000C, struct.pack("!I", 2001)),
        (0, 0x0011, b"abc@192.0.2.7"),
        (0, 0x000F, INVITE),
    ]


def test_ipv6_tls_with_an_authentication_key() -> None:
    data = encode(packet(src_host="[2001:db8::7]", dst_host="2001:db8::1", transport="TLS", auth_key="s3cret"))
    found = decode(data)
    assert found[CHUNKS["family"]] == b"\x0a"
    assert found[CHUNKS["protocol"]] == bytes([22])
    assert found[CHUNKS["src_ip6"]] == bytes.fromhex("20010db8000000000000000000000007")
    assert found[CHUNKS["dst_ip6"]] == bytes.fromhex("20010db8000000000000000000000001")
    assert found[CHUNKS["auth_key"]] == b"s3cret"
    assert CHUNKS["src_ip4"] not in found


def test_an_ipv4_side_talking_to_an_ipv6_peer_is_written_ipv4_mapped() -> None:
    found = decode(encode(packet(src_host="192.0.2.1", dst_host="2001:db8::1")))
    assert found[CHUNKS["src_ip6"]] == bytes.fromhex("00000000000000000000ffffc0000201")


@pytest.mark.parametrize(("transport", "number"), [("TCP", 6), ("WS", 6), ("WSS", 22), ("SCTP", 132)])
def test_transports_as_ip_protocol_ids(transport: str, number: int) -> None:
    assert decode(encode(packet(transport=transport)))[CHUNKS["protocol"]] == bytes([number])


def test_what_cannot_be_said_in_hep3_is_refused_clearly() -> None:
    with pytest.raises(HepError, match="at most 65535 bytes"):
        encode(packet(payload=b"x" * 65_500))
    with pytest.raises(HepError, match="not an IP address"):
        encode(packet(src_host="proxy.example.test"))
    with pytest.raises(HepError, match="not HEP3"):
        decode(b"HEP2\x00\x06")
    with pytest.raises(HepError, match="says 99 bytes"):
        decode(b"HEP3\x00\x0c\x00\x00\x00\x01\x00\x63")


def test_decode_skips_other_vendors_chunks() -> None:
    data = encode(packet())
    extra = struct.pack("!HHH", 0x0003, 0x0001, 7) + b"X"
    data = b"HEP3" + struct.pack("!H", len(data) + len(extra)) + data[6:] + extra
    assert decode(data)[CHUNKS["payload"]] == INVITE


# -- the sender -------------------------------------------------------------------------


class Datagrams:
    def __init__(self, error: OSError | None = None) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.error = error

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.error is not None:
            raise self.error
        self.written.append((data, addr))


def sender(clock: Clock, socket: Datagrams) -> HepSender:
    hep = HepSender(clock, ("127.0.0.1", 9060), lambda transport, peer: ("192.0.2.1", 5060), capture_id=7)
    hep.transport = socket  # type: ignore[assignment]
    return hep


def test_the_wire_logs_copy_goes_out_as_hep_with_our_side_and_the_call_id() -> None:
    clock = Clock()
    clock.advance(1000.5)
    socket = Datagrams()
    hep = sender(clock, socket)
    wire = WireLog(None, copy=hep.copy)
    wire.incoming("UDP", "192.0.2.7", 5062, INVITE)
    wire.outgoing("TCP", "192.0.2.9", 5070, INVITE)
    wire.outgoing("TCP", "192.0.2.9", 5070, b"\r\n")  # a keep-alive pong: not SIP, not copied
    (received, to), (sent, _) = socket.written
    assert to == ("127.0.0.1", 9060)
    got = decode(received)
    assert got[CHUNKS["src_ip4"]] == bytes([192, 0, 2, 7]) and got[CHUNKS["dst_ip4"]] == bytes([192, 0, 2, 1])
    assert got[CHUNKS["src_port"]] == struct.pack("!H", 5062)
    assert got[CHUNKS["seconds"]] == struct.pack("!I", 1000) and got[CHUNKS["microseconds"]] == struct.pack(
        "!I", 500_000
    )
    assert got[CHUNKS["capture_id"]] == struct.pack("!I", 7)
    assert got[CHUNKS["correlation_id"]] == b"abc@192.0.2.7"
    out = decode(sent)
    assert out[CHUNKS["src_ip4"]] == bytes([192, 0, 2, 1]) and out[CHUNKS["dst_port"]] == struct.pack("!H", 5070)
    assert out[CHUNKS["protocol"]] == b"\x06"
    assert hep.sent == 2


def test_a_copy_that_cannot_go_is_dropped_with_a_warning_every_ten_seconds_at_most() -> None:
    clock = Clock()
    hep = sender(clock, Datagrams(OSError("Network is unreachable")))
    with capturedLogs() as logged:
        for _ in range(5):
            hep.copy(False, "UDP", "192.0.2.7", 5062, INVITE)
        clock.advance(10)
        hep.copy(False, "UDP", "192.0.2.7", 5062, INVITE)
    warnings = [e for e in logged if e["log_namespace"] == "sipproxy.hep"]
    assert [e["dropped"] for e in warnings] == [1, 6]
    assert "Network is unreachable" in warnings[0]["why"]
    assert hep.dropped == 6 and hep.sent == 0


def test_a_sender_not_listening_copies_nothing() -> None:
    hep = HepSender(Clock(), ("127.0.0.1", 9060), lambda t, p: ("127.0.0.1", 5060))
    hep.copy(True, "UDP", "127.0.0.1", 5062, INVITE)
    assert hep.sent == hep.dropped == 0


# -- the options ---------------------------------------------------------------------------


def test_capture_server_descriptions() -> None:
    assert parse_capture_server("udp:127.0.0.1:9060") == ("127.0.0.1", 9060)
    assert parse_capture_server("udp:[::1]:9060") == ("::1", 9060)
    for bad in ("tcp:127.0.0.1:9060", "udp:127.0.0.1", "udp:127.0.0.1:0", "127.0.0.1:9060"):
        with pytest.raises(ValueError, match="udp:HOST:PORT"):
            parse_capture_server(bad)


def test_hep_options() -> None:
    options = Options()
    options.parseOptions(["--hep", "udp:127.0.0.1:9060", "--hep-capture-id", "42", "--hep-password", "pw"])
    assert options["hep-server"] == ("127.0.0.1", 9060) and options["hep-capture-id"] == 42
    with pytest.raises(usage.UsageError, match=r"--hep 'udp:x'"):
        Options().parseOptions(["--hep", "udp:x"])
    with pytest.raises(usage.UsageError, match="--hep-capture-id"):
        Options().parseOptions(["--hep", "udp:127.0.0.1:9060", "--hep-capture-id", "-1"])
    with pytest.raises(usage.UsageError, match="--hep-password needs --hep"):
        Options().parseOptions(["--hep-password", "pw"])
