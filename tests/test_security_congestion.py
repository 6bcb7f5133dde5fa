"""Admission by wait time (issue 17): the shedding decisions, on a fake clock, no timing."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from sipproxy.message import Response, parse_message
from sipproxy.metrics import Metrics
from sipproxy.net import Source
from sipproxy.security import Congestion, Guard
from sipproxy.security.overload import ReactorLag

try:
    from tests.messages import make_response_bytes
    from tests.security_fakes import START, request, settings
except ImportError:  # pragma: no cover
    from messages import make_response_bytes  # type: ignore[no-redef]
    from security_fakes import START, request, settings  # type: ignore[no-redef]

SOURCE = Source("UDP", "192.0.2.66", 5060)


def _congestion(**kw: Any) -> tuple[Congestion, Clock]:
    clock = Clock()
    clock.advance(START)
    return Congestion(clock, 0.5, **kw), clock


# -- thresholds and hysteresis -----------------------------------------------------------


def test_shedding_starts_at_80_percent_of_the_tolerance_and_stops_under_50() -> None:
    congestion, clock = _congestion()
    assert congestion.datagram_waited(0.39) and not congestion.shedding  # a queue, not overload
    assert congestion.datagram_waited(0.40) and not congestion.shedding  # for how long?
    clock.advance(0.11)
    assert congestion.datagram_waited(0.41) and congestion.shedding  # over the mark for 100 ms, rising
    congestion.datagram_waited(0.30)  # between the marks: no flapping
    assert congestion.shedding
    congestion.datagram_waited(0.26)
    assert congestion.shedding
    congestion.datagram_waited(0.249)
    assert not congestion.shedding
    congestion.datagram_waited(0.39)  # climbing back: not yet
    assert not congestion.shedding
    assert congestion.wait == pytest.approx(0.39)


def test_a_pause_whose_queue_drains_by_itself_sheds_nothing_overload_does() -> None:
    """After a 600 ms pause at half load the waits fall from the first datagram on; under overload they rise."""
    congestion, clock = _congestion()
    for step in range(40):  # every 10 ms, the wait 10 ms shorter (half load: it drains as fast as it came)
        congestion.datagram_waited(0.6 - 0.01 * step)
        assert not congestion.shedding
        clock.advance(0.01)
    for step in range(40):  # twice the capacity offered: every 10 ms the wait grows 5 ms
        congestion.datagram_waited(0.3 + 0.005 * step)
        clock.advance(0.01)
        if congestion.shedding:
            break
    assert congestion.shedding and congestion.wait == pytest.approx(0.45, abs=0.006)  # 100 ms after 400 ms


def test_datagrams_that_waited_four_tolerances_are_stale() -> None:
    congestion, _ = _congestion()
    assert congestion.datagram_waited(1.99) is True
    assert congestion.datagram_waited(2.0) is False


def test_a_udp_wait_stands_for_a_second_then_the_reactor_lag_alone_decides() -> None:
    """TCP, TLS and WebSocket work waits for the reactor: its lag is their wait; an old UDP stamp is no news."""
    congestion, clock = _congestion(dwell=0)
    congestion.datagram_waited(0.45)
    congestion.reactor_lagged(0.01)
    assert congestion.shedding  # the UDP datagram of a moment ago still says so
    clock.advance(1.01)
    congestion.reactor_lagged(0.01)
    assert not congestion.shedding and congestion.wait == pytest.approx(0.01)
    congestion.reactor_lagged(0.42)
    assert congestion.shedding


def test_the_lag_timer_feeds_the_congestion() -> None:
    congestion, clock = _congestion(dwell=0)
    lag = ReactorLag(clock, 0.5, observe=congestion.reactor_lagged)
    lag.start()
    clock.advance(0.05)
    assert congestion.wait == 0.0
    clock.advance(0.5)  # ran 450 ms late
    assert congestion.wait == pytest.approx(0.45) and congestion.shedding
    lag.stop()


def test_bad_tolerances_are_refused() -> None:
    with pytest.raises(ValueError):
        Congestion(Clock(), 0)
    with pytest.raises(ValueError):
        Congestion(Clock(), 0.5, retry_after=0)


# -- Retry-After jitter -------------------------------------------------------------------


def test_retry_after_is_spread_over_base_to_twice_base() -> None:
    draws = iter([0.0, 0.17, 0.5, 0.99, 0.999999])
    congestion, _ = _congestion(retry_after=5, random=lambda: next(draws))
    assert [congestion.retry_after() for _ in range(5)] == [5, 6, 8, 10, 10]


def test_retry_after_values_cover_the_range() -> None:
    congestion, _ = _congestion(retry_after=5)
    assert {congestion.retry_after() for _ in range(2000)} == set(range(5, 11))


# -- the log: one line when it starts, one when it is over -------------------------------------


def test_one_line_when_shedding_starts_and_one_with_the_counts_when_it_is_over() -> None:
    congestion, clock = _congestion(quiet=5.0)
    congestion.datagram_waited(0.45)
    with capturedLogs() as events:
        for _ in range(3):
            congestion.shed("INVITE", "wait")
        congestion.shed("REGISTER", "wait")
        congestion.shed("response", "stale")
        congestion.shed("INVITE", "retransmission")
        clock.advance(4.0)
        congestion.shed("INVITE", "wait")  # still at it: the episode goes on
        clock.advance(4.9)
        assert len(events) == 1
        clock.advance(0.2)  # five seconds without a refusal
    start, end = events
    assert start["log_format"].startswith("Overload: messages wait")
    assert start["wait_ms"] == pytest.approx(450)
    assert end["refused"] == 5 and end["stale"] == 1 and end["again"] == 1
    assert end["by_method"] == "INVITE 4, REGISTER 1"
    assert end["seconds"] == pytest.approx(4.0) and end["peak_ms"] == pytest.approx(450)
    assert clock.getDelayedCalls() == []
    with capturedLogs() as again:
        congestion.shed("INVITE", "wait")
    assert len(again) == 1  # a new episode, a new start line
    congestion.stop()
    assert clock.getDelayedCalls() == []


# -- the guard under overload ---------------------------------------------------------------


def _shedding_guard() -> tuple[Guard, Metrics, list[Response]]:
    clock = Clock()
    clock.advance(START)
    metrics = Metrics()
    congestion = Congestion(clock, 0.5, dwell=0, random=lambda: 0.5)
    guard = Guard(settings(rate=None), clock, metrics, congestion=congestion)
    congestion.datagram_waited(0.45)
    assert congestion.shedding
    return guard, metrics, []


@pytest.mark.parametrize("method", ["INVITE", "REGISTER", "SUBSCRIBE", "MESSAGE"])
def test_new_out_of_dialog_requests_get_503_with_a_jittered_retry_after(method: str) -> None:
    guard, metrics, out = _shedding_guard()
    assert guard.admit(parse_message(request(method)), SOURCE, 500, lambda r, s: out.append(r)) is False
    [response] = out
    assert response.status == 503 and response.get("retry-after") == "8"
    assert response.to.tag is not None and response.to.tag.startswith("sg.")
    assert metrics.shed.labels(method, "wait")._value.get() == 1
    assert metrics.blocked.labels("wait")._value.get() == 1


def test_what_finishes_work_already_taken_passes_under_overload() -> None:
    guard, metrics, out = _shedding_guard()
    guard.is_retransmission = lambda r: r.call_id == "taken"

    def admit(data: bytes) -> bool:
        return guard.admit(parse_message(data), SOURCE, 500, lambda r, s: out.append(r))

    assert admit(request("ACK", to_tag="t"))
    assert admit(request("CANCEL"))
    assert admit(request("BYE", to_tag="t"))
    assert admit(request("INVITE", to_tag="t"))  # a re-INVITE in a dialog
    assert admit(request("NOTIFY", to_tag="t"))
    assert admit(request("INVITE", call_id="taken"))  # a retransmission of one in progress
    assert admit(make_response_bytes(180))
    assert out == []
    assert not admit(request("OPTIONS"))  # new work of another kind is shed too


def test_the_ack_for_one_of_our_refusals_is_absorbed() -> None:
    guard, _, out = _shedding_guard()
    guard.admit(parse_message(request("INVITE")), SOURCE, 500, lambda r, s: out.append(r))
    [refusal] = out
    ack = request("ACK", to_tag=refusal.to.tag)
    assert guard.admit(parse_message(ack), SOURCE, 300, lambda r, s: out.append(r)) is False
    assert guard.admit(parse_message(request("ACK", to_tag="callee-tag")), SOURCE, 300) is True


def test_without_congestion_nothing_is_shed() -> None:
    clock = Clock()
    guard = Guard(settings(rate=None), clock, Metrics())
    assert guard.admit(parse_message(request("INVITE")), SOURCE, 500, lambda r, s: None)
    assert guard.datagram_waited(request("INVITE"), 30.0) is True


def test_stale_datagrams_are_dropped_unparsed_and_counted_by_method() -> None:
    guard, metrics, _ = _shedding_guard()
    assert guard.datagram_waited(request("INVITE"), 0.3) is True
    assert guard.datagram_waited(request("INVITE"), 2.5) is False
    assert guard.datagram_waited(make_response_bytes(200), 2.5) is False
    assert guard.datagram_waited(b"\r\nFOO sip:x SIP/2.0\r\n", 3.0) is False
    assert metrics.shed.labels("INVITE", "stale")._value.get() == 1
    assert metrics.shed.labels("response", "stale")._value.get() == 1
    assert metrics.shed.labels("OTHER", "stale")._value.get() == 1


def test_a_retransmission_of_a_refused_datagram_gets_the_same_503_unparsed() -> None:
    guard, metrics, out = _shedding_guard()
    sent: list[tuple[Response, Source]] = []
    guard.reply = lambda response, source: sent.append((response, source))
    invite = request("INVITE", call_id="refused")
    assert guard.datagram_waited(invite, 0.45) is True
    guard.message_received(parse_message(invite), SOURCE, len(invite))
    [(refusal, to)] = sent
    assert refusal.status == 503 and to == SOURCE
    assert guard.datagram_waited(invite, 0.46) is False  # the same bytes again: answered, not parsed
    assert sent[1] == (refusal, SOURCE)
    assert metrics.shed.labels("INVITE", "retransmission")._value.get() == 1
    assert guard.datagram_waited(request("INVITE", call_id="other"), 0.45) is True
    over = guard.congestion
    assert over is not None
    over.datagram_waited(0.1)  # shedding is over: a retransmission now is a new chance
    assert guard.datagram_waited(invite, 0.1) is True


def test_only_udp_datagrams_are_remembered() -> None:
    guard, _, _ = _shedding_guard()
    sent: list[Response] = []
    guard.reply = lambda response, source: sent.append(response)
    invite = request("INVITE")
    guard.datagram_waited(invite, 0.45)
    guard.message_received(parse_message(invite), Source("TCP", "192.0.2.66", 5060), len(invite))
    assert len(sent) == 1
    assert guard.datagram_waited(invite, 0.45) is True


# -- the UDP read path: the kernel's stamp becomes the wait ----------------------------------------


class _Socket:
    """``recvmsg`` as the kernel answers it with SO_TIMESTAMPNS on: data, the stamp, flags, address."""

    def __init__(self, datagrams: list[tuple[bytes, float]]) -> None:
        self.datagrams = datagrams
        self.options: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options.append((level, option, value))

    def recvmsg(self, size: int, ancillary: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, tuple[str, int]]:
        from sipproxy.transport.udp import _TIMESPEC, SO_TIMESTAMPNS

        if not self.datagrams:
            raise BlockingIOError(errno.EAGAIN, "nothing")
        data, stamp = self.datagrams.pop(0)
        seconds = int(stamp)
        packed = _TIMESPEC.pack(seconds, round((stamp - seconds) * 1e9))
        return data, [(socket.SOL_SOCKET, SO_TIMESTAMPNS, packed)], 0, ("192.0.2.7", 5062)


class _Port:
    maxPacketSize = 65535
    maxThroughput = 256 * 1024

    def __init__(self, sock: _Socket) -> None:
        self.socket = sock


class _Layer:
    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.udp: dict[int, Any] = {}
        self.received: list[bytes] = []


def test_the_udp_read_tells_the_sink_each_datagrams_wait_and_drops_what_it_refuses() -> None:
    from sipproxy.transport.udp import SO_TIMESTAMPNS, SipDatagramProtocol

    waits: list[float] = []

    class Sink:
        def datagram_waited(self, datagram: bytes, wait: float) -> bool:
            waits.append(wait)
            return wait < 2.0

    fresh, stale = request("OPTIONS", call_id="fresh"), request("OPTIONS", call_id="stale")
    sock = _Socket([(fresh, 1000.25), (stale, 997.5)])
    layer = _Layer(Sink())
    protocol = SipDatagramProtocol(layer, 4)  # type: ignore[arg-type]
    protocol.datagramReceived = lambda data, addr: layer.received.append(data)  # type: ignore[method-assign]
    port = _Port(sock)
    protocol.makeConnection(port)  # type: ignore[arg-type]
    assert (socket.SOL_SOCKET, SO_TIMESTAMPNS, 1) in sock.options
    assert port.doRead == protocol.read  # type: ignore[attr-defined]
    protocol.read(now=lambda: 1000.5)
    assert waits == pytest.approx([0.25, 3.0])
    assert layer.received == [fresh]


# -- on by default -------------------------------------------------------------------------------


def _service(*extra: str) -> Any:
    from twisted.internet import reactor

    from sipproxy.service import build_service
    from sipproxy.tap import Options

    options = Options()
    options.parseOptions(
        ["--db", ":memory:", "--sip-interface", "127.0.0.1", "--web", "tcp:0:interface=127.0.0.1", *extra]
    )
    return build_service(options, reactor)


def test_overload_control_by_wait_is_on_by_default_and_its_timer_runs() -> None:
    from sipproxy.security.overload import LagWatch

    service = _service()
    security = service.core.security
    assert security.guard.congestion is security.congestion
    assert security.congestion.tolerance == 0.5 and security.guard.lagging() is None
    [watch] = [child for child in service if isinstance(child, LagWatch)]
    assert watch.lag.observe == security.congestion.reactor_lagged and not watch.lag_rule
    service.core.store.close()


def test_overload_wait_0_turns_it_off_and_lag_alone_still_works() -> None:
    from sipproxy.security.overload import LagWatch

    service = _service("--overload-wait", "0")
    assert service.core.security.guard.congestion is None
    assert not [child for child in service if isinstance(child, LagWatch)]
    service.core.store.close()
    service = _service("--overload-wait", "0", "--overload-lag", "0.2")
    assert service.core.security.guard.congestion is None
    assert service.core.security.guard.lagging is service.core.security.lag
    service.core.store.close()


@pytest.mark.parametrize("value", ["soon", "-1", "inf"])
def test_a_bad_overload_wait_is_one_line(value: str) -> None:
    from twisted.python.usage import UsageError

    from sipproxy.tap import Options

    with pytest.raises(UsageError, match="--overload-wait"):
        Options().parseOptions(["--overload-wait", value])
