"""The Recent calls page, ``/api/calls``, ``/api/ladder`` and ``/api/call-events``, in process over a real ring."""

from __future__ import annotations

import json
from typing import Any

import treq

from sipproxy.calls import BranchRecord, CallRecord
from sipproxy.calls.ring import CapturedMessage, RecentCalls
from sipproxy.web.calls import masked

try:
    from tests.web_helpers import BASE, START, Web, basic, result
except ImportError:  # pragma: no cover
    from web_helpers import BASE, START, Web, basic, result  # type: ignore[no-redef]

HOSTILE = 'sip:"<script>alert(1)</script>"@evil.example.test'
INVITE = (
    b"INVITE sip:bob@example.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1\r\n"
    b'From: "<img src=x onerror=alert(1)>" <sip:alice@example.test>;tag=a\r\n'
    b"Call-ID: c1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b'Proxy-Authorization: Digest username="alice", response="6629fae49393a05397450978507c4ef1"\r\n'
    b"Content-Length: 0\r\n\r\n"
)


def record(call_id: str = "c1", **fields: Any) -> CallRecord:
    values: dict[str, Any] = {
        "method": "INVITE",
        "call_id": call_id,
        "caller": "sip:alice@example.test",
        "callee": "sip:bob@example.test",
        "source": "UDP 192.0.2.7:5060",
        "started": START,
        "finished": START + 2.1,
        "status": 200,
        "reason": "OK",
        "branches": (
            BranchRecord("sip:bob@192.0.2.20:5062", "sip:bob@example.test", "UDP", "192.0.2.20", 5062, 200, "OK"),
            BranchRecord("sip:bob@192.0.2.21:5060", "sip:bob@example.test", "UDP", "192.0.2.21", 5060, cancelled=True),
        ),
        "answered_by": 0,
    }
    values.update(fields)
    return CallRecord(**values)


def web_with_calls(**options: Any) -> tuple[Web, RecentCalls]:
    ring = RecentCalls(max_calls=10, max_bytes=1 << 20)
    return Web(calls=ring, **options), ring


def captured(ring: RecentCalls, call_id: str = "c1") -> None:
    entry = ring.start(call_id, START)
    response = b"SIP/2.0 180 Ringing\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n"
    for at, incoming, host, port, data in [
        (START, True, "192.0.2.7", 5060, INVITE),
        (START + 0.01, False, "192.0.2.20", 5062, INVITE),
        (START + 0.02, False, "192.0.2.21", 5060, INVITE),
        (START + 0.5, True, "192.0.2.20", 5062, response),
        (START + 0.51, False, "192.0.2.7", 5060, response),
        (START + 1.0, True, "192.0.2.7", 5060, INVITE),
    ]:
        ring.add(entry, CapturedMessage(at, incoming, "UDP", host, port, data))


def test_api_calls_lists_who_when_outcome_setup_and_branches() -> None:
    web, ring = web_with_calls()
    ring(record("c1"))
    ring(record("c2", status=486, reason="Busy Here", why="busy", branches=(), answered_by=None))
    data = web.get_json("/api/calls")
    assert data["total"] == 2 and data["enabled"] is True and data["max_calls"] == 10
    newest, oldest = data["calls"]
    assert newest["call_id"] == "c2" and newest["status"] == 486 and newest["why"] == "busy"
    assert oldest["caller"] == "sip:alice@example.test" and oldest["callee"] == "sip:bob@example.test"
    assert oldest["started_at"] == "2024-05-01T12:34:56Z" and oldest["setup"] == 2.1
    assert [b["outcome"] for b in oldest["branches"]] == ["answered", "cancelled"]
    assert oldest["line"].endswith("answered by sip:bob@192.0.2.20:5062 (UDP)")


