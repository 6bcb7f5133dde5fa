"""Admission by wait time (issue 17): the shedding decisions, on a fake clock, no timing."""

from __future__ import annotations

import errno
import socket
from collections import deque
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from sipproxy.message import Response, parse_message
from sipproxy.metrics import Metrics
from sipproxy.net import Source
from sipproxy.security import Congestion, Guard
from sipproxy.security.congestion import FLOOR, SETTLE
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


# -- when overload begins and ends -------------------------------------------------------------


def test_overload_begins_at_40_percent_of_the_tolerance_held_for_100_ms_and_rising() -> None:
    congestion, clock = _congestion()
    assert congestion.datagram_waited(0.19) and not congestion.shedding  # a queue, not overload
    assert congestion.datagram_waited(0.20) and not congestion.shedding  # for how long?
    clock.advance(0.11)
    assert congestion.datagram_waited(0.21) and congestion.shedding  # over the mark for 100 ms, rising
    assert congestion.wait == pytest.approx(0.21)


def test_overload_ends_once_all_were_admitted_with_the_wait_under_40_percent_for_2_s() -> None:
    congestion, clock = _congestion(dwell=0)
    congestion.datagram_waited(0.45)
    assert congestion.shedding and congestion.admitted < 1
    clock.advance(0.11)
    congestion.datagram_waited(0.30)  # draining fast: the share doubles, back to all
    assert congestion.shedding and congestion.admitted == 1.0  # but the wait is not yet under 200 ms
    clock.advance(0.11)
    congestion.datagram_waited(0.04)  # under the mark: from now on, all admitted with the queue empty
    clock.advance(SETTLE - 0.2)
    congestion.datagram_waited(0.04)
    assert congestion.shedding and congestion.refusing == 0.0  # still watched, step by step
    clock.advance(0.3)
    congestion.datagram_waited(0.04)
    assert not congestion.shedding and congestion.refusing == 0.0


def test_a_load_still_over_capacity_after_the_queue_emptied_is_met_at_the_next_step() -> None:
    """While overload settles, a rising wait cuts the share at once, not after it grew back to 200 ms."""
    congestion, clock = _congestion(dwell=0)
    congestion.datagram_waited(0.45)
    clock.advance(0.11)
    congestion.datagram_waited(0.03)  # the queue emptied: all admitted again
    assert congestion.admitted == 1.0
    for wait in (0.085, 0.14):  # all admitted at twice the capacity: the wait grows by half a second a second
        clock.advance(0.11)
        congestion.datagram_waited(wait)
    assert congestion.shedding and congestion.admitted < 0.6  # cut at 140 ms, before the 200 ms mark


def test_a_step_at_most_quarters_the_share_and_it_never_falls_under_the_floor() -> None:
    congestion, clock = _congestion(dwell=0)
    congestion.datagram_waited(0.45)
    shares = [congestion.admitted]
    for wait in (0.9, 1.4, 1.9, 1.95, 1.99):  # the wait shooting up: every step cuts
        clock.advance(0.11)
        congestion.datagram_waited(wait)
        shares.append(congestion.admitted)
    assert shares[1:3] == pytest.approx([s / 4 for s in shares[:2]])
    assert shares[-1] == FLOOR and congestion.refusing == pytest.approx(1 - FLOOR)


def test_the_share_changes_once_per_interval_however_many_datagrams_come() -> None:
    congestion, clock = _congestion(dwell=0)
    congestion.datagram_waited(0.45)
    first = congestion.admitted
    for _ in range(100):
        clock.advance(0.0009)
        congestion.datagram_waited(0.6)
    assert congestion.admitted == first
    clock.advance(0.02)
    congestion.datagram_waited(0.6)
    assert congestion.admitted < first


def test_the_admitted_share_of_new_requests_is_evenly_spread() -> None:
    congestion, _ = _congestion(dwell=0)
    assert all(congestion.admits() for _ in range(20))  # not overloaded: all in
    congestion.datagram_waited(0.45)
    congestion.admitted = 0.25
    taken = [congestion.admits() for _ in range(20)]
    assert taken == [False, False, False, True] * 5  # one in four, not four in a row


# -- the control against a model of the server: a queue, a cost per message, on the fake clock ----------------


CAPACITY = 1000.0
"""Admitted new requests per second the model server gets through."""


