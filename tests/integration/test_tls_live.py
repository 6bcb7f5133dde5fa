"""SIP over TLS through the real ``twistd -n sipproxy --tls-cert ... --tls-key ...`` on loopback (issue 14, TLS).

Debian's sipp (sip-tester) is built without TLS (``sipp -h`` lists no
``l1``), so the TLS phones and the TLS callee here are Python ``ssl``
sockets, checking the server's certificate as a phone does; the UDP phone
is a plain UDP socket.  Certificates come from a ``trustme`` CA.

- a phone registers over TLS and calls a UDP phone, and is called back
  over its TLS connection; the transport changes, so two Record-Routes;
- a ``sips:`` callee gets a verified TLS connection from the proxy; one
  whose certificate names another host is refused with a clear log line;
- ``kill -HUP`` serves a renewed certificate to new connections while an
  open one keeps working;
- an unusable certificate or key is one line at start-up; without one, the
  log says TLS is off.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from harness import LOOPBACK, Server, free_port

from sipproxy.message import Request, Response, parse_message

try:
    from test_startup_live import refused_by_the_machine
except ImportError:  # pragma: no cover
    from tests.integration.test_startup_live import refused_by_the_machine  # type: ignore[no-redef]


def write_cert(directory: Path, ca: trustme.CA, *names: str, tag: str) -> tuple[Path, Path]:
    cert = ca.issue_cert(*names, common_name=f"{tag}.{names[0]}")
    cert_path, key_path = directory / f"{tag}-cert.pem", directory / f"{tag}-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return authority


@pytest.fixture
def tls_server(tmp_path: Path, ca: trustme.CA) -> Iterator[Server]:
    cert, key = write_cert(tmp_path, ca, "localhost", LOOPBACK, tag="server")
    srv = Server(tmp_path, [])
    srv.tls_port = free_port()  # type: ignore[attr-defined]
    srv.extra = [
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--tls-port",
        str(srv.tls_port),  # type: ignore[attr-defined]
        "--tls-ca",
        str(tmp_path / "ca.pem"),
    ]
    srv.start()
    yield srv
    srv.stop()


# -- the phones -----------------------------------------------------------------


class StreamPhone:
    """A SIP phone on one TLS connection: writes requests, reads whole messages (framed by Content-Length)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.sock.settimeout(5)
        self.buffer = b""
        self.port = sock.getsockname()[1]

    @classmethod
    def connect(cls, port: int, cafile: Path, name: str = "localhost") -> StreamPhone:
        context = ssl.create_default_context(cafile=str(cafile))
        raw = socket.create_connection((LOOPBACK, port), timeout=5)
        return cls(context.wrap_socket(raw, server_hostname=name))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Request | Response:
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if sep:
                match = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
                length = int(match.group(1)) if match else 0
                if len(rest) >= length:
                    self.buffer = rest[length:]
                    return parse_message(head + sep + rest[:length])
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the TLS connection")
            self.buffer += chunk

    def final(self) -> Response:
        while True:
            message = self.read()
            if isinstance(message, Response) and message.status >= 200:
                return message

    def subject(self) -> str:
        cert = self.sock.getpeercert()
        assert cert is not None
        return dict(pair[0] for pair in cert["subject"])["commonName"]

    def close(self) -> None:
        self.sock.close()


class UdpPhone:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, (LOOPBACK, port))

    def read(self) -> Request | Response:
        return parse_message(self.sock.recvfrom(65535)[0])

    def final(self) -> Response:
        while True:
            message = self.read()
            if isinstance(message, Response) and message.status >= 200:
                return message

    def close(self) -> None:
        self.sock.close()


def request(
    method: str, uri: str, *, transport: str, port: int, user: str, to: str, call_id: str, extra: str = ""
) -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {LOOPBACK}:{port};branch=z9hG4bK-{call_id}{method};rport\r\n"
        f"From: <sip:{user}@example.test>;tag=f-{call_id}\r\n"
        f"To: <{to}>\r\n"
        f"Call-ID: {call_id}@{LOOPBACK}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Max-Forwards: 70\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def register(user: str, contact: str, *, transport: str, port: int) -> bytes:
    return request(
        "REGISTER",
        "sip:example.test",
        transport=transport,
        port=port,
        user=user,
        to=f"sip:{user}@example.test",
        call_id=f"reg-{user}-{time.monotonic_ns()}",
        extra=f"Contact: <{contact}>\r\nExpires: 300\r\n",
    )