def test_api_calls_filters_by_aor_and_call_id() -> None:
    web, ring = web_with_calls()
    ring(record("c1"))
    ring(record("c2", caller="sip:carol@example.test", callee="sip:dave@example.test", branches=(), answered_by=None))
    assert [c["call_id"] for c in web.get_json("/api/calls?aor=sip:bob@example.test")["calls"]] == ["c1"]
    assert [c["call_id"] for c in web.get_json("/api/calls?aor=sip:carol@example.test")["calls"]] == ["c2"]
    assert [c["call_id"] for c in web.get_json("/api/calls?call_id=c2")["calls"]] == ["c2"]


def test_the_ladder_has_a_column_per_party_and_marks_retransmissions() -> None:
    web, ring = web_with_calls()
    captured(ring)
    ring(record("c1"))
    ladder = web.get_json("/api/ladder?call_id=c1")["ladder"]
    assert [(p["role"], p["name"], p["address"]) for p in ladder["parties"]] == [
        ("caller", "sip:alice@example.test", "UDP 192.0.2.7:5060"),
        ("sipproxy", "", ""),
        ("branch 1", "sip:bob@192.0.2.20:5062", "UDP 192.0.2.20:5062"),
        ("branch 2", "sip:bob@192.0.2.21:5060", "UDP 192.0.2.21:5060"),
    ]
    arrows = [(m["from"], m["to"], m["label"], m["time"], m["retransmission"]) for m in ladder["messages"]]
    assert arrows == [
        (0, 1, "INVITE", 0.0, False),
        (1, 2, "INVITE", 0.01, False),
        (1, 3, "INVITE", 0.02, False),
        (2, 1, "180 Ringing (INVITE)", 0.5, False),
        (1, 0, "180 Ringing (INVITE)", 0.51, False),
        (0, 1, "INVITE", 1.0, True),
    ]


def test_message_texts_hide_credentials() -> None:
    web, ring = web_with_calls()
    captured(ring)
    ring(record("c1"))
    text = web.get_json("/api/ladder?call_id=c1")["ladder"]["messages"][0]["text"]
    assert "6629fae49393a05397450978507c4ef1" not in text and 'username="alice"' not in text
    assert "Proxy-Authorization: Digest (credentials hidden)\r\n" in text
    assert masked("authorization:Basic YWRtaW46eA==\r\nX: y") == "authorization:Basic (credentials hidden)\r\nX: y"


def test_an_unknown_call_is_404() -> None:
    web, ring = web_with_calls()
    response, body = web.request("GET", "/api/ladder?call_id=nope")
    assert response.code == 404 and json.loads(body) == {"error": "no recent call with Call-ID nope"}


def test_the_page_escapes_what_phones_sent() -> None:
    web, ring = web_with_calls()
    ring(record('c1"><script>x()</script>', caller=HOSTILE, why="<b>why</b>", reason="OK\x07"))
    response, body = web.request("GET", "/calls")
    assert response.code == 200
    page = body.decode()
    assert "<script>alert" not in page and "<script>x()" not in page and "<b>why" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;why&lt;/b&gt;" in page
    assert response.headers.getRawHeaders("content-security-policy")[0].startswith(
        "default-src 'none'; script-src 'self'"
    )


def test_the_pages_script_and_style_are_served() -> None:
    web, ring = web_with_calls()
    for name, kind in (("calls.js", "text/javascript"), ("calls.css", "text/css")):
        response, body = web.request("GET", f"/static/{name}")
        assert response.code == 200 and response.headers.getRawHeaders("content-type")[0].startswith(kind)
    response, body = web.request("GET", "/static/calls.js")
    assert b"innerHTML" not in body  # message texts go in with textContent only


def test_a_public_page_without_a_password_shows_no_calls() -> None:
    web, ring = web_with_calls(public=True)
    ring(record("c1"))
    for path in ("/calls", "/api/calls", "/api/ladder?call_id=c1", "/api/call-events"):
        response, body = web.request("GET", path)
        assert response.code == 403, path
        assert b"public and has no password" in body


