"""TCP connection slots in the real server: idle and slow peers cannot lock anyone out (issue 19, item 3).

64 connections per address and 1,024 in all, with a 600 s idle timeout
reset by any byte: 16 addresses could hold every slot for ten minutes.  Now
a newcomer over the limit takes the slot of the longest idle connection
without a registered binding, and a message must arrive whole within
``--tcp-message-timeout`` seconds of its first byte.
"""

from __future__ import annotations

import socket

from harness import LOOPBACK, metrics, sip_options

from sipproxy.message import parse_message


def read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, f"the server closed the connection without answering ({data!r})"
        data += chunk
    return data


def closed_by_server(s: socket.socket) -> bool:
    """True once the server closed (or reset) ``s``; a socket timeout raises instead."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def metric(server, name: str) -> float:  # type: ignore[no-untyped-def]
    return metrics(server).get(name, 0.0)


def test_a_newcomer_over_the_per_address_limit_is_served_and_the_longest_idle_goes(server) -> None:  # type: ignore[no-untyped-def]
    idle = [socket.create_connection((LOOPBACK, server.sip_port), timeout=5) for _ in range(64)]
    try:
        with socket.create_connection((LOOPBACK, server.sip_port), timeout=5) as s:
            s.sendall(sip_options(server.sip_port, transport="tcp", call_id="newcomer"))
            assert parse_message(read_response(s)).status == 200  # type: ignore[union-attr]
        idle[0].settimeout(5)
        assert closed_by_server(idle[0])  # the first idle connection was closed for it
        assert metric(server, 'sip_tcp_connections_closed_total{reason="evicted"}') == 1
        assert metric(server, "sip_tcp_connections") >= 63
    finally:
        for s in idle:
            s.close()


def test_a_message_trickling_in_is_cut_off_at_its_deadline(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--tcp-message-timeout", "1")
    with socket.create_connection((LOOPBACK, server.sip_port), timeout=10) as slow:
        slow.sendall(sip_options(server.sip_port, transport="tcp", call_id="slow")[:40])
        assert closed_by_server(slow)  # closed by the server, not by the 10 s socket timeout
    assert metric(server, 'sip_tcp_connections_closed_total{reason="timeout"}') == 1
    assert "no whole message within 1 s of its first byte" in server.log_text()
