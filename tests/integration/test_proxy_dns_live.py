"""RFC 3263 through the real ``twistd -n sipproxy --dns 127.0.0.1:PORT``: NAPTR -> SRV -> A/AAAA, and failover.

Issue 15's proof.  A real twisted.names authoritative server (``twistd -n
dns --pyzone``) on a loopback port serves the zone of ``other.example``:
NAPTR (SIPS+D2T first, then SIP+D2U, SIP+D2T), SRV records for
``_sip._udp`` in three priorities, with weights, pointing at three servers
on loopback, and A and AAAA records.  The servers are the other domain's:
``sip1`` a sipp UAS answering 503 with Retry-After, ``sip2`` a socket that
never answers, ``sip3`` a sipp UAS that answers 200.  A sipp caller calls
``sip:bob@other.example`` through the proxy and must get the 200, the
proxy having tried the three in SRV order; the next call goes straight to
``sip3``, the other two being put aside.  Within one priority the order is
random by design (RFC 2782): the weights are proven by the unit tests on
fixed seeds (``tests/test_transport_rfc3263.py``).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import LOOPBACK, Server, free_port, twistd
from test_proxy_sipp import Sipp, _bound, assert_no_bugs

ZONE = """
zone = [
    SOA("other.example", mname="ns.other.example", rname="root.other.example", serial=1,
        refresh="1H", retry="1H", expire="1H", minimum=60),
    NAPTR("other.example", 5, 10, b"s", b"SIPS+D2T", b"", b"_sips._tcp.other.example"),
    NAPTR("other.example", 10, 10, b"s", b"SIP+D2U", b"", b"_sip._udp.other.example"),
    NAPTR("other.example", 20, 10, b"s", b"SIP+D2T", b"", b"_sip._tcp.other.example"),
    SRV("_sip._udp.other.example", 10, 60, {p1}, "sip1.other.example"),
    SRV("_sip._udp.other.example", 20, 30, {p2}, "sip2.other.example"),
    SRV("_sip._udp.other.example", 30, 10, {p3}, "sip3.other.example"),
    SRV("_sips._tcp.other.example", 10, 10, 5061, "tls.other.example"),
    A("sip1.other.example", "127.0.0.1"),
    A("sip2.other.example", "127.0.0.1"),
    A("sip3.other.example", "127.0.0.1"),
    AAAA("sip3.other.example", "::1"),
    A("tls.other.example", "127.0.0.1"),
    AAAA("tls.other.example", "::1"),
    A("other.example", "127.0.0.1"),
    AAAA("other.example", "::1"),
]
"""


@dataclass
class OtherDomain:
    dns_port: int
    p1: int
    p2: int
    p3: int


@pytest.fixture
def other(tmp_path: Path) -> Iterator[OtherDomain]:
    """The DNS server of other.example on a loopback port (its zone names the three servers' ports)."""
    domain = OtherDomain(free_port(), free_port(), free_port(), free_port())
    zone = tmp_path / "other.example.zone"
    zone.write_text(ZONE.format(p1=domain.p1, p2=domain.p2, p3=domain.p3))
    log = tmp_path / "dns.log"
    args = [twistd(), "-n", "--pidfile=", f"--logfile={log}", "dns", "--pyzone", str(zone), "-i", LOOPBACK]
    proc = subprocess.Popen([*args, "-p", str(domain.dns_port)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 15
        while not _bound(domain.dns_port, "udp"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the DNS server did not start\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.05)
        yield domain
    finally:
        proc.terminate()
        proc.wait(10)


def _uas(workdir: Path, name: str, scenario: str, port: int, calls: int, keys: dict[str, str] | None = None) -> Sipp:
    uas = Sipp(workdir, name, scenario, port=port, calls=calls, keys=keys, timeout=120)
    deadline = time.monotonic() + 10
    while not _bound(port, "udp"):
        if uas.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"UAS did not start listening\n{uas.report()}")
        time.sleep(0.02)
    return uas


def _call(workdir: Path, server: Server, name: str, scenario: str, keys: dict[str, str]) -> Sipp:
    """A caller run to completion; it waits up to 60 s for each answer (a dead server costs Timer B, 32 s)."""
    uac = Sipp(
        workdir,
        name,
        scenario,
        port=free_port(),
        remote=server.sip_port,
        keys={"domain": "other.example", **keys},
        extra=("-d", "100", "-recv_timeout", "60000"),
        timeout=90,
    )
    uac.wait(120)
    return uac


def _datagrams(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


def _info_lines(server: Server, start: str) -> list[str]:
    return [line.split("] ", 1)[1] for line in server.log_text().splitlines() if "] " + start in line]


def test_a_call_to_another_domain_follows_naptr_and_srv_and_fails_over_503_then_timeout_to_200(
    server_factory,
    other: OtherDomain,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    server = server_factory("--dns", f"{LOOPBACK}:{other.dns_port}")
    unavailable = _uas(tmp_path, "sip1", "uas_unavailable.xml", other.p1, calls=2, keys={"retry_after": "120"})
    answers = _uas(tmp_path, "sip3", "uas_answer.xml", other.p3, calls=2)
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind((LOOPBACK, other.p2))
    dead.setblocking(False)
    try:
        first = _call(tmp_path, server, "uac-1", "call_uac.xml", {"callee": "bob"})
        assert first.proc.returncode == 0, first.report()
        assert len(unavailable.requests("INVITE")) == 1, unavailable.report()
        to_dead = _datagrams(dead)
        assert to_dead and all(d.startswith(b"INVITE sip:bob@other.example SIP/2.0") for d in to_dead)
        assert len(answers.requests("INVITE")) == 1, answers.report()
        [line] = _info_lines(server, "INVITE sip:bob@other.example")
        assert line == (
            f"INVITE sip:bob@other.example: SRV _sip._udp.other.example -> "
            f"sip1.other.example:{other.p1} 503 (Retry-After 120), sip2.other.example:{other.p2} timeout, "
            f"sip3.other.example:{other.p3} (127.0.0.1) -> 200"
        )

        # The two that failed are put aside (120 s, 32 s): the next call goes straight to sip3.
        second = _call(tmp_path, server, "uac-2", "call_uac.xml", {"callee": "bob"})
        assert second.proc.returncode == 0, second.report()
        assert answers.wait(15) == 0, answers.report()
        assert len(answers.requests("INVITE")) == 2
        assert len(unavailable.requests("INVITE")) == 1
        assert _datagrams(dead) == []
        assert len(_info_lines(server, "INVITE sip:bob@other.example")) == 1  # no failover, no line
    finally:
        dead.close()
        unavailable.stop()
        answers.stop()
    assert_no_bugs(server)


def test_a_sips_uri_is_sent_only_over_tls_never_downgraded(
    server_factory,
    other: OtherDomain,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """RFC 3263 §4.1: for sips: only SIPS+D2T; the UDP servers of the zone never see the call.

    This server has no TLS yet: the TLS target (port 5061) is chosen and
    refused by the transport (§16.9), and the caller gets a 5xx.
    """
    server = server_factory("--dns", f"{LOOPBACK}:{other.dns_port}")
    answers = _uas(tmp_path, "sip3", "uas_answer.xml", other.p3, calls=1)
    try:
        uac = _call(
            tmp_path, server, "uac-sips", "call_sips_rejected.xml", {"callee": "bob", "target": "other.example"}
        )
        assert uac.proc.returncode == 0, uac.report()
        assert answers.requests("INVITE") == []
    finally:
        answers.stop()
    [line] = _info_lines(server, "INVITE sips:bob@other.example")
    # Without TLS here: "other.example:5061 (127.0.0.1) transport TLS is not supported, ..."; with it, the
    # SIPS+D2T record's tls.other.example:5061, where nothing listens.  Port 5061 and TLS either way.
    assert re.search(r"other\.example:5061 \(127\.0\.0\.1\) .*-> 50[03] ", line), line
    assert "transport TLS is not supported" in line or "SRV _sips._tcp.other.example" in line, line
    assert_no_bugs(server)