def _serve(
    congestion: Congestion, clock: Clock, offered: float, seconds: float, *, refusal_cost: float = 0.1
) -> list[tuple[float, bool, float]]:
    """Offer ``offered`` new requests per second for ``seconds`` to a UDP server with the control in front.

    Requests arrive evenly and queue in the socket buffer, read one at a time:
    an admitted one costs 1/CAPACITY s, a refused one ``refusal_cost`` of
    that, a stale one dropped unread nothing.  Returns (time read, admitted,
    wait) for each request read.
    """
    read: list[tuple[float, bool, float]] = []
    queue: deque[float] = deque()
    end = clock.seconds() + seconds
    arrival = clock.seconds()
    while True:
        now = clock.seconds()
        while arrival <= now and arrival < end:
            queue.append(arrival)
            arrival += 1.0 / offered
        if not queue:
            if arrival >= end:
                return read
            clock.advance(arrival - now)
            continue
        wait = now - queue.popleft()
        if not congestion.datagram_waited(wait):
            continue
        admitted = congestion.admits()
        read.append((now, admitted, wait))
        if not admitted:
            congestion.shed("INVITE", "wait")
        clock.advance((1.0 if admitted else refusal_cost) / CAPACITY)


def _goodput(read: list[tuple[float, bool, float]], since: float, until: float) -> float:
    return sum(1 for at, admitted, _ in read if admitted and since <= at < until) / (until - since)


def _best(offered: float, refusal_cost: float) -> float:
    """The most a server can get through while it refuses the rest: G/C + (offered - G) r/C = 1."""
    return (CAPACITY - offered * refusal_cost) / (1 - refusal_cost)


@pytest.mark.parametrize(("factor", "refusal_cost"), [(1.2, 0.2), (2, 0.2), (4, 0.03), (8, 0.03)])
def test_over_capacity_the_server_gets_through_what_it_can_and_the_wait_stays_under_the_tolerance(
    factor: float, refusal_cost: float
) -> None:
    """Refusal costs: a REGISTER's 503 a fifth of taking it; an INVITE's 3 % of the whole call (bench/shed_cost.py)."""
    congestion, clock = _congestion()
    start = clock.seconds()
    read = _serve(congestion, clock, factor * CAPACITY, 10, refusal_cost=refusal_cost)
    assert congestion.shedding
    assert _goodput(read, start + 2, start + 10) >= 0.95 * _best(factor * CAPACITY, refusal_cost)
    waits = [wait for at, _, wait in read if at >= start + 2]
    assert max(waits) < congestion.tolerance  # no retransmission timer fires
    settled = [wait for at, _, wait in read if at >= start + 5]
    assert sum(settled) / len(settled) == pytest.approx(congestion.target, abs=0.03)


@pytest.mark.parametrize("factor", [2, 4])
def test_the_step_at_half_capacity_right_after_the_overload_is_all_admitted_within_a_second(factor: float) -> None:
    congestion, clock = _congestion()
    _serve(congestion, clock, factor * CAPACITY, 10)
    start = clock.seconds()
    read = _serve(congestion, clock, 0.5 * CAPACITY, 5)
    late = [admitted for at, admitted, _ in read if at >= start + 1]
    assert all(late) and not congestion.shedding
    assert sum(1 for _, admitted, _ in read if not admitted) < 0.1 * len(read)


def test_just_over_capacity_only_the_excess_is_refused() -> None:
    """The REGISTER ramp's case: 20 % over for 10 s, then 90 % of capacity: nothing refused there once drained."""
    congestion, clock = _congestion()
    over = _serve(congestion, clock, 1.2 * CAPACITY, 10)
    refused = sum(1 for _, admitted, _ in over if not admitted)
    assert refused < 0.25 * len(over)  # the excess is 1/6 of what came; a little more while the queue drains
    start = clock.seconds()
    after = _serve(congestion, clock, 0.9 * CAPACITY, 10)
    assert all(admitted for at, admitted, _ in after if at >= start + 1)


def test_below_capacity_nothing_is_refused() -> None:
    congestion, clock = _congestion()
    read = _serve(congestion, clock, 0.95 * CAPACITY, 20)
    assert all(admitted for _, admitted, _ in read) and not congestion.shedding


