"""RFC 5626 outbound through the real ``twistd -n sipproxy --ws ...`` on loopback: the WebSocket phone's flow.

The phone is the Python WebSocket client of ``test_websocket_live`` (it
speaks as JsSIP does on the wire): it registers
``Contact: <sip:alice@....invalid;transport=ws>;reg-id=1;+sip.instance=...``
with ``Supported: path, outbound``.  A sipp UAC over UDP calls it; every
in-dialog request towards the phone has the ``.invalid`` Contact as its
Request-URI and reaches it only because our Record-Route carries its flow
token.  Then the keep-alives (RFC 5626 §8): the double CRLF on TLS and WS,
STUN on UDP; and a closed WebSocket: its binding goes, a call gets 480.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import LOOPBACK, Server, sipp
from wsproto.events import TextMessage

from sipproxy.message import Request

try:
    from test_tls_live import UdpPhone, request
    from test_websocket_live import INVALID, WsPhone, ws_server
except ImportError:  # pragma: no cover
    from tests.integration.test_tls_live import UdpPhone, request  # type: ignore[no-redef]
    from tests.integration.test_websocket_live import INVALID, WsPhone, ws_server  # type: ignore[no-redef] # noqa: F401

pytestmark = pytest.mark.integration

CONTACT = f"sip:alice@{INVALID};transport=ws"


def jssip_register(call_id: str = "reg-alice") -> bytes:
    """A REGISTER as JsSIP 3 writes it: a .invalid Contact, reg-id, +sip.instance, Supported: path, outbound."""
    return (
        "REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/WS {INVALID};branch=z9hG4bK{call_id}{time.monotonic_ns()}\r\n"
        "Max-Forwards: 69\r\n"
        "To: <sip:alice@example.test>\r\n"
        "From: <sip:alice@example.test>;tag=jssip1\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f'Contact: <{CONTACT}>;+sip.ice;reg-id=1;+sip.instance="<urn:uuid:1f2e3d4c-0000-4000-8000-00000000a11c>";'
        "expires=600\r\n"
        "Expires: 600\r\n"
        "Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY\r\n"
        "Supported: path,gruu,outbound\r\n"
        "User-Agent: JsSIP 3.13.0\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def reply(req: Request, status: int, *, contact: bool = False, to_tag: str = "alice1") -> bytes:
    """The phone's response to ``req`` (§8.2.6): Via, From, To (tagged), Call-ID, CSeq, Record-Route for a 2xx."""
    lines = [f"SIP/2.0 {status} {'OK' if status == 200 else 'Ringing'}"]
    lines += [f"Via: {v}" for v in req.get_all("via")]
    if contact:
        lines += [f"Record-Route: {v}" for v in req.get_all("record-route")]
    to = req.get("to") or ""
    lines += [
        f"From: {req.get('from')}",
        f"To: {to if ';tag=' in to else to + ';tag=' + to_tag}",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.get('cseq')}",
    ]
    if contact:
        lines.append(f"Contact: <{CONTACT}>")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def next_request(phone: WsPhone, method: str) -> Request:
    while True:
        message = phone.read()
        if isinstance(message, Request) and message.method == method:
            return message


def bindings(server: Server) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{server.web_port}/api/bindings", timeout=5) as answer:
        return [b for b in json.loads(answer.read())["bindings"] if b["aor"] == "sip:alice@example.test"]


def registered(server: Server) -> WsPhone:
    alice = WsPhone(server.ws_port)  # type: ignore[attr-defined]
    alice.send(jssip_register())
    ok = alice.final()
    assert ok.status == 200, ok
    assert ok.get("require") == "outbound" and ok.get("flow-timer") == "120"
    return alice


class Caller(threading.Thread):
    """sipp as the UDP caller, in the background while the test plays the phone."""

    def __init__(self, server: Server, tmp_path: Path, scenario: str) -> None:
        super().__init__(daemon=True)
        self.args = (scenario, server.sip_port)
        self.workdir = tmp_path
        self.result: Any = None

    def run(self) -> None:
        scenario, port = self.args
        keys = {"callee": "alice", "domain": "example.test"}
        self.result = sipp(scenario, port, workdir=self.workdir, calls=1, keys=keys, timeout=20)

    def succeeded(self) -> None:
        self.join(40)
        assert self.result is not None and self.result.returncode == 0, (self.result.stdout, self.result.stderr)


def answer_call(alice: WsPhone) -> Request:
    invite = next_request(alice, "INVITE")
    assert invite.uri_text == CONTACT
    alice.send(reply(invite, 180))
    alice.send(reply(invite, 200, contact=True))
    return invite


