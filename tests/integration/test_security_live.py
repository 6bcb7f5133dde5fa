"""Digest authentication and abuse limits in the real ``twistd -n sipproxy --users FILE`` on loopback.

Peers: sipp (REGISTER with 401, a call through the proxy with 407), the
sipvicious scanners ``svwar`` (extension enumeration) and ``svcrack``
(password guessing), and plain sockets for SHA-256, the rate limit and the
size limit.

sipp 3.6, sipsak 0.9.8 and svcrack 0.3.3 read only the first challenge and
know only MD5; the default challenges put MD5 first for a phone not seen
before (``sipproxy.security.challenges``), so they work against the defaults.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest
from harness import LOOPBACK, SCENARIOS, Server, free_port, metrics, passwd_file, require

from sipproxy.auth import compute_response, ha1, parse_auth_params
from sipproxy.message import Response, parse_message

DOMAIN = "example.test"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "101": "1234", "105": "s3cr3t"}
TOOL_TIMEOUT = 90


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return passwd_file(tmp_path / "users.txt", PASSWORDS, DOMAIN)


def run_sipp(server: Server, scenario: str, port: int, *args: str, name: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require("sipp"),
            f"{LOOPBACK}:{server.sip_port}",
            "-sf",
            str(SCENARIOS / scenario),
            "-i",
            LOOPBACK,
            "-p",
            str(port),
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "30s",
            "-timeout_error",
            "-trace_err",
            "-error_file",
            str(server.workdir / f"sipp-{name or scenario}-errors.log"),
            *args,
        ],
        cwd=server.workdir,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )


def stored_aors(server: Server) -> set[str]:
    with sqlite3.connect(f"file:{server.db}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute("SELECT aor FROM bindings")}


# -- sipp -------------------------------------------------------------------------------


def register_with_digest(
    server: Server, user: str, password: str, *args: str, port: int | None = None, name: str = ""
) -> subprocess.CompletedProcess[str]:
    """sipp's REGISTER that answers the 401 with ``-au``/``-ap`` (scenarios/auth_register.xml)."""
    keys = ["-key", "domain", DOMAIN, "-key", "user", user]
    return run_sipp(
        server, "auth_register.xml", port or free_port(), "-au", user, "-ap", password, *keys, *args, name=name or user
    )


