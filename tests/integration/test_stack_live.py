"""What the real ``twistd -n sipproxy`` answers itself, and AORs with a port, on loopback.

- ``--domain example.test`` alone (our address is *not* a domain): an
  OPTIONS to ``sip:127.0.0.1:PORT`` -- what load balancers and monitoring
  send -- is the server itself (200), with and without ``--users``; so is a
  REGISTER to it.  Raw UDP and sipsak.
- RFC 4475 ``bext01``'s unknown Require/Proxy-Require in an OPTIONS to us: 420.
- A phone that registers ``To: <sip:carol@127.0.0.1:PORT>`` (baresip with the
  default domains) is reached by a call to ``sip:carol@127.0.0.1``.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness import LOOPBACK, ROOT, Server, final_response, require, sip_options, udp_final

from sipproxy.message import Request, Response, parse_message

DOMAIN = "example.test"


class OneDomainServer(Server):
    """``twistd -n sipproxy --domain example.test`` (the harness adds ``--domain 127.0.0.1``: dropped here)."""

    @property
    def args(self) -> list[str]:
        args = super().args
        for i in range(len(args) - 1):
            if args[i] == "--domain" and args[i + 1] == LOOPBACK:
                return args[:i] + args[i + 2 :]
        raise AssertionError("the harness no longer passes --domain 127.0.0.1")


@pytest.fixture
def one_domain(tmp_path: Path):  # type: ignore[no-untyped-def]
    servers: list[Server] = []

    def make(*extra: str, sip_port: int | None = None) -> Server:
        server = OneDomainServer(tmp_path, list(extra))
        if sip_port is not None:
            server.sip_port = sip_port
        assert server.args.count("--domain") == 1
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def test_options_to_our_address_and_port_is_200_when_only_a_domain_name_is_configured(one_domain) -> None:  # type: ignore[no-untyped-def]
    server = one_domain()
    response = udp_final(server.sip_port, sip_options(server.sip_port, call_id="lb-ping"))
    assert response.status == 200, response.start_line()
    assert "REGISTER" in (response.get("allow") or "")
    assert response.get("supported") == "outbound, path"
    assert response.get("server") == "sipproxy"


def four_digit_port() -> int:
    """A port free for UDP and TCP below 10000: sipsak 0.9.8 writes a five-digit one as four into its Request-URI."""
    for port in random.sample(range(6000, 9999), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            try:
                udp.bind((LOOPBACK, port))
                tcp.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 10000")


def test_sipsak_ping_of_our_address_and_port(one_domain) -> None:  # type: ignore[no-untyped-def]
    server = one_domain(sip_port=four_digit_port())
    result = subprocess.run(
        [require("sipsak"), "-vv", "-s", f"sip:{LOOPBACK}:{server.sip_port}"],  # no user part: the server itself
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "200 OK" in result.stdout


def test_options_to_our_address_is_answered_without_a_challenge_with_users(one_domain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    users = tmp_path / "users.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(
        [sys.executable, "-m", "sipproxy.auth.passwd", str(users), "alice", DOMAIN, "--password", "pw"],
        check=True,
        capture_output=True,
        env=env,
        timeout=30,
    )
    server = one_domain("--users", str(users))
    response = udp_final(server.sip_port, sip_options(server.sip_port, call_id="lb-ping-users"))
    assert response.status == 200, response.start_line()


def test_register_to_our_address_and_port_reaches_the_registrar(one_domain) -> None:  # type: ignore[no-untyped-def]
    server = one_domain()
    port = server.sip_port
    register = (
        f"REGISTER sip:{LOOPBACK}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:9;branch=z9hG4bK-reg-ip;rport\r\n"
        f"From: <sip:alice@{DOMAIN}>;tag=r1\r\n"
        f"To: <sip:alice@{DOMAIN}>\r\n"
        "Call-ID: reg-ip@test\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:alice@{LOOPBACK}:9>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    response = udp_final(port, register)
    assert response.status == 200, response.start_line()
    assert response.get_all("contact") == [f"<sip:alice@{LOOPBACK}:9>;expires=3600"]


def test_rfc4475_bext01_to_the_server_is_420_with_unsupported(one_domain) -> None:  # type: ignore[no-untyped-def]
    server = one_domain()
    extensions = (
        "Require: nothingSupportsThis, nothingSupportsThisEither\r\n"
        "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis\r\n"
    )
    response = udp_final(server.sip_port, sip_options(server.sip_port, extra_headers=extensions, call_id="bext01"))
    assert response.status == 420, response.start_line()
    assert response.get("unsupported") == (
        "noproxiessupportthis, nordoanyproxiessupportthis, nothingsupportsthis, nothingsupportsthiseither"
    )


def test_phone_registered_with_a_port_in_its_to_is_reached_without_it(server) -> None:  # type: ignore[no-untyped-def]
    """Issue 13 item 6: ``To: <sip:carol@127.0.0.1:PORT>`` registers sip:carol@127.0.0.1 (§10.3 step 5)."""
    port = server.sip_port
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller,
    ):
        for s in (phone, caller):
            s.bind((LOOPBACK, 0))
            s.settimeout(5)
        phone_port = phone.getsockname()[1]
        caller_port = caller.getsockname()[1]
        register = (
            f"REGISTER sip:{LOOPBACK}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{phone_port};branch=z9hG4bK-carol-reg;rport\r\n"
            f"From: <sip:carol@{LOOPBACK}:{port}>;tag=c1\r\n"
            f"To: <sip:carol@{LOOPBACK}:{port}>\r\n"
            "Call-ID: carol-reg@test\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:carol@{LOOPBACK}:{phone_port}>\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        phone.sendto(register, (LOOPBACK, port))
        assert final_response(phone).status == 200

        invite = (
            f"INVITE sip:carol@{LOOPBACK} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{caller_port};branch=z9hG4bK-call-carol;rport\r\n"
            f"From: <sip:dave@{LOOPBACK}>;tag=d1\r\n"
            f"To: <sip:carol@{LOOPBACK}>\r\n"
            "Call-ID: call-carol@test\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:dave@{LOOPBACK}:{caller_port}>\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        caller.sendto(invite, (LOOPBACK, port))
        reached = parse_message(phone.recvfrom(65535)[0])
        assert isinstance(reached, Request) and reached.method == "INVITE"
        assert reached.uri_text == f"sip:carol@{LOOPBACK}:{phone_port}"

        busy = Response(486, "Busy Here")
        for name in ("via", "from", "to", "call-id", "cseq"):
            for value in reached.get_all(name):
                busy.add(name, value + (";tag=carol" if name == "to" else ""))
        phone.sendto(busy.to_bytes(), (LOOPBACK, port))
        answer = final_response(caller)
        assert answer.status == 486
