"""A real TLS softphone: baresip 1.0 registers over TLS and calls a UDP baresip through ``twistd -n sipproxy``.

Debian's sipp has no TLS; baresip (Debian ``baresip-core``) does: it checks
our certificate against the CA given as ``sip_cafile`` and keeps its TLS
connection to us as its outbound proxy.  The UDP phone calls it back over
that connection, and each side hangs up once (the BYE crossing the proxy
from UDP to TLS and back).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from harness import LOOPBACK, Server, free_port, require

try:
    from test_clients_live import DOMAIN, Baresip, free_port_pair, wait_for_binding
except ImportError:  # pragma: no cover
    from tests.integration.test_clients_live import (  # type: ignore[no-redef]
        DOMAIN,
        Baresip,
        free_port_pair,
        wait_for_binding,
    )


class TlsBaresip(Baresip):
    """baresip with our CA, registering through a TLS outbound proxy (or over UDP with ``tls`` False)."""

    def __init__(self, workdir: Path, user: str, server: Server, *, tls: bool, cafile: Path) -> None:
        self.user = user
        self.dir = workdir / f"baresip-{user}"
        self.dir.mkdir()
        self.sip_port = free_port_pair()
        self.ctrl_port = free_port()
        (self.dir / "config").write_text(
            f"sip_listen\t\t{LOOPBACK}:{self.sip_port}\n"
            f"sip_cafile\t\t{cafile}\n"
            f"net_interface\t\t{LOOPBACK}\n"
            "audio_player\t\taubridge,nil\naudio_source\t\taubridge,nil\naudio_alert\t\taubridge,nil\n"
            "module_path\t\t/usr/lib/baresip/modules\n"
            "module\t\t\tg711.so\nmodule\t\t\taubridge.so\nmodule_tmp\t\taccount.so\n"
            "module_app\t\tmenu.so\nmodule_app\t\tctrl_tcp.so\n"
            f"ctrl_tcp_listen\t\t{LOOPBACK}:{self.ctrl_port}\n"
        )
        tls_port = server.tls_port  # type: ignore[attr-defined]
        outbound = f"sip:{LOOPBACK}:{tls_port};transport=tls" if tls else f"sip:{LOOPBACK}:{server.sip_port}"
        (self.dir / "accounts").write_text(f'<sip:{user}@{DOMAIN}>;outbound="{outbound}";answermode=auto\n')
        self.log = self.dir / "baresip.log"
        self.messages = []
        self._buffer = b""
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [require("baresip"), "-f", str(self.dir)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.ctrl = self._connect()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Server]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert = ca.issue_cert(LOOPBACK, "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    srv = Server(tmp_path, [])
    srv.tls_port = free_port()  # type: ignore[attr-defined]
    srv.extra = ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    srv.extra += ["--tls-port", str(srv.tls_port)]  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def phones(tmp_path: Path, tls_server: Server) -> Iterator[Callable[..., TlsBaresip]]:
    started: list[TlsBaresip] = []

    def start(user: str, *, tls: bool) -> TlsBaresip:
        phone = TlsBaresip(tmp_path, user, tls_server, tls=tls, cafile=tmp_path / "ca.pem")
        started.append(phone)
        return phone

    yield start
    for phone in started:
        phone.stop()


def test_baresip_over_tls_and_baresip_over_udp_call_each_other(tls_server: Server, phones) -> None:  # type: ignore[no-untyped-def]
    alice = phones("alice", tls=True)
    bob = phones("bob", tls=False)
    binding = wait_for_binding(tls_server, "alice", alice.sip_port + 1, alice.output)  # baresip's TLS port
    assert binding["transport"] == "TLS", binding
    wait_for_binding(tls_server, "bob", bob.sip_port, bob.output)

    alice.command("dial", f"sip:bob@{DOMAIN}")
    assert alice.wait_event("CALL_ESTABLISHED")["peeruri"] == f"sip:bob@{DOMAIN}"
    assert bob.wait_event("CALL_ESTABLISHED")["peeruri"] == f"sip:alice@{DOMAIN}"
    alice.command("hangup")
    alice.wait_event("CALL_CLOSED")
    bob.wait_event("CALL_CLOSED")  # alice's BYE, TLS -> UDP

    bob.command("dial", f"sip:alice@{DOMAIN}")
    assert bob.wait_event("CALL_ESTABLISHED")["peeruri"] == f"sip:alice@{DOMAIN}"
    assert alice.wait_event("CALL_ESTABLISHED")["peeruri"] == f"sip:bob@{DOMAIN}"
    bob.command("hangup")
    bob.wait_event("CALL_CLOSED")
    alice.wait_event("CALL_CLOSED")  # bob's BYE, UDP -> TLS, over alice's connection
