"""OPTIONS through the real ``twistd -n sipproxy --users``: the answer must not tell a scanner who exists.

Issue "Hardening" item 9: an OPTIONS to a user nobody registered was
answered 200 by the server itself, one to a registered user 407 by the
proxy, so ``svwar -m OPTIONS`` listed every registered extension. Now
both get the proxy's 407 (authentication before the location lookup).
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import test_security_live
from harness import LOOPBACK, Server, final_response, require
from test_security_live import DOMAIN, PASSWORDS, TOOL_TIMEOUT, Phone, _table

from sipproxy.auth.params import parse_auth_params
from sipproxy.message import Response

users = test_security_live.users
"""The users file of the security tests (a fixture), with alice and extension 101."""


def register(server: Server, user: str) -> None:
    phone = Phone(server)
    try:
        challenge = phone.register(user)
        assert phone.register(user, phone.answer(challenge, user, PASSWORDS[user])).status == 200
    finally:
        phone.close()


def options(server: Server, user: str, n: int) -> Response:
    """An OPTIONS to ``sip:USER@DOMAIN`` as svwar sends it: From one of our domains, no credentials."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.settimeout(5)
        port = s.getsockname()[1]
        data = (
            f"OPTIONS sip:{user}@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch=z9hG4bK-opt{n};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=s{n}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
            f"Call-ID: scan-{n}@{LOOPBACK}\r\nCSeq: 1 OPTIONS\r\nContact: <sip:{user}@{LOOPBACK}:{port}>\r\n"
            "Accept: application/sdp\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        s.sendto(data, (LOOPBACK, server.sip_port))
        return final_response(s)


def shape(response: Response) -> tuple[int, str, list[str], list[list[str]]]:
    """Status, reason, header names in order and each challenge's parameter names: what a scanner can compare."""
    challenges = [sorted(parse_auth_params(v)[1]) for v in response.get_all("proxy-authenticate")]
    return response.status, response.reason, [h.key for h in response.headers], challenges


def test_options_to_a_registered_and_an_unknown_user_look_the_same(server_factory, users: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users))
    register(server, "alice")
    to_alice, to_nobody = options(server, "alice", 1), options(server, "nobody", 2)
    assert to_alice.status == 407
    assert shape(to_alice) == shape(to_nobody)


def test_svwar_with_options_finds_no_registered_extension(server_factory, users: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users))
    register(server, "101")
    result = subprocess.run(
        [require("svwar"), "-e100-110", "-m", "OPTIONS", "--domain", DOMAIN, LOOPBACK, "-p", str(server.sip_port)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "101" not in _table(output), output[-3000:]
    assert server.alive()
