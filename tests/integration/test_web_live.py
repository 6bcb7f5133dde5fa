"""The page's defences through the real ``twistd -n sipproxy`` on loopback (issue 19, items 5, 6 and 9).

Host check against DNS rebinding, the bound on event streams while SIP
goes on, the start-up refusal of a public page without password, and the
password throttle (reached as a reverse proxy would: ``X-Forwarded-For`` on
the loopback listener). No timing assertions.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
from pathlib import Path

from harness import LOOPBACK, Server, free_port
from test_startup_live import refused_by_the_command_line


def http_get(server: Server, path: str, *headers: tuple[str, str], host: str | None = None) -> tuple[int, dict, bytes]:  # type: ignore[type-arg]
    connection = http.client.HTTPConnection(LOOPBACK, server.web_port, timeout=10)
    connection.putrequest("GET", path, skip_host=True)
    connection.putheader("Host", host or f"{LOOPBACK}:{server.web_port}")
    for name, value in headers:
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def register(sip_port: int, user: str, cseq: int = 1) -> bytes:
    """One REGISTER over UDP and the status line of its final response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
        s.settimeout(5)
        s.sendto(
            (
                f"REGISTER sip:example.test SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch=z9hG4bK-{user}-{cseq};rport\r\n"
                f"From: <sip:{user}@example.test>;tag=w{cseq}\r\nTo: <sip:{user}@example.test>\r\n"
                f"Call-ID: web-live-{user}\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:{user}@{LOOPBACK}:{port}>\r\nExpires: 600\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            (LOOPBACK, sip_port),
        )
        return s.recv(65535).split(b"\r\n", 1)[0]


def test_a_rebinding_host_is_refused_by_the_real_server(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    assert register(server.sip_port, "alice") == b"SIP/2.0 200 OK"
    for path in ("/", "/api/bindings", "/api/events"):
        status, _, body = http_get(server, path, host="127.evil.example")
        assert status == 403, path
        assert json.loads(body)["error"].startswith("Host '127.evil.example' is not a name of this server")
    status, _, body = http_get(server, "/api/bindings", host=f"localhost:{server.web_port}")
    assert status == 200 and json.loads(body)["total"] == 1
    assert "Web refused GET /api/bindings from 127.0.0.1: Host '127.evil.example'" in server.log_text()


def test_event_streams_are_bounded_and_sip_goes_on(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--max-event-streams", "5")
    for i in range(200):
        assert register(server.sip_port, f"user{i}") == b"SIP/2.0 200 OK"
    readers = []
    for _ in range(5):  # clients that never read their stream
        s = socket.create_connection((LOOPBACK, server.web_port))
        s.sendall(f"GET /api/events HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
        assert s.recv(12) == b"HTTP/1.1 200"
        readers.append(s)
    status, headers, body = http_get(server, "/api/events")
    assert status == 503 and headers["retry-after"] == "10"
    assert "too many event streams open (5)" in json.loads(body)["error"]
    for i in range(50):  # registrations are answered while the streams sit unread
        assert register(server.sip_port, f"late{i}") == b"SIP/2.0 200 OK"
    for s in readers:
        s.close()
    status, _, _ = http_get(server, "/api/bindings")
    assert status == 200


def test_a_public_page_without_password_does_not_start(tmp_path: Path) -> None:
    description = f"tcp:{free_port()}"
    line = refused_by_the_command_line(tmp_path, "--web", description)
    assert line == (
        f"--web {description} listens beyond loopback, where the page shows every binding's address, User-Agent "
        "and Call-ID: give --web-password (and put TLS in front, see the README) or listen on interface=127.0.0.1"
    )


def basic(password: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"admin:{password}".encode()).decode())


def test_password_guesses_through_a_reverse_proxy_are_throttled(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--web-password", "s3cret")
    guesser, operator = ("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-For", "203.0.113.6")
    status, headers, _ = http_get(server, "/api/bindings", guesser)
    assert status == 401 and headers["www-authenticate"].startswith('Basic realm="sipproxy"')
    statuses = [http_get(server, "/api/bindings", guesser, basic(f"guess{i}"))[0] for i in range(5)]
    assert statuses == [401, 401, 401, 401, 429]
    status, headers, body = http_get(server, "/api/bindings", guesser, basic("s3cret"))
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert "too many wrong passwords from 203.0.113.5" in json.loads(body)["error"]
    assert http_get(server, "/api/bindings", operator, basic("s3cret"))[0] == 200
    assert server.log_text().count("Web password attempts from 203.0.113.5 throttled after 5 failures") == 1
