"""LingerQueues: the timers that hold finished transactions, one clock call per duration."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipproxy.transaction.timers import LingerQueues


def run_all(clock: Clock) -> None:
    while clock.getDelayedCalls():
        clock.advance(min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds())


def test_each_timer_fires_at_its_own_deadline_with_one_clock_call_per_duration() -> None:
    clock = Clock()
    queues = LingerQueues(clock)
    fired: list[tuple[float, str]] = []
    for n in range(1000):
        queues.call_later(32.0, lambda name: fired.append((clock.seconds(), name)), f"j{n}")
        queues.call_later(5.0, lambda name: fired.append((clock.seconds(), name)), f"k{n}")
        clock.advance(0.25)
    assert len(clock.getDelayedCalls()) == 2
    run_all(clock)
    assert sorted(fired) == sorted(
        [(n * 0.25 + 32.0, f"j{n}") for n in range(1000)] + [(n * 0.25 + 5.0, f"k{n}") for n in range(1000)]
    )
    assert fired == sorted(fired, key=lambda f: f[0])


def test_cancelled_timers_never_fire_and_leave_no_clock_call() -> None:
    clock = Clock()
    queues = LingerQueues(clock)
    fired: list[str] = []
    first = queues.call_later(32.0, fired.append, "first")
    clock.advance(1)
    second = queues.call_later(32.0, fired.append, "second")
    clock.advance(1)
    queues.call_later(32.0, fired.append, "third")
    first.cancel()
    assert not first.active() and second.active()
    assert [c.getTime() for c in clock.getDelayedCalls()] == [33.0]  # re-armed for the next one
    second.cancel()
    clock.advance(40)
    assert fired == ["third"]
    assert clock.getDelayedCalls() == []

    last = queues.call_later(32.0, fired.append, "last")
    last.cancel()
    assert clock.getDelayedCalls() == []


def test_a_failing_callback_does_not_stop_the_others_due_with_it() -> None:
    clock = Clock()
    queues = LingerQueues(clock)
    fired: list[str] = []

    def boom(_: object) -> None:
        raise RuntimeError("boom")

    queues.call_later(5.0, boom, None)
    queues.call_later(5.0, fired.append, "after")
    with pytest.raises(RuntimeError, match="boom"):
        clock.advance(5)
    assert fired == ["after"]
    assert clock.getDelayedCalls() == []


def test_a_timer_started_from_a_firing_one_does_not_delay_those_already_queued() -> None:
    clock = Clock()
    queues = LingerQueues(clock)
    fired: list[tuple[float, str]] = []

    def first(_: object) -> None:
        fired.append((clock.seconds(), "first"))
        queues.call_later(5.0, lambda name: fired.append((clock.seconds(), name)), "started by first")

    queues.call_later(5.0, first, None)
    clock.advance(1)
    queues.call_later(5.0, lambda name: fired.append((clock.seconds(), name)), "second")
    run_all(clock)
    assert fired == [(5.0, "first"), (6.0, "second"), (10.0, "started by first")]
