"""The admission guard in front of the message sink: block, rate, size, transactions, reactor lag."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from sipproxy.message import Request, Response, parse_message
from sipproxy.metrics import Metrics
from sipproxy.net import Source
from sipproxy.security import Guard, Security, source_key

try:
    from tests.messages import make_response_bytes
    from tests.security_fakes import (
        ALICE_ADDR,
        BOB_ADDR,
        DOMAINS,
        LOCAL,
        PROXY,
        SECRET,
        START,
        FakeServer,
        register,
        request,
        sent_to,
        settings,
    )
except ImportError:  # pragma: no cover
    from messages import make_response_bytes  # type: ignore[no-redef]
    from security_fakes import (  # type: ignore[no-redef]
        ALICE_ADDR,
        BOB_ADDR,
        DOMAINS,
        LOCAL,
        PROXY,
        SECRET,
        START,
        FakeServer,
        register,
        request,
        sent_to,
        settings,
    )


def _guard(**kw: Any) -> tuple[Guard, Clock, Metrics, list[tuple[Response, Source]]]:
    clock = Clock()
    clock.advance(START)
    metrics = Metrics()
    holds = kw.pop("holds", lambda key: False)
    in_flight = kw.pop("in_flight", lambda: 0)
    guard = Guard(settings(**kw), clock, metrics, holds_binding=holds, in_flight=in_flight)
    return guard, clock, metrics, []


def _flood(guard: Guard, source: Source, count: int, out: list[tuple[Response, Source]]) -> int:
    admitted = 0
    for n in range(count):
        message = parse_message(request("MESSAGE", call_id=f"m{n}", addr=(source.host, source.port)))
        admitted += guard.admit(message, source, 300, lambda r, s: out.append((r, s)))
    return admitted


def test_a_flood_from_one_address_gets_503_then_silence_another_address_is_unaffected() -> None:
    guard, clock, metrics, out = _guard(rate=10, burst=20, reply_rate=1, reply_burst=3)
    flooder, other = Source("UDP", "192.0.2.66", 5060), Source("UDP", "192.0.2.67", 5060)
    with capturedLogs() as events:
        assert _flood(guard, flooder, 100, out) == 20
    assert [r.status for r, _ in out] == [503, 503, 503]
    assert all(r.get("retry-after") == "2" for r, _ in out)
    assert all(s == flooder for _, s in out)
    assert metrics.value(metrics.blocked, "rate") == 80
    [logged] = [e for e in events if "Rate limit" in e["log_format"]]
    assert logged["key"] == "192.0.2.66"
    assert _flood(guard, other, 20, out) == 20
    clock.advance(1)
    assert _flood(guard, flooder, 100, out) == 10


def test_an_address_holding_an_authenticated_binding_gets_a_higher_limit() -> None:
    guard, _, _, out = _guard(rate=10, burst=20, bound_factor=10, holds=lambda key: key == "203.0.113.7")
    assert _flood(guard, Source("UDP", "203.0.113.7", 5060), 300, out) == 200
    assert _flood(guard, Source("UDP", "203.0.113.8", 5060), 300, out) == 20


def test_holding_a_binding_is_known_from_the_location_store() -> None:
    server = FakeServer(security_settings=settings(rate=1, burst=4, bound_factor=10))
    office = ("203.0.113.7", 5060)
    assert server.security.guard.holds_binding("203.0.113.7") is False
    assert server.register("alice", addr=office).status == 200  # 2 requests
    assert server.security.guard.holds_binding("203.0.113.7") is True
    guard = server.security.guard
    server.clock.advance(4)  # the bucket refills at ten times the rate, up to ten times the burst
    assert _flood(guard, Source("UDP", *office), 100, []) == 40
    server.clock.advance(3601)  # the binding expired
    assert guard.holds_binding("203.0.113.7") is False


def test_unparseable_messages_count_against_the_rate_and_are_dropped_when_over() -> None:
    guard, _, _, out = _guard(rate=1, burst=2)
    source = Source("UDP", "192.0.2.66", 5060)
    assert [guard.admit(None, source, 10, lambda r, s: out.append((r, s))) for _ in range(4)] == [
        True,
        True,
        False,
        False,
    ]
    assert out == []


def test_oversized_request_gets_513_and_oversized_response_is_dropped() -> None:
    guard, _, metrics, out = _guard(max_message_size=1000)
    source = Source("TCP", "192.0.2.66", 40000)
    message = parse_message(request("MESSAGE"))
    assert guard.admit(message, source, 1001, lambda r, s: out.append((r, s))) is False
    assert guard.admit(message, source, 1000, lambda r, s: out.append((r, s))) is True
    [(response, _)] = out
    assert response.status == 513 and response.reason == "Message Too Large"
    assert metrics.value(metrics.blocked, "size") == 1
    ok = parse_message(
        make_response_bytes(
            method="MESSAGE",
            via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
            from_="<sip:a@b>;tag=1",
            to="<sip:a@b>",
            call_id="x",
        )
    )
    assert guard.admit(ok, source, 5000, lambda r, s: out.append((r, s))) is False
    assert len(out) == 1


def test_too_many_transactions_in_flight_gets_503_but_ack_and_cancel_pass() -> None:
    count = [5]
    guard, _, metrics, out = _guard(max_transactions=5, in_flight=lambda: count[0])
    source = Source("UDP", "192.0.2.66", 5060)
    assert guard.admit(parse_message(request("INVITE")), source, 100, lambda r, s: out.append((r, s))) is False
    assert guard.admit(parse_message(request("CANCEL")), source, 100, lambda r, s: out.append((r, s))) is True
    assert guard.admit(parse_message(request("ACK", to_tag="t")), source, 100, lambda r, s: out.append((r, s))) is True
    [(response, _)] = out
    assert response.status == 503 and response.get("retry-after") == "5"
    assert metrics.value(metrics.blocked, "transactions") == 1
    count[0] = 4
    assert guard.admit(parse_message(request("INVITE")), source, 100, lambda r, s: out.append((r, s))) is True


def test_a_lagging_reactor_sheds_new_requests_but_not_dialogs_retransmissions_or_acks() -> None:
    lag: list[float | None] = [0.3]
    guard, _, metrics, out = _guard()
    guard.lagging = lambda: lag[0]
    dialogs = Security(None, settings(), DOMAINS, LOCAL, Clock(), Metrics(), secret=SECRET).dialogs
    guard.in_dialog = dialogs.follows_our_record_route
    route = f"Route: <sip:{PROXY}:5060;lr;dt={dialogs.token('call-1')}>"
    retransmitted = parse_message(request("INVITE", call_id="old"))
    guard.is_retransmission = lambda r: r.call_id == "old"
    source = Source("UDP", "192.0.2.66", 5060)

    def admit(data: bytes) -> bool:
        return guard.admit(parse_message(data), source, 100, lambda r, s: out.append((r, s)))

    with capturedLogs() as events:
        assert admit(request("INVITE")) is False
        assert admit(request("REGISTER")) is False
    assert admit(request("BYE", to_tag="t", headers=(route,))) is True  # ends a call that is up
    assert admit(request("BYE", to_tag="t")) is False  # a To tag alone is no dialog of ours
    assert admit(request("ACK", to_tag="t")) is True
    assert admit(request("CANCEL")) is True
    assert guard.admit(retransmitted, source, 100, lambda r, s: out.append((r, s))) is True
    assert [(r.status, r.get("retry-after")) for r, _ in out] == [(503, "5")] * 3
    assert metrics.value(metrics.blocked, "lag") == 3
    [logged] = [e for e in events if "behind" in e["log_format"]]
    assert logged["lag"] == 300
    lag[0] = None
    assert admit(request("INVITE")) is True


def test_reactor_lag_needs_three_late_runs_in_a_row_and_ends_with_one_on_time() -> None:
    from sipproxy.security import ReactorLag

    clock = Clock()
    lag = ReactorLag(clock, threshold=0.1)
    lag.start()
    for _ in range(10):
        clock.advance(0.05)  # on time
    assert lag() is None
    clock.advance(0.8)  # one long pause (a full garbage collection)
    clock.advance(0.05)
    assert lag() is None
    for _ in range(3):  # every turn late: the reactor cannot keep up
        clock.advance(0.35)
    assert lag() == pytest.approx(0.3)
    clock.advance(0.05)
    assert lag() is None
    lag.stop()
    assert clock.getDelayedCalls() == []


def test_the_guard_never_raises() -> None:
    def broken(key: str, now: float) -> bool:
        raise RuntimeError("boom")

    guard = Guard(settings(), Clock(), Metrics(), is_blocked=broken)
    with capturedLogs() as events:
        assert guard.admit(parse_message(request()), Source("UDP", "192.0.2.1", 5060), 10, lambda r, s: None)
    assert any("log_failure" in e for e in events)


def test_the_transport_consults_the_guard_before_any_transaction() -> None:
    server = FakeServer(security_settings=settings(rate=1, burst=3, reply_burst=2))
    statuses = []
    for n in range(8):
        options = request("OPTIONS", "sip:example.test", to="sip:example.test", call_id=f"o{n}")
        statuses += [r.status for r in server.responses(options)]
    assert statuses == [200, 200, 200, 503, 503]
    assert server.transactions.server_transaction_count() == 3
    assert server.metrics.value(server.metrics.blocked, "rate") == 5
    # garbage over the limit is dropped without the 400
    assert server.send(b"NONSENSE\r\n\r\n") == []


def test_oversized_request_through_the_transport_gets_513() -> None:
    server = FakeServer(security_settings=settings(max_message_size=600))
    big = request("MESSAGE", headers=("Subject: " + "x" * 600,))
    assert server.final(big).status == 513


def test_source_key_counts_ipv6_per_64() -> None:
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert source_key("2001:db8:1:2::7") == source_key("[2001:db8:1:2:ffff::1]") == "2001:db8:1:2::/64"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"


def test_finished_transactions_do_not_count_as_load() -> None:
    """Transactions that only absorb retransmissions (Timer J) are no reason for 503."""
    server = FakeServer(None, settings(max_transactions=3))
    statuses = [server.final(register(f"user{i}", call_id=f"load-{i}")).status for i in range(10)]
    assert statuses == [200] * 10
    assert server.transactions.server_transaction_count() == 10


def test_overload_refuses_new_requests_but_not_retransmissions() -> None:
    server = FakeServer(None, settings(max_transactions=1))
    assert server.register("bob", addr=BOB_ADDR).status == 200
    invite = request(call_id="busy-1", branch="z9hG4bKbusy1")
    assert [m.method for m in sent_to(server, server.send(invite), BOB_ADDR)] == ["INVITE"]
    retransmitted = server.send(invite)  # bob has not answered: the request is still in flight
    assert not any(isinstance(m, Response) and m.status == 503 for m, _ in retransmitted)
    assert server.final(request(call_id="busy-2", branch="z9hG4bKbusy2")).status == 503


# -- the MessageSink shape -------------------------------------------------------------------


class _Sink:
    def __init__(self, parse_errors_answered: bool = True) -> None:
        self.messages: list[Request | Response] = []
        self.errors: list[object] = []
        self.answer = parse_errors_answered

    def message_received(self, message: Request | Response, source: Source, data: bytes) -> None:
        self.messages.append(message)

    def unparseable(self, error: object, source: Source, size: int) -> bool:
        self.errors.append(error)
        return self.answer


def test_the_guard_passes_what_it_admits_to_the_next_sink_and_answers_the_rest_itself() -> None:
    from sipproxy.message import ParseError

    clock = Clock()
    clock.advance(START)
    sink, replies = _Sink(), []
    guard = Guard(settings(rate=1, burst=2), clock, Metrics(), sink=sink, reply=lambda r, s: replies.append((r, s)))
    source = Source("UDP", "192.0.2.66", 5060)
    for n in range(3):
        data = request("MESSAGE", call_id=f"s{n}")
        guard.message_received(parse_message(data), source, data)
    assert [m.call_id for m in sink.messages] == ["s0", "s1"]  # type: ignore[union-attr]
    assert [(r.status, s) for r, s in replies] == [(503, source)]
    error = ParseError(400, "Bad request line")
    assert guard.unparseable(error, source, 10) is False  # over the rate: dropped silently, not passed on
    assert sink.errors == []
    clock.advance(5)
    assert guard.unparseable(error, source, 10) is True and sink.errors == [error]  # the transport answers it
    sink.answer = False
    assert guard.unparseable(error, source, 10) is False  # what the next sink says


def test_security_builds_a_guard_in_front_of_a_sink_with_its_blocks() -> None:
    server = FakeServer()
    for n, user in enumerate(("alice", "bob", "carol")):  # a scanner at ALICE_ADDR
        server.register(user, password=str(n), cseq=2 * n + 1)
    sink, replies = _Sink(), []
    guard = server.security.admission_guard(sink, lambda r, s: replies.append(r))
    options = parse_message(request("OPTIONS", "sip:example.test", to="sip:example.test"))
    guard.message_received(options, Source("UDP", *ALICE_ADDR), b"x" * 100)
    guard.message_received(options, Source("UDP", *BOB_ADDR), b"x" * 100)
    assert len(sink.messages) == 1 and [r.status for r in replies] == [403]