def test_a_udp_caller_reaches_the_websocket_phone_and_its_in_dialog_requests_follow_the_flow(
    ws_server: Server, tmp_path: Path
) -> None:
    alice = registered(ws_server)
    [shown] = bindings(ws_server)
    assert (shown["transport"], shown["flow"], shown["reg_id"]) == ("WS", "open", 1)
    caller = Caller(ws_server, tmp_path, "call_uac.xml")
    caller.start()
    try:
        answer_call(alice)
        # the ACK and the BYE are sent to the .invalid Contact: only the flow token gets them here
        ack = next_request(alice, "ACK")
        assert ack.uri_text == CONTACT and not ack.has("route")
        bye = next_request(alice, "BYE")
        assert bye.uri_text == CONTACT and not bye.has("route")
        alice.send(reply(bye, 200))
        caller.succeeded()
    finally:
        alice.close()


def test_the_websocket_phones_own_bye_reaches_the_udp_caller(ws_server: Server, tmp_path: Path) -> None:
    alice = registered(ws_server)
    caller = Caller(ws_server, tmp_path, "call_uac_callee_bye.xml")
    caller.start()
    try:
        invite = answer_call(alice)
        next_request(alice, "ACK")
        contact = invite.addresses("contact")[0].uri
        routes = "".join(f"Route: {v}\r\n" for v in invite.get_all("record-route"))
        alice.send(
            (
                f"BYE {contact} SIP/2.0\r\n"
                f"Via: SIP/2.0/WS {INVALID};branch=z9hG4bKbye{time.monotonic_ns()}\r\n"
                f"{routes}"
                "Max-Forwards: 70\r\n"
                f"From: {invite.get('to')};tag=alice1\r\n"
                f"To: {invite.get('from')}\r\n"
                f"Call-ID: {invite.call_id}\r\n"
                "CSeq: 2 BYE\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        assert alice.final().status == 200
        caller.succeeded()
    finally:
        alice.close()


def test_a_closed_websocket_drops_its_binding_and_a_call_to_it_gets_480_at_once(ws_server: Server) -> None:
    alice = registered(ws_server)
    alice.close()
    deadline = time.monotonic() + 5
    while bindings(ws_server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bindings(ws_server) == []
    assert "the connection it registered on is gone" in ws_server.log_text()
    bob = UdpPhone()
    try:
        started = time.monotonic()
        bob.send(
            request(
                "INVITE",
                "sip:alice@example.test",
                transport="UDP",
                port=bob.port,
                user="bob",
                to="sip:alice@example.test",
                call_id="to-gone-alice",
                extra=f"Contact: <sip:bob@{LOOPBACK}:{bob.port}>\r\n",
            ),
            ws_server.sip_port,
        )
        final = bob.final()
        assert final.status in (430, 480) and time.monotonic() - started < 2
    finally:
        bob.close()


# -- keep-alives (RFC 5626 §8) ---------------------------------------------------------------------


def test_a_double_crlf_over_tls_gets_one_crlf_back(ws_server: Server, tmp_path: Path) -> None:
    port = int(ws_server.extra[ws_server.extra.index("--tls-port") + 1])
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"\r\n\r\n")
        assert tls.recv(16) == b"\r\n"


def test_a_double_crlf_message_over_websocket_gets_one_crlf_message_back(ws_server: Server) -> None:
    phone = WsPhone(ws_server.ws_port)  # type: ignore[attr-defined]
    try:
        phone.sock.sendall(phone.ws.send(TextMessage(data="\r\n\r\n")))
        pong = phone._event()
        assert isinstance(pong, TextMessage) and pong.data == "\r\n"
    finally:
        phone.close()


def test_a_stun_binding_request_on_the_udp_port_gets_our_view_of_its_address(ws_server: Server) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.bind((LOOPBACK, 0))
        txid = b"outbound-123"
        s.sendto(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + txid, (LOOPBACK, ws_server.sip_port))
        answer, _ = s.recvfrom(2048)
        kind, _length, cookie = struct.unpack("!HHI", answer[:8])
        assert (kind, cookie, answer[8:20]) == (0x0101, 0x2112A442, txid)
        attr, _size, _reserved, family, xport = struct.unpack("!HHBBH", answer[20:28])
        address = bytes(a ^ b for a, b in zip(answer[28:32], struct.pack("!I", 0x2112A442), strict=True))
        assert (attr, family) == (0x0020, 1)
        assert (socket.inet_ntoa(address), xport ^ 0x2112) == s.getsockname()


def test_after_a_restart_the_websocket_binding_is_not_offered_until_the_phone_registers_again(
    ws_server: Server,
) -> None:
    alice = registered(ws_server)
    ws_server.kill9()  # the binding is in --db; the WebSocket died with the process
    alice.close()
    ws_server.start()
    assert bindings(ws_server) == []
    assert "Dropped 1 restored binding on connections closed by the restart" in ws_server.log_text()
    again = registered(ws_server)
    try:
        assert [b["flow"] for b in bindings(ws_server)] == ["open"]
    finally:
        again.close()


def test_a_shutdown_with_a_websocket_phone_connected_is_quiet(ws_server: Server) -> None:
    alice = registered(ws_server)
    try:
        ws_server.stop()
    finally:
        alice.close()
    log = ws_server.log_text()
    assert "Traceback" not in log and "lost flow" not in log, log[-3000:]
