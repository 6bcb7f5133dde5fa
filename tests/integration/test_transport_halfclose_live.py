"""A REGISTER over TCP and then a half-close (``shutdown(SHUT_WR)``) gets its 200, then the server closes.

Before, Twisted closed the whole connection when the client shut down its
side: the binding was stored and the 200 went nowhere (issue 19, item 9).
"""

from __future__ import annotations

import socket

from harness import LOOPBACK, register_query

from sipproxy.message import parse_message


def test_register_then_half_close_gets_the_200_and_then_the_close(server) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection((LOOPBACK, server.sip_port), timeout=5) as s:
        port = s.getsockname()[1]
        s.sendall(
            (
                "REGISTER sip:example.test SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP {LOOPBACK}:{port};branch=z9hG4bK-half1\r\n"
                "From: <sip:carol@example.test>;tag=h1\r\n"
                "To: <sip:carol@example.test>\r\n"
                "Call-ID: half1@test\r\n"
                "CSeq: 1 REGISTER\r\n"
                f"Contact: <sip:carol@{LOOPBACK}:{port};transport=tcp>\r\n"
                "Expires: 600\r\n"
                "Max-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        s.shutdown(socket.SHUT_WR)
        received = b""
        while True:  # until the server closes: a socket timeout here fails the test
            chunk = s.recv(65535)
            if not chunk:
                break
            received += chunk
    response = parse_message(received)
    assert (response.status, response.reason) == (200, "OK")  # type: ignore[union-attr]
    assert len(register_query(server.sip_port, "carol")) == 1
