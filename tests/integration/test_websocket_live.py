"""SIP over WebSocket (RFC 7118) through the real ``twistd -n sipproxy --ws ... --wss ...`` on loopback.

The browser phone is a Python WebSocket client (wsproto over a socket, plain
or TLS) that behaves as JsSIP does on the wire: it asks for the ``sip``
subprotocol, registers a ``.invalid`` Contact with ``transport=ws``, and
sends one SIP message per WebSocket message.  A UDP phone calls it and is
called by it.  (JsSIP itself in Chromium is not in this suite yet.)
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from harness import LOOPBACK, Server, free_port
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, RejectConnection, Request, TextMessage

from sipproxy.message import Request as SipRequest
from sipproxy.message import Response, parse_message

try:
    from test_startup_live import refused_by_the_machine
    from test_tls_live import UdpPhone, answer, next_request, request
except ImportError:  # pragma: no cover
    from tests.integration.test_startup_live import refused_by_the_machine  # type: ignore[no-redef]
    from tests.integration.test_tls_live import UdpPhone, answer, next_request, request  # type: ignore[no-redef]

INVALID = "df7jal23ls0d.invalid"


class WsPhone:
    """A browser phone's WebSocket: one SIP message per text message."""

    def __init__(self, port: int, *, cafile: Path | None = None, subprotocols: tuple[str, ...] = ("sip",)) -> None:
        raw = socket.create_connection((LOOPBACK, port), timeout=5)
        if cafile is not None:
            raw = ssl.create_default_context(cafile=str(cafile)).wrap_socket(raw, server_hostname="localhost")
        self.sock = raw
        self.sock.settimeout(5)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Any] = []
        self.parts: list[str] = []
        self.sock.sendall(self.ws.send(Request(host="localhost", target="/", subprotocols=list(subprotocols))))
        self.handshake = self._event()

    def _event(self) -> Any:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.ws.receive_data(data)
            self.pending += list(self.ws.events())
        return self.pending.pop(0)

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=data.decode())))

    def read(self) -> SipRequest | Response:
        while True:
            event = self._event()
            if isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, TextMessage):
                self.parts.append(event.data)
                if event.message_finished:
                    text, self.parts = "".join(self.parts), []
                    return parse_message(text.encode())

    def final(self) -> Response:
        while True:
            message = self.read()
            if isinstance(message, Response) and message.status >= 200:
                return message

    def close(self) -> None:
        self.sock.close()


def ws_register(user: str, transport: str) -> bytes:
    branch = f"z9hG4bK-{user}{time.monotonic_ns()}"
    return (
        f"REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {INVALID};branch={branch}\r\n"
        f"From: <sip:{user}@example.test>;tag=r-{user}\r\n"
        f"To: <sip:{user}@example.test>\r\n"
        f"Call-ID: {branch}@{INVALID}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f'Contact: <sip:{user}@{INVALID};transport=ws>;reg-id=1;+sip.instance="<urn:uuid:0-{user}>"\r\n'
        "Expires: 600\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def ws_server(tmp_path: Path) -> Iterator[Server]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert = ca.issue_cert("localhost", LOOPBACK)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    srv = Server(tmp_path, [])
    srv.ws_port, srv.wss_port = free_port(), free_port()  # type: ignore[attr-defined]
    srv.extra = [
        "--tls-cert",
        str(tmp_path / "cert.pem"),
        "--tls-key",
        str(tmp_path / "key.pem"),
        "--tls-port",
        str(free_port()),
        "--ws",
        f"tcp:{srv.ws_port}:interface={LOOPBACK}",  # type: ignore[attr-defined]
        "--wss",
        f"tcp:{srv.wss_port}:interface={LOOPBACK}",  # type: ignore[attr-defined]
    ]
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("transport", ["WS", "WSS"])
def test_a_websocket_phone_registers_and_calls_and_is_called_by_a_udp_phone(
    ws_server: Server, tmp_path: Path, transport: str
) -> None:
    port = ws_server.ws_port if transport == "WS" else ws_server.wss_port  # type: ignore[attr-defined]
    alice = WsPhone(port, cafile=tmp_path / "ca.pem" if transport == "WSS" else None)
    bob = UdpPhone()
    try:
        assert isinstance(alice.handshake, AcceptConnection) and alice.handshake.subprotocol == "sip"
        alice.send(ws_register("alice", transport))
        assert alice.final().status == 200
        bob.send(
            request(
                "REGISTER",
                "sip:example.test",
                transport="UDP",
                port=bob.port,
                user="bob",
                to="sip:bob@example.test",
                call_id=f"reg-bob-{transport}",
                extra=f"Contact: <sip:bob@{LOOPBACK}:{bob.port}>\r\nExpires: 300\r\n",
            ),
            ws_server.sip_port,
        )
        assert bob.final().status == 200

        # bob (UDP) calls alice: the INVITE reaches her WebSocket; two Record-Routes, ours on her side first.
        bob.send(
            request(
                "INVITE",
                "sip:alice@example.test",
                transport="UDP",
                port=bob.port,
                user="bob",
                to="sip:alice@example.test",
                call_id=f"b2a-{transport}",
                extra=f"Contact: <sip:bob@{LOOPBACK}:{bob.port}>\r\n",
            ),
            ws_server.sip_port,
        )
        invite = next_request(alice, "INVITE")  # type: ignore[arg-type]
        assert invite.uri_text == f"sip:alice@{INVALID};transport=ws"
        assert invite.get_all("via")[0].startswith(f"SIP/2.0/{transport} {LOOPBACK}:{port};")
        # Hers carries the flow token of her WebSocket (RFC 5626 §5.2), so in-dialog requests follow it.
        mine, theirs = invite.get_all("record-route")[:2]
        assert mine.startswith(f"<sip:{LOOPBACK}:{port};transport={transport.lower()};ft=") and mine.endswith(";lr>")
        assert theirs == f"<sip:{LOOPBACK}:{ws_server.sip_port};lr>"
        alice.send(answer(invite))
        assert bob.final().status == 200

        # alice calls bob over her WebSocket.
        alice.send(
            request(
                "INVITE",
                "sip:bob@example.test",
                transport=transport,
                port=9,
                user="alice",
                to="sip:bob@example.test",
                call_id=f"a2b-{transport}",
                extra=f"Contact: <sip:alice@{INVALID};transport=ws>\r\n",
            )
        )
        invite = next_request(bob, "INVITE")
        bob.send(answer(invite, 486), ws_server.sip_port)
        assert alice.final().status == 486
    finally:
        alice.close()
        bob.close()


def test_a_handshake_without_the_sip_subprotocol_is_refused(ws_server: Server) -> None:
    phone = WsPhone(ws_server.ws_port, subprotocols=("chat",))  # type: ignore[attr-defined]
    try:
        assert isinstance(phone.handshake, RejectConnection) and phone.handshake.status_code == 400
    finally:
        phone.close()


def test_a_ws_port_in_use_is_one_line_at_start_up(tmp_path: Path) -> None:
    with socket.create_server((LOOPBACK, 0)) as taken:
        port = taken.getsockname()[1]
        line = refused_by_the_machine(tmp_path, "--ws", f"tcp:{port}:interface={LOOPBACK}")
    assert line == f"--ws tcp:{port}:interface={LOOPBACK}: TCP {LOOPBACK}:{port} is already in use"
