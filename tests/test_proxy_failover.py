"""The grey-list (RFC 3263 §4.3, reSIProcate's black/grey-listing) and Retry-After, on a task.Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from sipproxy.message import make_response
from sipproxy.net import Target
from sipproxy.proxy.failover import MAX_ASIDE, GreyList, retry_after

try:
    from tests.proxy_helpers import make_request
except ImportError:  # pragma: no cover
    from proxy_helpers import make_request  # type: ignore[no-redef]

A, B, C = (Target("UDP", f"192.0.2.{n}", 5060) for n in (1, 2, 3))


def test_a_target_aside_goes_last_for_its_time_then_comes_back() -> None:
    clock = Clock()
    grey = GreyList(clock)
    grey.put_aside(A, 30)
    assert grey.order([A, B, C]) == [B, C, A]
    clock.advance(29.9)
    assert grey.is_aside(A)
    clock.advance(0.1)
    assert grey.order([A, B, C]) == [A, B, C]
    assert len(grey) == 0  # nothing kept past its time


def test_every_target_aside_are_still_all_there_in_their_order() -> None:
    grey = GreyList(Clock())
    for target in (A, B, C):
        grey.put_aside(target, 60)
    assert grey.order([A, B, C]) == [A, B, C]


def test_it_is_per_target_not_per_host() -> None:
    grey = GreyList(Clock())
    grey.put_aside(A, 60)
    assert not grey.is_aside(A._replace(port=5070))
    assert not grey.is_aside(A._replace(transport="TCP"))


def test_a_huge_retry_after_is_capped_and_a_shorter_one_never_shortens() -> None:
    clock = Clock()
    grey = GreyList(clock)
    grey.put_aside(A, 10**9)
    clock.advance(MAX_ASIDE)
    assert not grey.is_aside(A)
    grey.put_aside(B, 60)
    grey.put_aside(B, 5)
    clock.advance(30)
    assert grey.is_aside(B)


def test_bounded() -> None:
    clock = Clock()
    grey = GreyList(clock, max_entries=2)
    grey.put_aside(A, 10)
    grey.put_aside(B, 10)
    grey.put_aside(C, 10)  # full of live entries: not kept
    assert len(grey) == 2 and not grey.is_aside(C)
    clock.advance(10)
    grey.put_aside(C, 10)  # the stale ones make room
    assert grey.is_aside(C) and len(grey) == 1


def test_retry_after_reads_seconds_with_comment_and_parameters() -> None:
    def with_header(value: str | None) -> int | None:
        response = make_response(make_request(), 503)
        if value is not None:
            response.add("Retry-After", value)
        return retry_after(response)

    assert with_header("30") == 30
    assert with_header("120 (I'm in a meeting);duration=60") == 120
    assert with_header(None) is None
    assert with_header("soon") is None
