"""The call record's log line (:func:`sipproxy.calls.call_line`) and the call log that writes it."""

from __future__ import annotations

from twisted.logger import Logger, formatEvent

from sipproxy.calls import BranchRecord, CallRecord, call_line
from sipproxy.calls.log import CallLog


def record(**fields: object) -> CallRecord:
    values: dict[str, object] = {
        "method": "INVITE",
        "call_id": "c1",
        "caller": "sip:alice@example.test",
        "callee": "sip:bob@example.test",
        "source": "UDP 192.0.2.7:5060",
        "started": 100.0,
        "finished": 102.14,
        "status": 200,
        "reason": "OK",
    }
    values.update(fields)
    return CallRecord(**values)  # type: ignore[arg-type]


def test_an_answered_call() -> None:
    answered = BranchRecord("sip:bob@192.0.2.7:5062", "sip:bob@example.test", "UDP", "192.0.2.7", 5062, 200, "OK")
    other = BranchRecord("sip:bob@192.0.2.8:5060", transport="TCP", cancelled=True)
    line = call_line(record(branches=(other, answered), answered_by=1))
    assert line == (
        "Call sip:alice@example.test -> sip:bob@example.test: 200 after 2.1 s, 2 branches, "
        "answered by sip:bob@192.0.2.7:5062 (UDP)"
    )
    assert [b.outcome for b in (other, answered)] == ["cancelled", "answered"]


def test_a_failure_gives_its_status_reason_and_why() -> None:
    line = call_line(record(method="MESSAGE", status=480, reason="Temporarily Unavailable", why="no binding for x"))
    assert line.startswith("MESSAGE sip:alice@example.test -> sip:bob@example.test: 480 Temporarily Unavailable ")
    assert line.endswith(", no branches: no binding for x")


def test_the_aors_a_record_is_about() -> None:
    branch = BranchRecord("sip:bob@192.0.2.7", "sip:bob@example.test")
    assert record(branches=(branch,)).aors == {
        "sip:alice@example.test",
        "sip:bob@example.test",
        "sip:bob@192.0.2.7",
    }


def test_the_call_log_writes_one_info_line_with_fields() -> None:
    events: list[dict[str, object]] = []
    log = CallLog(Logger(namespace="sipproxy.calls", observer=events.append))
    log(record(status=486, reason="Busy Here", why="busy"))
    (event,) = events
    assert event["log_level"].name == "info"  # type: ignore[attr-defined]
    assert event["call_id"] == "c1" and event["status"] == 486
    assert formatEvent(event) == (
        "Call sip:alice@example.test -> sip:bob@example.test: 486 Busy Here after 2.1 s, no branches: busy"
    )


def test_the_proxys_own_challenge_is_a_debug_line() -> None:
    events: list[dict[str, object]] = []
    log = CallLog(Logger(namespace="sipproxy.calls", observer=events.append))
    log(record(status=407, reason="Proxy Authentication Required", why="credentials requested"))
    branch = BranchRecord("sip:bob@192.0.2.7", status=401, reason="Unauthorized")
    log(record(status=401, reason="Unauthorized", branches=(branch,)))  # the callee's own challenge: a call
    assert [e["log_level"].name for e in events] == ["debug", "info"]  # type: ignore[attr-defined]