def answer(invite: Request, status: int = 200) -> bytes:
    """The callee's response, its Via, From, To (with a tag), Call-ID, CSeq and Record-Route copied (§8.2.6)."""
    lines = [f"SIP/2.0 {status} {'OK' if status == 200 else 'Busy Here'}"]
    lines += [f"Via: {v}" for v in invite.get_all("via")]
    lines += [f"Record-Route: {v}" for v in invite.get_all("record-route")]
    lines += [
        f"From: {invite.get('from')}",
        f"To: {invite.get('to')};tag=callee",
        f"Call-ID: {invite.call_id}",
        f"CSeq: {invite.get('cseq')}",
        f"Contact: <sip:callee@{LOOPBACK}>",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def next_request(phone: StreamPhone | UdpPhone, method: str) -> Request:
    while True:
        message = phone.read()
        if isinstance(message, Request) and message.method == method:
            return message


def wait_for_log(srv: Server, text: str, *, count: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.log_text().count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"not logged within {timeout} s: {text!r}\n{srv.log_text()[-3000:]}")


# -- a TLS phone and a UDP phone call each other -----------------------------------


def test_a_tls_phone_registers_calls_a_udp_phone_and_is_called_back_over_its_connection(
    tls_server: Server, tmp_path: Path
) -> None:
    tls_port = tls_server.tls_port  # type: ignore[attr-defined]
    alice = StreamPhone.connect(tls_port, tmp_path / "ca.pem")
    bob = UdpPhone()
    try:
        alice.send(register("alice", f"sip:alice@{LOOPBACK}:{alice.port};transport=tls", transport="TLS", port=9))
        assert alice.final().status == 200
        bob.send(register("bob", f"sip:bob@{LOOPBACK}:{bob.port}", transport="UDP", port=bob.port), tls_server.sip_port)
        assert bob.final().status == 200

        # alice (TLS) calls bob (UDP): our Via on the UDP side, and two Record-Routes, TLS port on the TLS side.
        alice.send(
            request(
                "INVITE",
                "sip:bob@example.test",
                transport="TLS",
                port=alice.port,
                user="alice",
                to="sip:bob@example.test",
                call_id="call-a2b",
                extra=f"Contact: <sip:alice@{LOOPBACK}:{alice.port};transport=tls>\r\n",
            )
        )
        invite = next_request(bob, "INVITE")
        assert invite.get_all("via")[0].startswith(f"SIP/2.0/UDP {LOOPBACK}:{tls_server.sip_port};")
        assert invite.get_all("record-route")[:2] == [
            f"<sip:{LOOPBACK}:{tls_server.sip_port};lr>",
            f"<sip:{LOOPBACK}:{tls_port};transport=tls;lr>",
        ]
        bob.send(answer(invite), tls_server.sip_port)
        ok = alice.final()
        assert ok.status == 200 and ok.call_id == f"call-a2b@{LOOPBACK}"

        # bob (UDP) calls alice: the INVITE reaches her over the TLS connection she registered on.
        bob.send(
            request(
                "INVITE",
                "sip:alice@example.test",
                transport="UDP",
                port=bob.port,
                user="bob",
                to="sip:alice@example.test",
                call_id="call-b2a",
                extra=f"Contact: <sip:bob@{LOOPBACK}:{bob.port}>\r\n",
            ),
            tls_server.sip_port,
        )
        invite = next_request(alice, "INVITE")
        assert invite.get_all("via")[0].startswith(f"SIP/2.0/TLS {LOOPBACK}:{tls_port};")
        assert invite.get_all("record-route")[:2] == [
            f"<sip:{LOOPBACK}:{tls_port};transport=tls;lr>",
            f"<sip:{LOOPBACK}:{tls_server.sip_port};lr>",
        ]
        alice.send(answer(invite))
        assert bob.final().status == 200
    finally:
        alice.close()
        bob.close()


# -- sips: callees: a verified TLS connection, or none ----------------------------------


class TlsCallee:
    """A UAS on a TLS port (what a sips: trunk is): answers each INVITE 486; records what it read and why it failed."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:  # a trunk that wants mutual TLS
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(str(client_ca))
        self.client_subjects: list[str] = []
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.invites: list[Request] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
        except OSError as error:
            self.errors.append(str(error))
            return
        try:
            phone = StreamPhone(self.context.wrap_socket(raw, server_side=True))
            if phone.sock.getpeercert():
                self.client_subjects.append(phone.subject())
            invite = next_request(phone, "INVITE")
            self.invites.append(invite)
            phone.send(answer(invite, 486))
            time.sleep(0.5)
            phone.close()
        except (OSError, ConnectionError) as error:
            self.errors.append(str(error))

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


def call_sips(srv: Server, callee: TlsCallee) -> Response:
    caller = UdpPhone()
    try:
        caller.send(
            request(
                "INVITE",
                f"sips:uas@localhost:{callee.port}",
                transport="UDP",
                port=caller.port,
                user="carol",
                to=f"sips:uas@localhost:{callee.port}",
                call_id=f"sips-{callee.port}",
                extra=f"Contact: <sip:carol@{LOOPBACK}:{caller.port}>\r\n",
            ),
            srv.sip_port,
        )
        return caller.final()
    finally:
        caller.close()


def test_a_sips_callee_gets_a_verified_tls_connection(tls_server: Server, tmp_path: Path, ca: trustme.CA) -> None:
    callee = TlsCallee(*write_cert(tmp_path, ca, "localhost", tag="callee"))
    try:
        final = call_sips(tls_server, callee)
    finally:
        callee.close()
    assert final.status == 486, final
    [invite] = callee.invites
    assert invite.get_all("via")[0].startswith(f"SIP/2.0/TLS {LOOPBACK}:{tls_server.tls_port};")  # type: ignore[attr-defined]
    # §16.6 step 4: a sips: Request-URI gets a sips: Record-Route on the TLS side.
    assert invite.get_all("record-route")[0] == f"<sips:{LOOPBACK}:{tls_server.tls_port};lr>"  # type: ignore[attr-defined]


def test_a_trunk_asking_for_a_client_certificate_gets_ours(tls_server: Server, tmp_path: Path, ca: trustme.CA) -> None:
    callee = TlsCallee(*write_cert(tmp_path, ca, "localhost", tag="trunk"), client_ca=tmp_path / "ca.pem")
    try:
        final = call_sips(tls_server, callee)
    finally:
        callee.close()
    assert final.status == 486, final
    assert callee.client_subjects == ["server.localhost"]  # --tls-cert, as no --tls-client-cert was given


@pytest.mark.parametrize("named", [LOOPBACK, "localhost"])
def test_a_phone_registered_over_tls_whose_connection_is_gone_is_reached_over_a_new_verified_one(
    tls_server: Server, tmp_path: Path, ca: trustme.CA, named: str
) -> None:
    """Its Contact has only an IP address: the certificate must name that address, else it gets nothing."""
    callee = TlsCallee(*write_cert(tmp_path, ca, named, tag="phone"))
    phone = StreamPhone.connect(tls_server.tls_port, tmp_path / "ca.pem")  # type: ignore[attr-defined]
    contact = f"sip:dave@{LOOPBACK}:{callee.port};transport=tls"
    phone.send(register("dave", contact, transport="TLS", port=phone.port))
    assert phone.final().status == 200
    phone.close()
    caller = UdpPhone()
    try:
        caller.send(
            request(
                "INVITE",
                "sip:dave@example.test",
                transport="UDP",
                port=caller.port,
                user="carol",
                to="sip:dave@example.test",
                call_id="gone-flow",
                extra=f"Contact: <sip:carol@{LOOPBACK}:{caller.port}>\r\n",
            ),
            tls_server.sip_port,
        )
        final = caller.final()
    finally:
        caller.close()
        callee.close()
    if named == LOOPBACK:
        assert final.status == 486, final
        [invite] = callee.invites
        assert invite.uri_text == contact
    else:
        assert final.status == 480, final  # the flow is gone and the Contact is out of reach
        assert callee.invites == []
        wait_for_log(tls_server, f"{LOOPBACK}:{callee.port} failed: its certificate is not for {LOOPBACK}")


def test_a_sips_callee_whose_certificate_names_another_host_is_refused(
    tls_server: Server, tmp_path: Path, ca: trustme.CA
) -> None:
    callee = TlsCallee(*write_cert(tmp_path, ca, "other.example.test", tag="impostor"))
    try:
        final = call_sips(tls_server, callee)
    finally:
        callee.close()
    assert final.status >= 500, final
    assert callee.invites == []
    wait_for_log(
        tls_server,
        f"TLS connection to {LOOPBACK}:{callee.port} failed: its certificate is not for localhost",
    )


# -- certificate renewal: kill -HUP ------------------------------------------------------


def options_over(phone: StreamPhone, port: int, call_id: str) -> Response:
    phone.send(
        request(
            "OPTIONS",
            f"sip:{LOOPBACK}:{port}",
            transport="TLS",
            port=phone.port,
            user="ping",
            to=f"sip:{LOOPBACK}",
            call_id=call_id,
        )
    )
    return phone.final()


def test_sighup_serves_the_renewed_certificate_and_open_connections_keep_working(
    tls_server: Server, tmp_path: Path, ca: trustme.CA
) -> None:
    tls_port = tls_server.tls_port  # type: ignore[attr-defined]
    old = StreamPhone.connect(tls_port, tmp_path / "ca.pem")
    try:
        assert old.subject() == "server.localhost"
        assert options_over(old, tls_port, "before").status == 200
        cert, key = write_cert(tmp_path, ca, "localhost", LOOPBACK, tag="renewed")
        os.replace(cert, tmp_path / "server-cert.pem")  # what certbot's renewal does (through its symlinks)
        os.replace(key, tmp_path / "server-key.pem")
        assert tls_server.proc is not None
        os.kill(tls_server.proc.pid, signal.SIGHUP)
        wait_for_log(tls_server, "TLS certificate reloaded from")
        new = StreamPhone.connect(tls_port, tmp_path / "ca.pem")
        try:
            assert new.subject() == "renewed.localhost"
            assert options_over(new, tls_port, "after-new").status == 200
        finally:
            new.close()
        assert options_over(old, tls_port, "after-old").status == 200
        assert old.subject() == "server.localhost"
        assert tls_server.alive()
    finally:
        old.close()


def test_sighup_with_a_broken_certificate_keeps_serving_the_old_one(
    tls_server: Server, tmp_path: Path, ca: trustme.CA
) -> None:
    (tmp_path / "server-key.pem").write_text("not a key\n")
    assert tls_server.proc is not None
    os.kill(tls_server.proc.pid, signal.SIGHUP)
    wait_for_log(tls_server, "TLS certificates not reloaded, still serving the old ones: --tls-key")
    phone = StreamPhone.connect(tls_server.tls_port, tmp_path / "ca.pem")  # type: ignore[attr-defined]
    try:
        assert phone.subject() == "server.localhost"
    finally:
        phone.close()
    assert tls_server.alive()


# -- start-up -------------------------------------------------------------------------------


def test_an_unusable_certificate_is_one_line_at_start_up(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = write_cert(tmp_path, ca, "localhost", tag="good")
    line = refused_by_the_machine(tmp_path, "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key))
    assert line == f"--tls-cert {tmp_path / 'missing.pem'}: cannot read it: No such file or directory"
    _, other_key = write_cert(tmp_path, ca, "localhost", tag="other")
    line = refused_by_the_machine(tmp_path, "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert line == f"--tls-key {other_key}: is not the key of the certificate in {cert}"


def test_without_a_certificate_the_log_says_tls_is_off(server: Server) -> None:
    assert "TLS is off: no --tls-cert given" in server.log_text()
    assert "SIP listening on TLS" not in server.log_text()