def test_a_pause_whose_queue_drains_by_itself_sheds_nothing_overload_does() -> None:
    """After a 600 ms pause at half load the waits fall from the first datagram on; under overload they rise."""
    congestion, clock = _congestion()
    for step in range(40):  # every 10 ms, the wait 10 ms shorter (half load: it drains as fast as it came)
        congestion.datagram_waited(0.6 - 0.01 * step)
        assert not congestion.shedding
        clock.advance(0.01)
    for step in range(40):  # twice the capacity offered: every 10 ms the wait grows 5 ms
        congestion.datagram_waited(0.15 + 0.005 * step)
        clock.advance(0.01)
        if congestion.shedding:
            break
    assert congestion.shedding and congestion.wait == pytest.approx(0.25, abs=0.006)  # 100 ms after 200 ms


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
    assert congestion.admitted == 1.0 and congestion.wait == pytest.approx(0.01)
    clock.advance(SETTLE)
    congestion.reactor_lagged(0.01)
    assert not congestion.shedding
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
    assert metrics.value(metrics.shed, method, "wait") == 1
    assert metrics.value(metrics.blocked, "wait") == 1


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


def test_a_bye_within_one_of_our_refusals_gets_481_and_is_not_forwarded() -> None:
    """sipp's BYE for a call it gave up on after our 503: forwarded, each waited 32 s in the proxy for nothing."""
    guard, metrics, out = _shedding_guard()
    guard.admit(parse_message(request("INVITE", call_id="given-up")), SOURCE, 500, lambda r, s: out.append(r))
    [refusal] = out
    bye = request("BYE", call_id="given-up", to_tag=refusal.to.tag, cseq=2)
    assert guard.admit(parse_message(bye), SOURCE, 300, lambda r, s: out.append(r)) is False
    assert out[1].status == 481 and metrics.value(metrics.blocked, "dialog") == 1
    assert guard.admit(parse_message(request("BYE", to_tag="callee-tag")), SOURCE, 300) is True


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
    assert metrics.value(metrics.shed, "INVITE", "stale") == 1
    assert metrics.value(metrics.shed, "response", "stale") == 1
    assert metrics.value(metrics.shed, "OTHER", "stale") == 1


def test_a_retransmission_of_a_refused_datagram_gets_the_same_503_bytes_unparsed_for_32_s() -> None:
    guard, metrics, _ = _shedding_guard()
    sent: list[Response] = []
    resent: list[object] = []
    guard.reply = lambda response, source: sent.append(response) or ("as sent", response, source)
    guard.resend = resent.append
    invite = request("INVITE", call_id="refused")
    assert guard.datagram_waited(invite, 0.45) is True
    guard.message_received(parse_message(invite), SOURCE, invite)
    [refusal] = sent
    assert refusal.status == 503
    assert guard.datagram_waited(invite, 0.46) is False  # the same bytes again: answered, not parsed
    assert resent == [("as sent", refusal, SOURCE)] and len(sent) == 1  # what reply returned, sent again
    assert metrics.value(metrics.shed, "INVITE", "retransmission") == 1
    assert guard.datagram_waited(request("INVITE", call_id="other"), 0.45) is True
    over = guard.congestion
    assert over is not None
    for _ in range(int(SETTLE / 0.5) + 6):  # the queue empty: the share back to all, and settled
        over.clock.advance(0.5)
        over.datagram_waited(0.01)
    assert not over.shedding
    assert guard.datagram_waited(invite, 0.1) is False  # over, but its sender's transaction is not: same answer
    assert len(resent) == 2
    assert guard.datagram_waited(invite, 0.1) is False  # a third copy: it is not reading them; dropped
    assert len(resent) == 2 and metrics.value(metrics.shed, "INVITE", "retransmission") == 3
    over.clock.advance(32)  # Timer B/F: that client transaction has given up; the bytes are a new chance
    assert guard.datagram_waited(invite, 0.1) is True


def test_a_reply_that_cannot_be_resent_is_not_remembered() -> None:
    guard, _, out = _shedding_guard()
    guard.reply = lambda response, source: out.append(response)  # returns None: nothing to send again
    guard.resend = lambda sent: pytest.fail("nothing to resend")
    invite = request("INVITE", call_id="once")
    guard.datagram_waited(invite, 0.45)
    guard.message_received(parse_message(invite), SOURCE, invite)
    assert len(out) == 1
    assert guard.datagram_waited(invite, 0.45) is True  # parsed again, decided again


def test_only_udp_datagrams_are_remembered() -> None:
    guard, _, _ = _shedding_guard()
    sent: list[Response] = []
    guard.reply = lambda response, source: sent.append(response) or response
    guard.resend = lambda again: sent.append(again)  # type: ignore[arg-type]
    invite = request("INVITE")
    guard.datagram_waited(invite, 0.45)
    guard.message_received(parse_message(invite), Source("TCP", "192.0.2.66", 5060), invite)
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
