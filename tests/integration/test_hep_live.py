"""``--hep``: the real ``twistd -n sipproxy`` copies a sipp call to a HEP3 capture server (a UDP socket here)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from harness import LOOPBACK
from test_proxy_sipp import Peers, assert_no_bugs, finished, succeeded

from sipproxy.transport.hep3 import CHUNKS, decode


def received(
    capture: socket.socket, until: Callable[[list[dict[int, bytes]]], bool], timeout: float = 10
) -> list[dict[int, bytes]]:
    """The HEP3 packets the capture socket got, decoded, once ``until`` holds for them (or the timeout passed)."""
    packets: list[dict[int, bytes]] = []
    deadline = time.monotonic() + timeout
    capture.settimeout(0.2)
    while time.monotonic() < deadline and not until(packets):
        try:
            data, _ = capture.recvfrom(65535)
        except TimeoutError:
            continue
        packets.append(decode(data))
    return packets


def first_line(packet: dict[int, bytes]) -> str:
    return packet[CHUNKS["payload"]].split(b"\r\n", 1)[0].decode()


def port(packet: dict[int, bytes], which: str) -> int:
    return int(struct.unpack("!H", packet[CHUNKS[which]])[0])


def test_every_message_of_a_sipp_call_reaches_the_capture_server(server_factory: Any) -> None:
    capture = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    capture.bind((LOOPBACK, 0))
    capture_port = capture.getsockname()[1]
    server = server_factory("--hep", f"udp:{LOOPBACK}:{capture_port}", "--hep-capture-id", "4242")
    peers = Peers(server)
    started = time.time()
    try:
        answers = peers.uas("uas_answer.xml", user="dave", hold_ms=100)
        uac = peers.call("call_uac.xml", keys={"callee": "dave"})
        succeeded(uac)
        finished(answers)
    finally:
        peers.stop()
        capture_done = time.time()

    def whole_call(packets: list[dict[int, bytes]]) -> bool:
        lines = [first_line(p) for p in packets]
        return (
            sum(line.startswith("BYE ") for line in lines) >= 2 and sum(line == "SIP/2.0 200 OK" for line in lines) >= 5
        )

    packets = received(capture, whole_call)
    capture.close()
    assert packets, "no HEP packet arrived"
    assert whole_call(packets), [first_line(p) for p in packets]
    assert {p[CHUNKS["capture_id"]] for p in packets} == {struct.pack("!I", 4242)}
    assert {p[CHUNKS["protocol_type"]] for p in packets} == {b"\x01"}  # SIP
    assert {p[CHUNKS["family"]] for p in packets} == {b"\x02"} and {p[CHUNKS["protocol"]] for p in packets} == {b"\x11"}
    for p in packets:
        assert p[CHUNKS["src_ip4"]] == socket.inet_aton(LOOPBACK) and p[CHUNKS["dst_ip4"]] == socket.inet_aton(LOOPBACK)
        (seconds,) = struct.unpack("!I", p[CHUNKS["seconds"]])
        assert int(started) - 1 <= seconds <= capture_done + 1

    # The call, both legs, each message once in and once out, with the side it crossed.
    invites = [p for p in packets if first_line(p).startswith("INVITE sip:dave@")]
    into_proxy = [p for p in invites if port(p, "dst_port") == server.sip_port]
    out_of_proxy = [p for p in invites if port(p, "src_port") == server.sip_port]
    assert len(into_proxy) == 1 and port(into_proxy[0], "src_port") == uac.port
    assert len(out_of_proxy) == 1 and port(out_of_proxy[0], "dst_port") == answers.port
    call_id = into_proxy[0][CHUNKS["correlation_id"]]
    assert out_of_proxy[0][CHUNKS["correlation_id"]] == call_id
    assert b"Call-ID: " + call_id in into_proxy[0][CHUNKS["payload"]]
    lines = [first_line(p) for p in packets if p.get(CHUNKS["correlation_id"]) == call_id]
    for method in ("INVITE", "ACK", "BYE"):
        assert sum(line.startswith(method + " ") for line in lines) == 2, lines
    # The REGISTER of the callee was copied too (everything sent and received, not only calls).
    assert any(first_line(p).startswith("REGISTER ") for p in packets)
    assert "HEP3 copies of every SIP message to" in server.log_text()
    assert_no_bugs(server)