def test_sipp_registers_with_digest_and_calls_through_the_proxy(server_factory, users: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users), "--digest-algorithms", "MD5")
    result = register_with_digest(server, "alice", "alice-secret")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]

    wrong = register_with_digest(server, "alice", "guess", "-timeout", "5s", name="wrong")
    assert wrong.returncode != 0  # 401 again instead of 200

    callee_port = free_port()
    result = register_with_digest(server, "bob", "bob-secret", port=callee_port)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert stored_aors(server) == {f"sip:alice@{DOMAIN}", f"sip:bob@{DOMAIN}"}

    callee = subprocess.Popen(
        [
            require("sipp"),
            f"{LOOPBACK}:{server.sip_port}",
            "-sf",
            str(SCENARIOS / "auth_uas.xml"),
            "-i",
            LOOPBACK,
            "-p",
            str(callee_port),
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "40s",
            "-timeout_error",
            "-trace_err",
            "-error_file",
            str(server.workdir / "sipp-uas-errors.log"),
        ],
        cwd=server.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        caller = run_sipp(
            server,
            "auth_call.xml",
            free_port(),
            "-au",
            "alice",
            "-ap",
            "alice-secret",
            "-d",
            "300",
            "-key",
            "domain",
            DOMAIN,
            "-key",
            "caller",
            "alice",
            "-key",
            "callee",
            "bob",
            name="call",
        )
        assert caller.returncode == 0, caller.stdout[-3000:] + caller.stderr[-2000:]
        out, _ = callee.communicate(timeout=TOOL_TIMEOUT)
        assert callee.returncode == 0, out[-3000:]
    finally:
        if callee.poll() is None:
            callee.kill()
            callee.wait()
    counts = metrics(server)
    assert counts["sip_auth_failures_total"] == 1  # the wrong password, nothing else
    assert "Traceback" not in server.log_text()


# -- SHA-256 with a plain socket -----------------------------------------------------------


class Phone:
    """A UDP user agent that answers digest challenges (SHA-256 if offered first)."""

    def __init__(self, server: Server, host: str = LOOPBACK) -> None:
        self.server = server
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(3)
        self.port = self.sock.getsockname()[1]
        self.cseq = 0

    def close(self) -> None:
        self.sock.close()

    def register(self, user: str, authorization: str | None = None, call_id: str | None = None) -> Response:
        self.cseq += 1
        lines = [
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK-{user}-{self.cseq};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@{DOMAIN}>;tag={user}",
            f"To: <sip:{user}@{DOMAIN}>",
            f"Call-ID: {call_id or f'live-{user}-{self.port}'}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{user}@{self.host}:{self.port}>",
            "Expires: 600",
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        data = ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()
        self.sock.sendto(data, (LOOPBACK, self.server.sip_port))
        while True:
            response = parse_message(self.sock.recvfrom(65535)[0])
            assert isinstance(response, Response)
            if response.status >= 200:
                return response

    def answer(self, challenge: Response, user: str, password: str) -> str:
        """Answer the topmost challenge (RFC 8760 §2.4), as pjsua2 does."""
        _, offered = parse_auth_params(challenge.get_all("www-authenticate")[0])
        algorithm, nonce, realm = offered["algorithm"], offered["nonce"], offered["realm"]
        uri = f"sip:{DOMAIN}"
        digest = compute_response(
            algorithm, ha1(algorithm, user, realm, password), "REGISTER", uri, nonce, "00000001", "c0ffee", "auth"
        )
        return (
            f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{digest}", '
            f'algorithm={algorithm}, cnonce="c0ffee", nc=00000001, qop=auth, opaque="{offered["opaque"]}"'
        )


def _challenge_shape(response: Response) -> list[list[str]]:
    return [
        [f"{k}={v}" if k != "nonce" else k for k, v in parse_auth_params(value)[1].items()]
        for value in response.get_all("www-authenticate")
    ]


def _offered(challenge: Response) -> list[str]:
    return [parse_auth_params(value)[1]["algorithm"] for value in challenge.get_all("www-authenticate")]


def test_default_server_offers_md5_alone_then_sha256_and_a_sha256_phone_moves_to_sha256(
    server_factory, users: Path
) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users))
    assert "Digest authentication on: 4 users in realm example.test" in server.log_text()
    phone = Phone(server)
    try:
        challenge = phone.register("alice")
        assert challenge.status == 401
        assert _offered(challenge) == ["MD5"]  # a phone not seen before: MD5 alone
        unknown = phone.register("nobody")
        assert unknown.status == 401 and _challenge_shape(unknown) == _challenge_shape(challenge)
        again = phone.register("alice", phone.answer(challenge, "alice", "wrong"))
        assert again.status == 401 and _offered(again) == ["MD5"]
        assert phone.register("alice", phone.answer(again, "alice", "alice-secret")).status == 200
        refresh = phone.register("alice")  # it answered MD5: now SHA-256 on top, and the phone takes it
        assert _offered(refresh) == ["SHA-256", "MD5"]
        assert phone.register("alice", phone.answer(refresh, "alice", "alice-secret")).status == 200
        assert _offered(phone.register("alice")) == ["SHA-256", "MD5"]
    finally:
        phone.close()
    assert stored_aors(server) == {f"sip:alice@{DOMAIN}"}
    assert metrics(server)["sip_auth_failures_total"] == 1


# -- sipsak and sipp against the defaults (issue 13 item 1) ------------------------------------


