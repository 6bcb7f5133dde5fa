"""The SIP listeners: sockets bound before start-up, adopted by the reactor when the service starts."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, capturedLogs

from sipproxy.transport import BindError, SipDatagramProtocol, SipListeners, SipStreamFactory, TransportLayer, listen

LOOPBACK = "127.0.0.1"


def rmem_max() -> int:
    with open("/proc/sys/net/core/rmem_max") as f:
        return int(f.read())


@pytest.fixture
def taken() -> Iterator[tuple[socket.socket, int]]:
    """A UDP port on loopback that someone else holds (its TCP twin stays free)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    yield sock, sock.getsockname()[1]
    sock.close()


def listeners(port: int, interface: str = LOOPBACK) -> SipListeners:
    return SipListeners(MemoryReactor(), TransportLayer(lambda *a: None), port, interface)


def test_udp_sockets_ask_for_a_large_receive_buffer() -> None:
    """Bursts must queue, not drop: each lost datagram costs the phone a 500 ms retransmission."""
    sock = listen.bound_socket(socket.AF_INET, socket.SOCK_DGRAM, LOOPBACK, 0)
    try:
        # Linux doubles the value asked for (bookkeeping overhead) and caps the request at rmem_max.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * min(listen.UDP_RECEIVE_BUFFER, rmem_max())
    finally:
        sock.close()


def test_a_receive_buffer_capped_by_the_kernel_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    allowed = rmem_max()
    monkeypatch.setattr(listen, "UDP_RECEIVE_BUFFER", allowed * 2)
    sock = listen.bound_socket(socket.AF_INET, socket.SOCK_DGRAM, LOOPBACK, 0)
    try:
        with capturedLogs() as events:
            listen.report_receive_buffer(sock)
    finally:
        sock.close()
    [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
    assert warning["granted"] == allowed and "net.core.rmem_max" in warning["log_format"]


def test_binding_happens_before_start_and_the_reactor_adopts_udp_and_tcp_on_one_port() -> None:
    sip = listeners(0)
    sip.bind()
    assert sip.listening == 0 and sip.port != 0  # bound, not yet served
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(OSError) as held:
        probe.bind((LOOPBACK, sip.port))
    assert held.value.errno == errno.EADDRINUSE
    sip.startService()
    try:
        reactor: MemoryReactor = sip.reactor
        (_, family, udp, size), (_, tcp_family, tcp) = reactor.adoptedPorts
        assert family == tcp_family == socket.AF_INET
        assert isinstance(udp, SipDatagramProtocol) and isinstance(tcp, SipStreamFactory)
        assert sip.listening == 2
    finally:
        sip.stopService()
    assert sip.listening == 0


def test_udp_reads_take_every_datagram_ip_can_carry() -> None:
    """Twisted's default read is 8,192 bytes: the rest of a longer datagram was dropped unseen (issue 19)."""
    sip = listeners(0)
    sip.startService()
    try:
        [(_, _, _, size)] = [p for p in sip.reactor.adoptedPorts if len(p) == 4]
    finally:
        sip.stopService()
    assert size == listen.UDP_MAX_DATAGRAM >= 65527  # the IPv6 UDP payload limit; IPv4's is 65,507


def test_a_port_in_use_names_the_transport_address_and_port(taken: tuple[socket.socket, int]) -> None:
    _, port = taken
    sip = listeners(port)
    with pytest.raises(BindError) as error:
        sip.bind()
    assert str(error.value).startswith(f"UDP 127.0.0.1:{port} is already in use")
    assert error.value.errno == errno.EADDRINUSE
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, port))  # nothing half-bound is left behind


def test_a_tcp_port_in_use_is_named_as_tcp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((LOOPBACK, 0))
        tcp.listen(1)
        port = tcp.getsockname()[1]
        with pytest.raises(BindError, match=f"^TCP 127.0.0.1:{port} is already in use"):
            listeners(port).bind()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, port))  # the UDP socket bound before TCP failed was closed


def test_an_address_this_host_does_not_have_is_named() -> None:
    with pytest.raises(BindError, match=r"^UDP 192\.0\.2\.55:5070 is not an address of this host") as error:
        listeners(5070, "192.0.2.55").bind()
    assert error.value.errno == errno.EADDRNOTAVAIL


def test_port_zero_picks_one_port_free_for_both_transports() -> None:
    sip = listeners(0)
    sip.bind()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe, pytest.raises(OSError):
            probe.bind((LOOPBACK, sip.port))
    finally:
        sip.close()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, sip.port))  # close() let both go
