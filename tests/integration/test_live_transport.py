"""The real ``twistd -n sipproxy`` on loopback answers real peers over UDP and TCP."""

from __future__ import annotations

import socket
import subprocess

import pytest
from harness import LOOPBACK, Server, require, sip_options

from sipproxy.message import parse_message


def udp_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (LOOPBACK, port))
        return s.recvfrom(65535)[0]


def test_sipsak_ping_over_udp_and_tcp(server) -> None:  # type: ignore[no-untyped-def]
    sipsak = require("sipsak")
    for transport in ("udp", "tcp"):
        result = subprocess.run(
            [sipsak, "-vv", "--transport", transport, "-s", f"sip:ping@{LOOPBACK}:{server.sip_port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "200 OK" in result.stdout


def test_same_options_twice_gets_the_same_response_twice(server) -> None:  # type: ignore[no-untyped-def]
    request = sip_options(server.sip_port, call_id="twice")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(request, (LOOPBACK, server.sip_port))
        first = s.recvfrom(65535)[0]
        s.sendto(request, (LOOPBACK, server.sip_port))
        second = s.recvfrom(65535)[0]
    assert parse_message(first).status == 200  # type: ignore[union-attr]
    assert first == second


def test_broken_header_gets_400_and_server_keeps_answering(server) -> None:  # type: ignore[no-untyped-def]
    broken = sip_options(server.sip_port, call_id="broken").replace(b"Max-Forwards: 70", b"Max-Forwards: seventy")
    response = parse_message(udp_exchange(server.sip_port, broken))
    assert response.status == 400  # type: ignore[union-attr]
    assert response.reason == "Bad Max-Forwards"  # type: ignore[union-attr]
    ok = parse_message(udp_exchange(server.sip_port, sip_options(server.sip_port, call_id="after")))
    assert ok.status == 200  # type: ignore[union-attr]
    assert server.alive()


def test_tcp_options_and_keepalive(server) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection((LOOPBACK, server.sip_port), timeout=3) as s:
        s.sendall(b"\r\n\r\n")
        assert s.recv(2) == b"\r\n"
        s.sendall(sip_options(server.sip_port, transport="tcp", call_id="tcp1"))
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
    assert parse_message(data).status == 200  # type: ignore[union-attr]


def test_log_sip_traces_every_message_in_and_out(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--log-sip")
    udp_exchange(server.sip_port, sip_options(server.sip_port, call_id="traced"))
    log = server.log_text()
    assert f"SIP in UDP from {LOOPBACK}:" in log
    assert "OPTIONS sip:" in log
    assert f"SIP out UDP to {LOOPBACK}:" in log
    assert "SIP/2.0 200 OK" in log


def test_ipv6_loopback_udp_and_tcp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if not socket.has_ipv6:
        pytest.fail("this host has no IPv6 support; sipproxy listens on IPv6 by default")
    server = Server(tmp_path, [])
    server.interface = "::1"
    server.start()
    try:
        request = sip_options(server.sip_port, call_id="v6").replace(f"{LOOPBACK}:9".encode(), b"[::1]:9")
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(request, ("::1", server.sip_port))
            response = parse_message(s.recvfrom(65535)[0])
        assert response.status == 200  # type: ignore[union-attr]
        assert response.top_via.host == "[::1]"
        with socket.create_connection(("::1", server.sip_port), timeout=3) as c:
            c.sendall(request.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP").replace(b"-v6", b"-v6tcp"))
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
        assert parse_message(data).status == 200  # type: ignore[union-attr]
    finally:
        server.stop()