def test_a_public_page_with_the_password_shows_them() -> None:
    web, ring = web_with_calls(public=True, password="s3cret")
    ring(record("c1"))
    response, body = web.request("GET", "/api/calls", headers=basic("admin", "s3cret"))
    assert response.code == 200 and json.loads(body)["total"] == 1
    response, body = web.request("GET", "/api/calls")
    assert response.code == 401


def test_recent_calls_off() -> None:
    web = Web()
    assert web.get_json("/api/calls") == {"calls": [], "total": 0, "enabled": False}
    response, body = web.request("GET", "/calls")
    assert response.code == 200 and b"The recent calls are off (--recent-calls 0)." in body


def test_call_events_stream_one_event_per_finished_call() -> None:
    web, ring = web_with_calls()
    chunks: list[bytes] = []
    response = result(web.stub.get(BASE + "/api/call-events"))
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    treq.collect(response, chunks.append)
    web.stub.flush()
    ring(record("c1"))
    ring(record("c2"))
    web.stub.flush()
    assert b"event: call" not in b"".join(chunks)  # written at the end of the reactor turn
    web.clock.advance(0)
    web.stub.flush()
    events = [m for m in b"".join(chunks).decode().split("\n\n") if m.startswith("event: call")]
    assert [json.loads(m.split("data: ", 1)[1])["call_id"] for m in events] == ["c1", "c2"]


def test_call_event_streams_are_bounded() -> None:
    web, ring = web_with_calls(max_streams=1)
    first = result(web.stub.get(BASE + "/api/call-events"))
    treq.collect(first, lambda chunk: None)
    response, body = web.request("GET", "/api/call-events")
    assert response.code == 503 and response.headers.getRawHeaders("retry-after") == ["10"]


def explain(uri: str, from_: str, method: str) -> dict[str, Any]:
    return {"request": {"uri": uri, "from": from_, "method": method}, "steps": [], "targets": [], "result": "r"}


def test_api_route_hands_the_query_to_the_proxys_explain() -> None:
    web = Web(explain=explain)
    answer = web.get_json("/api/route?uri=sip:bob@example.test&from=sip:alice@example.test&method=MESSAGE")
    assert answer["request"] == {"uri": "sip:bob@example.test", "from": "sip:alice@example.test", "method": "MESSAGE"}
    assert web.get_json("/api/route?uri=sip:bob@example.test")["request"]["method"] == "INVITE"
    response, body = web.request("GET", "/api/route")
    assert response.code == 400 and b"give the Request-URI" in body


def test_api_route_without_a_proxy_or_for_a_public_request_without_password() -> None:
    response, _ = Web().request("GET", "/api/route?uri=sip:bob@example.test")
    assert response.code == 404
    response, _ = Web(explain=explain, public=True).request("GET", "/api/route?uri=sip:bob@example.test")
    assert response.code == 403


def test_the_page_has_the_routing_explain_form() -> None:
    web, ring = web_with_calls()
    response, body = web.request("GET", "/calls")
    assert b'<form id="route-form"' in body and b'id="route-uri"' in body


def test_a_listing_is_bounded_whatever_the_ring_holds() -> None:
    from sipproxy.web.calls import MAX_LISTED

    ring = RecentCalls(max_calls=MAX_LISTED + 10, max_bytes=0)
    web = Web(calls=ring)
    for n in range(MAX_LISTED + 10):
        ring(record(f"c{n}"))
    data = web.get_json("/api/calls")
    assert data["total"] == MAX_LISTED + 10 and len(data["calls"]) == MAX_LISTED
    assert data["calls"][0]["call_id"] == f"c{MAX_LISTED + 9}"
    assert [c["call_id"] for c in web.get_json("/api/calls?limit=2")["calls"]] == [
        f"c{MAX_LISTED + 9}",
        f"c{MAX_LISTED + 8}",
    ]
    response, body = web.request("GET", "/calls")
    assert body.count(b'<tr class="call"') == MAX_LISTED + 1  # and the row template
