"""sipproxy.net: the addresses and the clock every layer shares."""

from __future__ import annotations

from twisted.internet.task import Clock as TwistedClock

from sipproxy.net import Clock, Source, Target, is_reliable


def test_stream_transports_are_reliable_and_udp_is_not() -> None:
    for name in ("TCP", "tls", "WS", "wss", "SCTP"):
        assert is_reliable(name), name
    assert not is_reliable("UDP")
    assert not is_reliable("carrier-pigeon")


def test_a_source_without_connection_is_a_datagram_source() -> None:
    source = Source("UDP", "192.0.2.7", 5062)
    assert source.connection is None
    assert source[:3] == ("UDP", "192.0.2.7", 5062)


def test_targets_compare_by_value_for_connection_reuse() -> None:
    assert Target("TCP", "192.0.2.7", 5060) == Target("TCP", "192.0.2.7", 5060)
    assert Target("TCP", "192.0.2.7", 5060) != Target("UDP", "192.0.2.7", 5060)


def test_twisted_task_clock_is_a_clock() -> None:
    clock: Clock = TwistedClock()
    fired: list[float] = []
    call = clock.callLater(2.0, lambda: fired.append(clock.seconds()))
    assert call.active()
    clock.advance(2.0)  # type: ignore[attr-defined]
    assert fired == [2.0]
