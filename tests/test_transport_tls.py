"""SIP over TLS in memory: real TLS handshakes between Twisted protocols over ``iosim`` (no sockets), trustme CAs.

What a phone or a trunk would notice: a request over TLS arrives as "TLS";
an outgoing connection reaches a peer whose certificate names the target
and refuses (at once, saying why) one whose certificate names another
host or comes from an unknown CA; a reload serves the new certificate to
new connections while an open one keeps working; unusable files are one
line naming the option.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trustme
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from sipproxy.message import Request
from sipproxy.metrics import Metrics
from sipproxy.net import NamedTarget, Source, Target
from sipproxy.startup import StartupError, load_certificates
from sipproxy.transport import TransportLayer, TransportLimits
from sipproxy.transport.certificates import CertificateError, ReloadOnHangup, TLSCertificates, TLSFiles
from sipproxy.transport.resolve import Resolver
from sipproxy.transport.tls import TLSSender, tls_connector, tls_server_factory

PHONE = IPv4Address("TCP", "192.0.2.9", 40400)
US = IPv4Address("TCP", "192.0.2.1", 5061)


def options(branch: str) -> bytes:
    return (
        "OPTIONS sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 192.0.2.9:5061;branch=z9hG4bK-{branch}\r\n"
        "From: <sip:alice@example.test>;tag=a1\r\n"
        "To: <sip:example.test>\r\n"
        f"Call-ID: {branch}@192.0.2.9\r\n"
        "CSeq: 7 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Sink:
    """The transport's ``MessageSink``: records what arrived and from where."""

    def __init__(self) -> None:
        self.received: list[tuple[Request, Source]] = []

    def message_received(self, message: Any, source: Source, data: bytes) -> None:
        self.received.append((message, source))

    def unparseable(self, error: Any, source: Source, size: int) -> bool:
        return True