def _sipsak_register(server: Server, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require("sipsak"),
            "-U",
            "-x",
            "600",
            "-s",
            f"sip:{user}@{LOOPBACK}:{server.sip_port}",
            "-a",
            password,
            "-u",
            user,
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )


def test_sipsak_registers_with_the_default_digest_algorithms(server_factory, users: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users))
    for _ in range(2):  # and again: each run is a new phone (a new port), MD5 on top each time
        result = _sipsak_register(server, "alice", "alice-secret")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert any(aor.startswith(f"sip:alice@{LOOPBACK}") for aor in stored_aors(server))
    wrong = _sipsak_register(server, "alice", "guess")
    assert wrong.returncode != 0
    assert metrics(server)["sip_auth_failures_total"] == 1


def test_sipp_registers_with_the_default_digest_algorithms(server_factory, users: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users))
    result = register_with_digest(server, "alice", "alice-secret")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert stored_aors(server) == {f"sip:alice@{DOMAIN}"}


def test_a_phone_that_does_not_answer_the_challenge_gets_md5_alone_and_the_log_says_so(
    server_factory, users: Path
) -> None:  # type: ignore[no-untyped-def]
    """What baresip 1.0 does: no answer to a 401 holding a SHA-256 challenge, the same REGISTER again later."""
    server = server_factory("--users", str(users))
    phone = Phone(server)
    try:
        first = phone.register("alice", call_id="baresip")
        assert _offered(first) == ["MD5"]
        assert phone.register("alice", phone.answer(first, "alice", "alice-secret"), call_id="baresip").status == 200
        assert _offered(phone.register("alice", call_id="baresip")) == ["SHA-256", "MD5"]  # the probe
        retry = phone.register("alice", call_id="baresip")  # baresip fails on it and comes back without credentials
        assert _offered(retry) == ["MD5"]
        assert phone.register("alice", phone.answer(retry, "alice", "alice-secret"), call_id="baresip").status == 200
    finally:
        phone.close()
    log = server.log_text()
    assert re.search(rf"alice@127\.0\.0\.1:{phone.port} did not answer the SHA-256, MD5 challenge", log), log[-3000:]


def test_open_server_says_so_at_start_up(server) -> None:  # type: ignore[no-untyped-def]
    assert "Authentication is off" in server.log_text()


# -- sipvicious ----------------------------------------------------------------------------


def _table(output: str) -> dict[str, str]:
    """The result table of svwar (``| 101 | reqauth |``) or svcrack (``| 101 | 1234 |``)."""
    rows = {}
    for line in output.splitlines():
        match = re.match(r"\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*$", line)
        if match and match.group(1) != "Extension":
            rows[match.group(1)] = match.group(2)
    return rows


def test_svwar_finds_no_extension(server_factory, users: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users))
    svwar = require("svwar")
    for method in ("REGISTER", "INVITE"):
        for extra in ([], ["--force"]):
            result = subprocess.run(
                [svwar, "-e100-110", "-m", method, *extra, LOOPBACK, "-p", str(server.sip_port)],
                capture_output=True,
                text=True,
                timeout=TOOL_TIMEOUT,
                check=False,
            )
            output = result.stdout + result.stderr
            assert "found nothing" in output, (method, extra, output[-3000:])
            assert not {"101", "105"} & set(_table(output)), (method, extra, output[-3000:])
    assert server.alive()


