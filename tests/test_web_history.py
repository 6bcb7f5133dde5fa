"""The binding history on the page and in the API (issue 18): who removed what, escaped, under the removal rule."""

from __future__ import annotations

import json
import re

import pytest

from sipproxy.location.history import BindingHistory, HistoryEvent, MemoryHistory
from sipproxy.web.history import visible, what

try:
    from tests.web_helpers import ALICE, BOB, START, Web, basic, make_binding
except ImportError:  # pragma: no cover
    from web_helpers import ALICE, BOB, START, Web, basic, make_binding  # type: ignore[no-redef]

HOSTILE_UA = "<script>alert('ua')</script>\"'\x1b[31m\x00"
HOSTILE_CONTACT = "sip:<script>x</script>@192.0.2.7:5062;a=\"'"


def history_web(**options: object) -> tuple[Web, BindingHistory]:
    """A page over a real store, with a memory history subscribed to it, as ``service`` wires one."""
    web = Web(**options)  # type: ignore[arg-type]
    history = BindingHistory(MemoryHistory(web.clock), web.clock)
    web.store.subscribe(history.changed)
    web.page.history = history
    return web, history


def events_of(web: Web, aor: str = ALICE, **kw: object) -> tuple[int, dict[str, object]]:
    response, body = web.request("GET", "/api/history?aor=" + aor.replace(":", "%3A").replace("@", "%40"), **kw)
    return response.code, json.loads(body)


def test_a_removal_through_the_api_is_in_the_history_with_the_clients_address() -> None:
    web, _ = history_web()
    web.put(make_binding())
    response, _ = web.request("DELETE", "/api/bindings/" + ALICE)
    assert response.code == 200
    code, answer = events_of(web)
    assert code == 200
    removed, registered = answer["events"]  # type: ignore[misc]
    assert removed["kind"] == "removed" and removed["what"] == "removed through the page by 127.0.0.1"
    assert registered["what"] == "registered from UDP 192.0.2.7:5062"
    assert removed["at"] == "2024-05-01T12:34:56Z"


def test_a_public_page_with_a_password_names_the_admin() -> None:
    web, _ = history_web(password="s3cret", public=True)
    web.put(make_binding())
    response, _ = web.request("DELETE", "/api/bindings/" + ALICE, headers=basic("admin", "s3cret"))
    assert response.code == 200
    code, answer = events_of(web, headers=basic("admin", "s3cret"))
    assert code == 200
    assert answer["events"][0]["what"].startswith("removed through the page by admin from ")  # type: ignore[index]


def test_the_history_follows_the_removal_rule() -> None:
    web, _ = history_web(public=True)  # public, no password: read-only, and no history
    web.put(make_binding())
    code, answer = events_of(web)
    assert code == 403 and "binding history" in str(answer["error"])
    response, _ = web.request("GET", "/history?aor=" + ALICE)
    assert response.code == 403
    web, _ = history_web(password="s3cret", public=True)
    assert events_of(web)[0] == 401


def test_the_page_shows_what_a_phone_sent_as_text_with_control_characters_visible() -> None:
    web, history = history_web()
    web.put(make_binding(contact=HOSTILE_CONTACT, user_agent=HOSTILE_UA))
    history.refused(ALICE, _register_with(HOSTILE_UA), _source(), 423, "Interval Too Brief (Min-Expires 60)")
    response, body = web.request("GET", "/history?aor=" + ALICE)
    assert response.code == 200
    page = body.decode("utf-8")
    assert "<script>" not in page and "\x1b" not in page and "\x00" not in page
    assert "&lt;script&gt;alert(&#39;ua&#39;)&lt;/script&gt;&#34;&#39;\u241b[31m\u2400" in page
    assert "REGISTER rejected: 423 Interval Too Brief (Min-Expires 60)" in page
    assert "form-action 'self'" in response.headers.getRawHeaders("content-security-policy")[0]
    code, answer = events_of(web)
    assert answer["events"][1]["user_agent"] == HOSTILE_UA  # type: ignore[index]  # JSON is JSON: escaped by json


def test_an_aor_that_no_longer_has_bindings_still_has_its_history() -> None:
    web, _ = history_web()
    web.put(make_binding(ttl=60))
    web.clock.advance(61)
    response, body = web.request("GET", "/history?aor=" + ALICE)
    page = body.decode("utf-8")
    assert re.search(r'data-kind="expired"', page)
    assert "expired: not refreshed before it expired" in page


def test_the_bindings_page_links_each_aor_to_its_history() -> None:
    web, _ = history_web()
    web.put(make_binding(), make_binding(BOB, "sip:bob@192.0.2.9"))
    _, body = web.request("GET", "/")
    page = body.decode("utf-8")
    assert 'href="history?aor=sip%3Aalice%40example.test"' in page
    assert 'href="history?aor=sip%3Abob%40example.test"' in page


def test_without_a_history_the_api_says_it_is_off() -> None:
    web = Web()
    response, body = web.request("GET", "/api/history?aor=" + ALICE)
    assert response.code == 404 and "--history-events 0" in json.loads(body)["error"]
    response, body = web.request("GET", "/history")
    assert response.code == 200


def test_api_needs_an_aor() -> None:
    web, _ = history_web()
    response, _ = web.request("GET", "/api/history")
    assert response.code == 400


@pytest.mark.parametrize(
    ("event", "says"),
    [
        (HistoryEvent(START, ALICE, "refreshed", count=12), "refreshed 12 times"),
        (HistoryEvent(START, ALICE, "unregistered", detail="by the phone"), "unregistered by the phone"),
        (HistoryEvent(START, ALICE, "flow-lost", detail="the connection closed"), "flow lost: the connection closed"),
        (
            HistoryEvent(START, ALICE, "rejected", source="UDP 1.2.3.4:5", detail="401 x"),
            "REGISTER rejected: 401 x (from UDP 1.2.3.4:5)",
        ),
    ],
)
def test_each_event_says_what_happened(event: HistoryEvent, says: str) -> None:
    assert what(event) == says


def test_visible_shows_control_characters_as_pictures() -> None:
    assert visible("a\x00b\x1b\x7f") == "a\u2400b\u241b\u2421"


def _register_with(user_agent: str):  # type: ignore[no-untyped-def]
    from sipproxy.message import parse_message

    data = (
        "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1\r\n"
        f"From: <{ALICE}>;tag=1\r\nTo: <{ALICE}>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:alice@192.0.2.7:5062>;expires=1\r\nUser-Agent: {user_agent}\r\n"
        'Authorization: Digest username="alice", response="secret"\r\nContent-Length: 0\r\n\r\n'
    ).encode("utf-8", "surrogateescape")
    return parse_message(data)


def _source():  # type: ignore[no-untyped-def]
    from sipproxy.net import Source

    return Source("UDP", "192.0.2.7", 5062)