class Collector(Protocol):
    """A plain TLS peer: keeps what it reads and the peer certificate's subject."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason

    def peer_subject(self) -> str:
        cert = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        from cryptography.x509.oid import NameOID

        [name] = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(name.value)


def files(tmp_path: Path, ca: trustme.CA, *names: str, tag: str = "a") -> TLSFiles:
    cert = ca.issue_cert(*names, common_name=names[0])
    cert_path, key_path, ca_path = tmp_path / f"{tag}-cert.pem", tmp_path / f"{tag}-key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    return TLSFiles(str(cert_path), str(key_path), str(ca_path))


def layer(clock: Clock) -> tuple[TransportLayer, Sink]:
    transport = TransportLayer(metrics=Metrics(), limits=TransportLimits())
    sink = Sink()
    transport.sink = sink
    return transport, sink


def phone_connects(  # type: ignore[no-untyped-def]
    transport: TransportLayer,
    clock: Clock,
    certs: TLSCertificates,
    ca: trustme.CA,
    name: str,
    alpn: tuple[bytes, ...] = (),
):
    """A phone opens a TLS connection to our listener, checking our certificate for ``name`` (offering ALPN ``alpn``)."""
    server = tls_server_factory(transport, clock, certs).buildProtocol(PHONE)
    phone = Collector()
    trust = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
    options_ = ssl.optionsForClientTLS(name, trustRoot=trust, acceptableProtocols=list(alpn) or None)
    client = TLSMemoryBIOFactory(options_, True, Factory.forProtocol(lambda: phone), clock).buildProtocol(US)
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True, hostAddress=US, peerAddress=PHONE),
        client,
        iosim.FakeTransport(client, isServer=False, hostAddress=PHONE, peerAddress=US),
        greet=False,
        clock=clock,
    )
    return phone, client, pump


# -- inbound: the listener -------------------------------------------------------


def test_a_request_over_tls_arrives_as_tls_and_the_answer_goes_back_on_the_connection(tmp_path: Path) -> None:
    ca, clock = trustme.CA(), Clock()
    certs = TLSCertificates(files(tmp_path, ca, "sip.example.test"))
    transport, sink = layer(clock)
    phone, client, pump = phone_connects(transport, clock, certs, ca, "sip.example.test")
    client.write(options("in1"))
    pump.flush()
    [(message, source)] = sink.received
    assert message.method == "OPTIONS"
    assert (source.transport, source.host, source.port) == ("TLS", "192.0.2.9", 40400)
    assert transport.connection("TLS", "192.0.2.9", 40400) is source.connection
    assert source.connection is not None
    source.connection.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    pump.flush()
    assert phone.data.startswith(b"SIP/2.0 200 OK")
    assert phone.peer_subject() == "sip.example.test"


def test_a_client_offering_alpn_is_served_without_a_protocol_chosen(tmp_path: Path) -> None:
    """Browsers offer ALPN (``http/1.1``) when they open a WSS connection; we pick none and the handshake goes on."""
    ca, clock = trustme.CA(), Clock()
    certs = TLSCertificates(files(tmp_path, ca, "sip.example.test"))
    transport, sink = layer(clock)
    phone, client, pump = phone_connects(transport, clock, certs, ca, "sip.example.test", alpn=(b"http/1.1", b"h2"))
    client.write(options("alpn"))
    pump.flush()
    [(message, _)] = sink.received
    assert message.method == "OPTIONS"
    assert phone.lost is None
    assert client.negotiatedProtocol is None


def test_reload_serves_the_new_certificate_to_new_connections_and_the_open_one_keeps_working(tmp_path: Path) -> None:
    ca, clock = trustme.CA(), Clock()
    given = files(tmp_path, ca, "old.example.test")
    certs = TLSCertificates(given)
    transport, sink = layer(clock)
    old_phone, old_client, old_pump = phone_connects(transport, clock, certs, ca, "old.example.test")
    old_pump.flush()
    renewed = files(tmp_path, ca, "new.example.test", tag="b")
    os.replace(renewed.cert, given.cert)  # certbot renews in place (through its symlinks)
    os.replace(renewed.key, given.key)
    assert certs.reload()
    new_phone, new_client, new_pump = phone_connects(transport, clock, certs, ca, "new.example.test")
    new_client.write(options("new"))
    new_pump.flush()
    assert new_phone.peer_subject() == "new.example.test"
    old_client.write(options("old"))
    old_pump.flush()
    assert old_phone.lost is None
    assert old_phone.peer_subject() == "old.example.test"
    assert sorted(m.call_id for m, _ in sink.received) == ["new@192.0.2.9", "old@192.0.2.9"]


def test_a_failed_reload_keeps_the_old_certificate(tmp_path: Path) -> None:
    ca, clock = trustme.CA(), Clock()
    given = files(tmp_path, ca, "sip.example.test")
    certs = TLSCertificates(given)
    Path(given.key).write_text("half-written\n")
    assert not certs.reload()
    transport, _ = layer(clock)
    phone, client, pump = phone_connects(transport, clock, certs, ca, "sip.example.test")
    pump.flush()
    assert phone.peer_subject() == "sip.example.test"


def test_sighup_reloads_the_certificates_in_the_reactor_thread(tmp_path: Path) -> None:
    ca = trustme.CA()
    given = files(tmp_path, ca, "old.example.test")
    certs = TLSCertificates(given)

    class Reactor:
        calls: list[Any] = []  # noqa: RUF012

        def callFromThread(self, f: Any, *args: Any) -> None:
            self.calls.append(f)

    reactor = Reactor()
    service = ReloadOnHangup(reactor, certs)
    before = signal.getsignal(signal.SIGHUP)  # SIG_IGN under nohup
    service.startService()
    try:
        renewed = files(tmp_path, ca, "new.example.test", tag="b")
        os.replace(renewed.cert, given.cert)
        os.replace(renewed.key, given.key)
        os.kill(os.getpid(), signal.SIGHUP)
        assert certs.subject == "old.example.test"  # nothing happens inside the signal handler
        [reload] = reactor.calls
        reload()
        assert certs.subject == "new.example.test"
    finally:
        service.stopService()
    assert signal.getsignal(signal.SIGHUP) == (before if before is not None else signal.SIG_DFL)


# -- outbound: sips: targets, phones whose connection is gone ----------------------


def callee(
    tmp_path: Path, ca: trustme.CA, name: str, clock: Clock, peer: Collector | None = None
) -> TLSMemoryBIOFactory:
    """A TLS peer (a sipp UAS, a trunk) whose certificate names ``name``."""
    certs = TLSCertificates(files(tmp_path, ca, name, tag="callee"))
    return TLSMemoryBIOFactory(certs, False, Factory.forProtocol(lambda: peer or Collector()), clock)


def dial(tmp_path: Path, ca: trustme.CA, callee_name: str, target_name: str):  # type: ignore[no-untyped-def]
    """Our TLSSender sends a request to a callee; returns the callee's protocol, the errors, the layer."""
    clock, reactor = Clock(), MemoryReactor()
    ours = TLSCertificates(files(tmp_path, ca, "sip.example.test"))
    transport, _ = layer(clock)
    sender = TLSSender(transport, tls_connector(reactor, clock, ours))
    transport.register(sender)
    errors: list[str] = []
    transport.send_request(
        _request(),
        NamedTarget("TLS", "192.0.2.20", 5061, target_name),
        errors.append,
    )
    assert errors == []
    [(host, port, factory, creator, timeout, _)] = reactor.sslClients
    assert (host, port) == ("192.0.2.20", 5061)
    client = TLSMemoryBIOFactory(creator, True, factory, clock).buildProtocol(IPv4Address("TCP", host, port))
    peer = Collector()
    server = callee(tmp_path, ca, callee_name, clock, peer).buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True, peerAddress=IPv4Address("TCP", "192.0.2.1", 40000)),
        client,
        iosim.FakeTransport(client, isServer=False, peerAddress=IPv4Address("TCP", "192.0.2.20", 5061)),
        greet=False,
        clock=clock,
    )
    pump.flush()
    return peer, errors, transport