def _svcrack(server: Server, wordlist: Path) -> str:
    result = subprocess.run(
        [
            require("svcrack"),
            "-u",
            "101",
            "-d",
            str(wordlist),
            "--maximumtime",
            "3",
            LOOPBACK,
            "-p",
            str(server.sip_port),
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    return result.stdout + result.stderr


def test_svcrack_is_blocked_before_it_reaches_the_password(server_factory, users: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wordlist = tmp_path / "words.txt"
    wordlist.write_text("".join(f"guess{n}\n" for n in range(10)) + "1234\n")  # the right one is the 11th

    server = server_factory("--users", str(users), "--digest-algorithms", "MD5", "--max-failures", "5")
    output = _svcrack(server, wordlist)
    assert _table(output) == {} and "1234" not in output, output[-3000:]
    log = server.log_text()
    assert re.search(r"Blocked user 101 at 127\.0\.0\.1 for 900 s after 5 failed authentications", log), log[-3000:]
    counts = metrics(server)
    assert counts["sip_auth_failures_total"] == 5
    assert counts['sip_blocked_requests_total{reason="auth"}'] >= 1

    # the blocked phone is refused even with the right password; another user at that address is not
    phone = Phone(server)
    try:
        challenge = phone.register("101")
        assert phone.register("101", phone.answer(challenge, "101", "1234")).status == 403
        challenge = phone.register("105")
        assert phone.register("105", phone.answer(challenge, "105", "s3cr3t")).status == 200
    finally:
        phone.close()
    server.stop()

    # control: with a generous limit the same run finds the password, so it was the block that stopped it
    generous = server_factory("--users", str(users), "--digest-algorithms", "MD5", "--max-failures", "50")
    assert _table(_svcrack(generous, wordlist)) == {"101": "1234"}


def test_svcrack_against_the_defaults_is_blocked_before_it_reaches_the_password(
    server_factory, users: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """MD5 on top lets MD5-only guessers start too; the (address, user) block stops them (``--max-failures`` 10)."""
    server = server_factory("--users", str(users))
    wordlist = tmp_path / "words.txt"
    wordlist.write_text("".join(f"guess{n}\n" for n in range(10)) + "1234\n")  # the right one is the 11th
    output = _svcrack(server, wordlist)
    assert _table(output) == {} and "1234" not in output, output[-3000:]
    assert metrics(server)["sip_auth_failures_total"] == 10
    assert server.alive()


# -- blocks: a phone, not its neighbours; spoofed packets count for nothing --------------------


def test_a_wrong_password_blocks_its_phone_not_the_other_users_behind_the_same_address(
    server_factory, users: Path
) -> None:  # type: ignore[no-untyped-def]
    """Issue 13 item 2: alice's phone with a wrong password and bob's phone behind one address."""
    server = server_factory("--users", str(users), "--max-failures", "3")
    alice, bob = Phone(server), Phone(server)
    try:
        statuses = []
        for _ in range(3):
            challenge = alice.register("alice")
            statuses.append(alice.register("alice", alice.answer(challenge, "alice", "wrong")).status)
        assert statuses == [401, 401, 403]
        challenge = alice.register("alice")
        assert alice.register("alice", alice.answer(challenge, "alice", "alice-secret")).status == 403
        challenge = bob.register("bob")
        assert bob.register("bob", bob.answer(challenge, "bob", "bob-secret")).status == 200
    finally:
        alice.close()
        bob.close()
    assert "Blocked user alice at 127.0.0.1" in server.log_text()
    assert "Blocked source" not in server.log_text()


def _forged_register(sock: socket.socket, server: Server, user: str, nonce: str, n: int) -> None:
    host, port = sock.getsockname()
    value = (
        f'Digest username="{user}", realm="{DOMAIN}", nonce="{nonce}", uri="sip:{DOMAIN}", '
        f'response="{"0" * 32}", algorithm=MD5, cnonce="c", nc=00000001, qop=auth'
    )
    sock.sendto(
        (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-forged-{n};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=f{n}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
            f"Call-ID: forged-{n}@{host}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{host}:{port}>\r\n"
            f"Authorization: {value}\r\nContent-Length: 0\r\n\r\n"
        ).encode(),
        (LOOPBACK, server.sip_port),
    )


def test_registers_with_forged_nonces_from_many_addresses_lock_nobody_out(server_factory, users: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 19 item 4: made-up nonces, and a real nonce of the attacker's, sent from other addresses."""
    server = server_factory("--users", str(users), "--max-failures", "3")
    bob = Phone(server)  # bob's registered phone
    try:
        challenge = bob.register("bob")
        assert bob.register("bob", bob.answer(challenge, "bob", "bob-secret")).status == 200
        attacker = Phone(server, "127.0.0.200")  # the one address where its nonce is good
        try:
            real_nonce = parse_auth_params(attacker.register("bob").get_all("www-authenticate")[0])[1]["nonce"]
        finally:
            attacker.close()
        n = 0
        for last in range(2, 14):  # from 127.0.0.2 ... 127.0.0.13, and from bob's own address
            for address in (f"127.0.0.{last}", LOOPBACK):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind((address, 0))
                    for nonce in (f"made-up-{n}", real_nonce):
                        n += 1
                        _forged_register(sock, server, "bob", nonce, n)
        # bob's phone refreshes, and bob registers from a new address: neither is blocked
        challenge = bob.register("bob")
        assert bob.register("bob", bob.answer(challenge, "bob", "bob-secret")).status == 200
        elsewhere = Phone(server, "127.0.0.99")
        try:
            challenge = elsewhere.register("bob")
            assert elsewhere.register("bob", elsewhere.answer(challenge, "bob", "bob-secret")).status == 200
        finally:
            elsewhere.close()
    finally:
        bob.close()
    assert metrics(server)["sip_auth_failures_total"] == 0, server.log_text()[-6000:]
    assert "Blocked" not in server.log_text()


# -- rate and size limits ------------------------------------------------------------------


def _options(port: int, n: int, host: str = LOOPBACK, local_port: int = 9) -> bytes:
    return (
        f"OPTIONS sip:{LOOPBACK}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{local_port};branch=z9hG4bK-rate{n};rport\r\n"
        f"From: <sip:tester@{DOMAIN}>;tag=t{n}\r\nTo: <sip:{LOOPBACK}>\r\nCall-ID: rate-{n}@{host}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _flood(server: Server, source: str, count: int) -> list[Response]:
    responses: list[Response] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(1.0)
        for n in range(count):
            s.sendto(_options(server.sip_port, n, source), (LOOPBACK, server.sip_port))
        try:
            while True:
                message = parse_message(s.recvfrom(65535)[0])
                assert isinstance(message, Response)
                responses.append(message)
        except TimeoutError:
            pass
    return responses


def test_a_flood_from_one_address_gets_503_and_another_address_is_served(server_factory, users: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users), "--rate-limit", "5")
    responses = _flood(server, LOOPBACK, 100)
    statuses = [r.status for r in responses]
    assert 20 <= statuses.count(200) <= 40  # the burst (5 s worth) and what refilled meanwhile
    refused = [r for r in responses if r.status == 503]
    assert 1 <= len(refused) <= 10  # a few 503s, the rest dropped
    assert all(r.get("retry-after") == "5" for r in refused)
    assert "Rate limit: 127.0.0.1 sends more than 5 requests/s" in server.log_text()
    other = _flood(server, "127.0.0.2", 3)
    assert [r.status for r in other] == [200, 200, 200]
    assert metrics(server)['sip_blocked_requests_total{reason="rate"}'] >= 60


def test_oversized_requests_get_513_over_udp_and_tcp(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--max-message-size", "1500")
    big = _options(server.sip_port, 1).replace(
        b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nSubject: " + b"x" * 2000 + b"\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(big, (LOOPBACK, server.sip_port))
        response = parse_message(s.recvfrom(65535)[0])
    assert response.status == 513  # type: ignore[union-attr]
    with socket.create_connection((LOOPBACK, server.sip_port), timeout=3) as s:
        s.sendall(big.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
        data = s.recv(65535)
    assert parse_message(data).status == 513  # type: ignore[union-attr]
    assert metrics(server)['sip_blocked_requests_total{reason="size"}'] == 2
