"""A flood of junk writes a bounded number of log lines and a summary with its counts (issue 19, item 8)."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent

from sipproxy.metrics import Metrics
from sipproxy.stack import Domains, SipStack
from sipproxy.transaction import TransactionLayer, TransactionSink
from sipproxy.transport import DatagramSender, SipDatagramProtocol, SipStreamFactory, TransportLayer
from sipproxy.transport.droplog import DropLog

try:
    from tests.fakes import FakeUDP
except ImportError:  # pragma: no cover
    from fakes import FakeUDP  # type: ignore[no-redef]


def make_layer() -> tuple[TransportLayer, Clock]:
    clock = Clock()
    metrics = Metrics()
    transport = TransportLayer(metrics=metrics, clock=clock)
    transport.register(DatagramSender(transport))
    transport.sink = TransactionSink(TransactionLayer(clock, transport, SipStack(Domains(["example.test"]), metrics)))
    proto = SipDatagramProtocol(transport, 4)
    proto.transport = FakeUDP()  # type: ignore[assignment]
    proto.startProtocol()
    return transport, clock


def warnings(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if e["log_level"] >= LogLevel.warn]


def test_5000_junk_datagrams_from_1000_sources_write_a_few_lines_and_a_summary() -> None:
    transport, clock = make_layer()
    udp = SipDatagramProtocol(transport, 4)
    with capturedLogs() as events:
        for n in range(5000):
            udp.datagramReceived(b"\x16\x03\x01junk %d" % n, (f"10.0.{n % 1000 // 250}.{n % 250}", 5060))
            if n % 500 == 499:
                clock.advance(1)  # 5,000 in 10 s
        clock.advance(10)
    lines = warnings(events)
    assert len(lines) <= 12, [formatEvent(e) for e in lines]
    [summary] = [e for e in lines if "count" in e]
    assert (summary["count"], summary["sources"], summary["drop"]) == (5000, 1000, "unparseable")
    assert formatEvent(summary) == (
        "Dropped 5000 unparseable messages from 1000 sources in the last 10 s (4990 not logged one by one)"
    )
    assert all(e["host"] for e in lines if e is not summary)  # the lines written still say who sent it


def test_each_source_is_warned_about_once_per_interval_and_again_in_the_next() -> None:
    clock = Clock()
    drops = DropLog(clock, interval=10, lines=5)
    with capturedLogs() as events:
        for _ in range(3):
            drops.warn("unparseable", "192.0.2.1", "junk from {host}")
            drops.warn("unparseable", "192.0.2.2", "junk from {host}")
            drops.warn("rejected", "192.0.2.1", "bad request from {host}")  # another kind: its own budget
        clock.advance(10)
        drops.warn("unparseable", "192.0.2.1", "junk from {host}")
    texts = [formatEvent(e) for e in warnings(events)]
    assert texts == [
        "junk from 192.0.2.1",
        "junk from 192.0.2.2",
        "bad request from 192.0.2.1",
        "Dropped 6 unparseable messages from 2 sources in the last 10 s (4 not logged one by one)",
        "Answered 3 malformed requests with 400 from 1 sources in the last 10 s (2 not logged one by one)",
        "junk from 192.0.2.1",
    ]


def test_a_quiet_interval_writes_no_summary_and_ipv6_sources_count_per_slash_64() -> None:
    clock = Clock()
    drops = DropLog(clock, interval=10, lines=5, max_sources=2)
    with capturedLogs() as events:
        drops.warn("oversized", "2001:db8::1", "big from {host}")
        clock.advance(10)
        for host in ("2001:db8::1", "2001:db8::2", "2001:db8:0:1::1", "2001:db8:0:2::1"):
            drops.warn("oversized", host, "big from {host}")
        clock.advance(10)
    texts = [formatEvent(e) for e in warnings(events)]
    assert texts == [
        "big from 2001:db8::1",
        "big from 2001:db8::1",
        "big from 2001:db8:0:1::1",
        "Dropped 4 oversized datagrams from at least 2 sources in the last 10 s (2 not logged one by one)",
    ]


def test_a_connection_flood_over_the_limit_is_summarized_too() -> None:
    from sipproxy.transport import TransportLimits

    clock = Clock()
    transport = TransportLayer(
        metrics=Metrics(),
        limits=TransportLimits(max_connections_per_address=1),
        clock=clock,
        holds_flow=lambda t, host, port: True,
    )
    factory = SipStreamFactory(transport, clock)
    held = factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1))
    held.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 1)))
    with capturedLogs() as events:
        for port in range(2, 1002):
            assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", port)) is None
        clock.advance(10)
    texts = [formatEvent(e) for e in warnings(events)]
    assert len(texts) == 2 and texts[-1].startswith("Refused 1000 TCP connections (connection limit) from 1 sources")