def _request() -> Request:
    from sipproxy.message import parse_message

    message = parse_message(options("out"))
    assert isinstance(message, Request)
    return message


def test_outgoing_tls_reaches_a_peer_whose_certificate_names_the_target(tmp_path: Path) -> None:
    peer, errors, transport = dial(tmp_path, trustme.CA(), "callee.example.test", "callee.example.test")
    assert errors == []
    assert peer.data.startswith(b"OPTIONS sip:example.test SIP/2.0")
    assert transport.connection("TLS", "192.0.2.20", 5061) is not None


def test_outgoing_tls_refuses_a_certificate_for_another_name_at_once(tmp_path: Path) -> None:
    peer, errors, transport = dial(tmp_path, trustme.CA(), "someone-else.example.test", "callee.example.test")
    assert peer.data == b""  # not a byte of the request reached it
    [error] = errors
    assert "TLS connection to 192.0.2.20:5061 failed" in error
    assert "its certificate is not for callee.example.test" in error
    assert transport.connection("TLS", "192.0.2.20", 5061) is None


def test_outgoing_tls_refuses_a_certificate_from_an_unknown_ca(tmp_path: Path) -> None:
    clock, reactor = Clock(), MemoryReactor()
    ours = TLSCertificates(files(tmp_path, trustme.CA(), "sip.example.test"))  # trusts its own CA only
    transport, _ = layer(clock)
    transport.register(TLSSender(transport, tls_connector(reactor, clock, ours)))
    errors: list[str] = []
    transport.send_request(_request(), NamedTarget("TLS", "192.0.2.20", 5061, "callee.example.test"), errors.append)
    [(host, port, factory, creator, _, _)] = reactor.sslClients
    client = TLSMemoryBIOFactory(creator, True, factory, clock).buildProtocol(IPv4Address("TCP", host, port))
    server = callee(tmp_path, trustme.CA(), "callee.example.test", clock).buildProtocol(PHONE)
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True, peerAddress=PHONE),
        client,
        iosim.FakeTransport(client, isServer=False, peerAddress=IPv4Address("TCP", "192.0.2.20", 5061)),
        greet=False,
        clock=clock,
    )
    pump.flush()
    [error] = errors
    assert "not signed by a CA we trust" in error


def test_a_target_without_a_name_is_checked_against_its_address(tmp_path: Path) -> None:
    """A phone registered over TLS whose connection is gone: its Contact's IP address must be in its certificate."""
    clock, reactor = Clock(), MemoryReactor()
    ours = TLSCertificates(files(tmp_path, trustme.CA(), "sip.example.test"))
    transport, _ = layer(clock)
    transport.register(TLSSender(transport, tls_connector(reactor, clock, ours)))
    transport.send_request(_request(), Target("TLS", "192.0.2.20", 5061), lambda why: None)
    [(_, _, _, creator, _, _)] = reactor.sslClients
    assert creator._hostnameASCII == "192.0.2.20"


