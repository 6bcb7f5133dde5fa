"""UDP datagrams beyond Twisted's default 8,192-byte read reach the real server whole (issue 19 item 1).

The README promises messages up to 65,535 bytes, and 513 above
``--max-message-size``.  The largest UDP payload IPv4 carries is 65,507
bytes: that is the largest sent here.
"""

from __future__ import annotations

import socket
import time

import pytest
from harness import LOOPBACK

from sipproxy.message import Response, parse_message

IPV4_MAX_UDP = 65507


def padded(method: str, uri: str, size: int, call_id: str, port: int, to: str | None = None) -> bytes:
    """A ``method`` request of exactly ``size`` bytes, a body bringing it there, with its correct Content-Length."""
    head = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch=z9hG4bK-{call_id};rport\r\n"
        f"From: <sip:alice@example.test>;tag=a-{call_id}\r\n"
        f"To: <{to or uri}>\r\n"
        f"Call-ID: {call_id}@test\r\n"
        f"CSeq: 1 {method}\r\n"
        "Max-Forwards: 70\r\n"
        f"Contact: <sip:alice@{LOOPBACK}:{port}>\r\n"
        "Content-Type: text/plain\r\n"
    )
    for digits in range(1, 7):  # Content-Length's own digits count towards the size
        body = size - len(head) - len("Content-Length: \r\n\r\n") - digits
        if len(str(body)) == digits:
            break
    message = f"{head}Content-Length: {body}\r\n\r\n{'x' * body}".encode()
    assert len(message) == size
    return message


def final_response(server_port: int, data: bytes, call_id: str) -> Response:
    """Send one datagram; the final response to it (provisional ones skipped)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.settimeout(0.5)
        s.sendto(data, (LOOPBACK, server_port))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                reply = parse_message(s.recvfrom(65535)[0])
            except TimeoutError:
                continue
            if isinstance(reply, Response) and reply.call_id == f"{call_id}@test" and reply.status >= 200:
                return reply
    pytest.fail(f"no final response to the {len(data)}-byte datagram {call_id}")


@pytest.mark.parametrize("size", [8193, 16384, IPV4_MAX_UDP])
def test_large_datagrams_are_read_whole(server, size: int) -> None:  # type: ignore[no-untyped-def]
    port = server.sip_port
    options = final_response(port, padded("OPTIONS", f"sip:{LOOPBACK}:{port}", size, f"o{size}", 9), f"o{size}")
    assert (options.status, options.reason) == (200, "OK")
    register = padded("REGISTER", "sip:example.test", size, f"r{size}", 9, to="sip:alice@example.test")
    assert final_response(port, register, f"r{size}").status == 200
    # an INVITE for nobody registered: the proxy's answer, not the parser's 400 Bad Content-Length
    invite = padded("INVITE", "sip:nobody@example.test", size, f"i{size}", 9)
    assert final_response(port, invite, f"i{size}").status == 480


def test_over_the_message_size_limit_gets_513_within_it_an_answer(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--max-message-size", "10000")
    port = server.sip_port
    within = final_response(port, padded("OPTIONS", f"sip:{LOOPBACK}:{port}", 8193, "w", 9), "w")
    assert within.status == 200
    for size in (16384, IPV4_MAX_UDP):
        refused = final_response(port, padded("OPTIONS", f"sip:{LOOPBACK}:{port}", size, f"t{size}", 9), f"t{size}")
        assert (refused.status, refused.reason) == (513, "Message Too Large")