def test_the_resolver_keeps_the_name_of_a_tls_hop_only() -> None:
    from twisted.internet import defer
    from twisted.names import dns

    class Names:
        def lookupAddress(self, name: str, timeout: Any) -> Any:
            record = dns.RRHeader(name, dns.A, payload=dns.Record_A("198.51.100.7"))
            return defer.succeed(([record], [], []))

        def lookupIPV6Address(self, name: str, timeout: Any) -> Any:
            return defer.succeed(([], [], []))

    found: list[list[Target]] = []
    resolver = Resolver(names=Names())
    resolver(Target("TLS", "trunk.example.net", 5061), found.append)
    resolver(Target("TCP", "trunk.example.net", 5060), found.append)
    [[tls], [tcp]] = found
    assert tls == ("TLS", "198.51.100.7", 5061) and tls.name == "trunk.example.net"
    assert tcp == ("TCP", "198.51.100.7", 5060) and tcp.name == ""


# -- unusable files: one line at start-up --------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> TLSFiles:
    return files(tmp_path, trustme.CA(), "sip.example.test")


def refusal(given: TLSFiles) -> str:
    with pytest.raises(StartupError) as caught:
        load_certificates(given)
    text = str(caught.value)
    assert "\n" not in text
    return text


def test_a_missing_certificate_file_is_one_line(good: TLSFiles, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    text = refusal(TLSFiles(missing, good.key))
    assert text == f"--tls-cert {missing}: cannot read it: No such file or directory"


def test_a_file_without_a_certificate_is_one_line(good: TLSFiles) -> None:
    assert refusal(TLSFiles(good.key, good.key)).startswith(f"--tls-cert {good.key}: no PEM certificate in it")


def test_a_broken_certificate_is_one_line(good: TLSFiles, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert refusal(TLSFiles(str(broken), good.key)).startswith(f"--tls-cert {broken}: not a readable PEM certificate")


def test_a_key_that_is_not_a_key_is_one_line(good: TLSFiles) -> None:
    assert refusal(TLSFiles(good.cert, good.cert)).startswith(f"--tls-key {good.cert}: not a readable PEM private key")


def test_the_key_of_another_certificate_is_one_line(good: TLSFiles, tmp_path: Path) -> None:
    other = files(tmp_path, trustme.CA(), "other.example.test", tag="other")
    text = refusal(TLSFiles(good.cert, other.key))
    assert text == f"--tls-key {other.key}: is not the key of the certificate in {good.cert}"


def test_an_encrypted_key_is_named_as_such(good: TLSFiles, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(good.key).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    text = refusal(TLSFiles(good.cert, str(encrypted)))
    assert text.startswith(f"--tls-key {encrypted}: not a readable PEM private key")
    assert "encrypted key?" in text


def test_a_ca_file_without_a_certificate_is_one_line(good: TLSFiles) -> None:
    assert refusal(TLSFiles(good.cert, good.key, ca=good.key)).startswith(f"--tls-ca {good.key}: no PEM certificate")


def test_certificate_errors_are_one_line_without_startup() -> None:
    with pytest.raises(CertificateError, match=r"^--tls-cert /nonexistent/x\.pem: cannot read it"):
        TLSCertificates(TLSFiles("/nonexistent/x.pem", "/nonexistent/y.pem"))


def test_a_tls_port_in_use_is_one_line_naming_tls_port() -> None:
    import socket

    from sipproxy.startup import bind_sip
    from sipproxy.transport import SipListeners

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listeners = SipListeners(None, TransportLayer(), 0, "127.0.0.1", tls_port=port, tls_factory=object())
        with pytest.raises(StartupError) as caught:
            bind_sip(listeners)
    assert str(caught.value) == (
        f"--tls-port {port}: TLS 127.0.0.1:{port} is already in use (by another SIP server, or sipproxy running already?)"
    )
    assert listeners.listening == 0
