"""Tests for sipproxy.web: the bindings page, JSON API, event stream, health and metrics, in process (no sockets)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jinja2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from sipproxy.location import LocationStore
from sipproxy.metrics import Metrics
from sipproxy.web import is_loopback_description, make_environment, make_web_resource
from sipproxy.web.render import (
    EMPTY_BINDING,
    SOURCE_TEMPLATES,
    binding_json,
    format_duration,
    format_utc,
    iso_utc,
    make_loader,
    readable,
)
from sipproxy.web.streams import PING_INTERVAL, sse_message

try:
    from tests.web_helpers import ALICE, BASE, BOB, JSON_KEYS, REPO, START, Stream, Web, basic, make_binding, result
except ImportError:  # pragma: no cover
    from web_helpers import (  # type: ignore[no-redef]
        ALICE,
        BASE,
        BOB,
        JSON_KEYS,
        REPO,
        START,
        Stream,
        Web,
        basic,
        make_binding,
        result,
    )  # fmt: skip


def template_source(name: str) -> str:
    """A file of the template directory the code under test uses (source tree or installed package)."""
    env = make_environment()
    assert env.loader is not None
    return env.loader.get_source(env, name)[0]


def outside_templates(page: str) -> str:
    """The page without its ``<template>`` elements (the script's blank rows)."""
    return re.sub(r"<template\b.*?</template>", "", page, flags=re.DOTALL)


@pytest.fixture
def web() -> Web:
    return Web()


# -- rendering helpers ------------------------------------------------------


def test_formatting_helpers() -> None:
    assert iso_utc(START) == "2024-05-01T12:34:56Z"
    assert format_utc("2024-05-01T12:34:56Z") == "2024-05-01 12:34:56 UTC"
    assert [format_duration(s) for s in (0, 9, 60, 307, 3600, 7209)] == [
        "0 s", "9 s", "1 min 00 s", "5 min 07 s", "1 h 00 min 00 s", "2 h 00 min 09 s",
    ]  # fmt: skip


@given(st.floats(min_value=0, max_value=4e9) | st.integers(0, 4 * 10**9).map(lambda n: n + 0.9999995))
def test_iso_utc_is_what_datetime_prints_whatever_the_fraction(when: float) -> None:
    from datetime import UTC, datetime

    assert iso_utc(when) == datetime.fromtimestamp(when, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_binding_json_has_the_api_fields_and_matches_the_row_template() -> None:
    shown = binding_json(make_binding(path=("<sip:p1.example.test;lr>",), instance="<urn:uuid:1>", reg_id=1), START + 1)
    assert shown.keys() >= JSON_KEYS
    assert shown.keys() == EMPTY_BINDING.keys()
    assert shown["expires_in"] == 3599
    assert shown["source"] == "UDP 192.0.2.7:5062"
    assert shown["path"] == ["<sip:p1.example.test;lr>"]
    assert shown["registered_at"] == "2024-05-01T12:34:56Z"
    json.dumps(shown)


def test_environment_autoescapes_and_finds_the_templates() -> None:
    env = make_environment()
    assert env.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"
    assert "bindings.html" in env.list_templates()
    assert {"bindings.js", "bindings.css"} <= set(env.list_templates())


def test_loader_finds_the_templates_of_the_sipproxy_being_tested(tmp_path: Path) -> None:
    """A checkout or editable install has no sipproxy.templates package and reads ``templates/``;
    an installed wheel has only the package. Without either, say so."""
    import sipproxy

    installed = (Path(sipproxy.__file__).parent / "templates").is_dir()
    loader = make_loader()
    assert isinstance(loader, jinja2.ChoiceLoader)
    kinds = [type(x) for x in loader.loaders]
    assert kinds == ([jinja2.PackageLoader] if installed else [jinja2.FileSystemLoader])
    if not installed:
        assert SOURCE_TEMPLATES == REPO / "templates"
        with pytest.raises(RuntimeError, match="no sipproxy templates"):
            make_loader(tmp_path / "missing")


def test_package_loader_is_used_when_sipproxy_templates_is_a_package(tmp_path: Path) -> None:
    """The wheel layout: templates inside the package, no source tree next to it."""
    import sipproxy

    templates = Path(make_environment().get_template("bindings.html").filename or "").parent
    package = tmp_path / "sipproxy"
    shutil.copytree(Path(sipproxy.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__", "templates"))
    shutil.copytree(templates, package / "templates", ignore=shutil.ignore_patterns("__pycache__"))
    script = textwrap.dedent(
        """
        import jinja2, sipproxy.web.render as render
        from pathlib import Path
        assert not render.SOURCE_TEMPLATES.is_dir(), render.SOURCE_TEMPLATES
        env = render.make_environment()
        assert isinstance(env.loader.loaders[0], jinja2.PackageLoader)
        assert len(env.loader.loaders) == 1
        print(env.get_template("bindings.html").filename)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(package / "templates" / "bindings.html")


# -- the page ---------------------------------------------------------------


def test_page_has_a_row_per_binding_grouped_by_aor(web: Web) -> None:
    web.put(
        make_binding(),
        make_binding(contact="sip:alice@198.51.100.4:5060;transport=tcp", q=0.5, transport="TCP"),
        make_binding(BOB, "sip:bob@192.0.2.9", path=("<sip:edge.example.test;lr>",), cseq=42),
    )
    response, body = web.request("GET", "/")
    page = body.decode()
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert "script-src 'self'" in response.headers.getRawHeaders("content-security-policy")[0]
    shown = outside_templates(page)
    assert shown.count('<tbody class="aor-group"') == 2
    assert shown.count('<tr class="binding"') == 3
    assert page.index(f'data-aor="{ALICE}"') < page.index(f'data-aor="{BOB}"')
    assert 'data-contact="sip:alice@198.51.100.4:5060;transport=tcp"' in page
    assert 'data-expires-in="3600"' in page and "1 h 00 min 00 s" in page
    assert '<td class="num" data-field="q">0.5</td>' in page
    assert '<td class="num" data-field="cseq">42</td>' in page
    assert "TCP 192.0.2.7:5062" in page
    assert "2024-05-01 12:34:56 UTC" in page
    assert "&lt;sip:edge.example.test;lr&gt;" in page
    assert '<strong id="aor-total">2</strong>' in page
    assert '<strong id="binding-total">3</strong>' in page
    assert 'id="filter"' in page
    assert 'src="static/bindings.js"' in page
    assert page.count('class="remove remove-contact"') == 3 + 1  # the rows, and the row template


def test_page_without_bindings_says_so(web: Web) -> None:
    page = web.request("GET", "/")[1].decode()
    assert '<tbody id="empty">' in page
    assert '<tr class="binding"' in page  # in the row template
    assert '<tr class="binding"' not in outside_templates(page)


def test_what_a_phone_sent_is_shown_as_text(web: Web) -> None:
    web.put(
        make_binding(
            contact='sip:x@192.0.2.7;a="><img src=x onerror=alert(1)>',
            user_agent="<script>alert('ua')</script> <b>bold</b>",
            call_id="<i>call</i>",
        )
    )
    page = web.request("GET", "/")[1].decode()
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;script&gt;alert(&#39;ua&#39;)&lt;/script&gt;" in page
    assert "<script>alert" not in page and "<b>bold" not in page and "<img" not in page
    assert "&lt;i&gt;call&lt;/i&gt;" in page
    assert 'data-contact="sip:x@192.0.2.7;a=&#34;&gt;&lt;img' in page


def test_script_fills_rows_with_text_only() -> None:
    script = template_source("bindings.js")
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "outerHTML" not in script
    assert "textContent" in script
    assert 'new EventSource("api/events")' in script and 'fetch("api/bindings"' in script


@pytest.mark.parametrize(("name", "content_type"), [("bindings.js", "text/javascript"), ("bindings.css", "text/css")])
def test_static_files(web: Web, name: str, content_type: str) -> None:
    response, body = web.request("GET", f"/static/{name}")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == [f"{content_type}; charset=utf-8"]
    assert body.decode() == template_source(name)


@pytest.mark.parametrize("name", ["bindings.html", "..%2Fsetup.cfg", "nope.js"])
def test_other_static_names_are_404(web: Web, name: str) -> None:
    assert web.request("GET", f"/static/{name}")[0].code == 404


# -- JSON API ---------------------------------------------------------------


def test_json_lists_every_binding(web: Web) -> None:
    web.put(
        make_binding(
            path=("<sip:p1.example.test;lr>",), instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>", reg_id=1
        ),
        make_binding(BOB, "sip:bob@192.0.2.9:5070", transport="TCP", source_host="2001:db8::9", source_port=5070),
    )
    data = web.get_json("/api/bindings")
    assert data["aors"] == 2 and data["total"] == 2
    alice, bob = data["bindings"]
    assert alice.keys() >= JSON_KEYS
    assert alice == {
        "aor": ALICE,
        "contact": "sip:alice@192.0.2.7:5062",
        "expires_in": 3600,
        "expires_at": "2024-05-01T13:34:56Z",
        "q": 1.0,
        "call_id": "a84b4c76e66710@pc33.example.test",
        "cseq": 1,
        "user_agent": "Linphone/5.2",
        "source": "UDP 192.0.2.7:5062",
        "transport": "UDP",
        "source_host": "192.0.2.7",
        "source_port": 5062,
        "path": ["<sip:p1.example.test;lr>"],
        "instance": "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>",
        "reg_id": 1,
        "flow": None,
        "registered_at": "2024-05-01T12:34:56Z",
        "refreshed_at": "2024-05-01T12:34:56Z",
    }
    assert bob["source"] == "TCP [2001:db8::9]:5070"


def test_json_aor_filter_is_exact(web: Web) -> None:
    web.put(make_binding(), make_binding(contact="sip:alice@192.0.2.8"), make_binding(BOB, "sip:bob@192.0.2.9"))
    data = web.get_json("/api/bindings?aor=" + ALICE)
    assert {b["aor"] for b in data["bindings"]} == {ALICE}
    assert (data["aors"], data["total"]) == (1, 2)
    assert web.get_json("/api/bindings?aor=sip:alice@example") == {"bindings": [], "aors": 0, "total": 0}


def test_expires_in_counts_down_with_the_clock(web: Web) -> None:
    web.put(make_binding(ttl=120))
    assert web.get_json("/api/bindings")["bindings"][0]["expires_in"] == 120
    web.clock.advance(30)
    assert web.get_json("/api/bindings")["bindings"][0]["expires_in"] == 90
    web.clock.advance(89.5)
    assert web.get_json("/api/bindings")["bindings"][0]["expires_in"] == 1
    web.clock.advance(0.5)
    assert web.get_json("/api/bindings") == {"bindings": [], "aors": 0, "total": 0}


# -- removal ----------------------------------------------------------------


def test_delete_removes_every_binding_of_an_aor(web: Web) -> None:
    web.put(make_binding(), make_binding(contact="sip:alice@192.0.2.8"), make_binding(BOB, "sip:bob@192.0.2.9"))
    with capturedLogs() as events:
        response, body = web.request("DELETE", "/api/bindings/sip%3Aalice%40example.test")
    assert response.code == 200
    assert json.loads(body) == {"removed": 2, "aor": ALICE, "contact": None}
    assert web.store.lookup(ALICE) == []
    assert len(web.store.lookup(BOB)) == 1
    assert_logged(events, "Web removed {count} {bindings} of {aor}", count=2, bindings="bindings", aor=ALICE)


def test_removing_the_one_binding_of_an_aor_says_binding(web: Web) -> None:
    web.put(make_binding())
    with capturedLogs() as events:
        web.request("DELETE", "/api/bindings/" + ALICE)
    assert "Web removed 1 binding of sip:alice@example.test" in [formatEvent(e) for e in events]


def test_text_that_is_not_utf8_shows_readably_on_the_page_and_in_the_api(web: Web) -> None:
    """A Latin-1 phone's ``T\\xe9l\\xe9phone`` (kept by the parser as surrogate escapes) shows as Téléphone."""
    latin_1 = "T\udce9l\udce9phone"
    web.put(
        make_binding(
            user_agent=latin_1,
            call_id=f"{latin_1}@192.0.2.7",
            instance=f"<urn:{latin_1}>",
            path=(f"<sip:{latin_1}@edge.example.test;lr>",),
        )
    )
    stream = Stream(web)
    response, body = web.request("GET", "/")
    assert response.code == 200
    page = body.decode("utf-8")
    for shown in ("Téléphone@192.0.2.7", "&lt;urn:Téléphone&gt;", "&lt;sip:Téléphone@edge.example.test;lr&gt;"):
        assert shown in page
    [binding] = web.get_json("/api/bindings")["bindings"]
    assert (binding["user_agent"], binding["call_id"], binding["instance"], binding["path"]) == (
        "Téléphone", "Téléphone@192.0.2.7", "<urn:Téléphone>", ["<sip:Téléphone@edge.example.test;lr>"],
    )  # fmt: skip
    [(_, snapshot)] = stream.events()
    assert snapshot["bindings"][0]["user_agent"] == "Téléphone"
    assert web.store.lookup(ALICE)[0].user_agent == latin_1  # only shown so: the store keeps what the phone sent


def test_readable_reads_stray_bytes_as_windows_1252() -> None:
    assert readable("plain") == "plain" and readable("Ünïcode") == "Ünïcode"
    assert readable("\udc80 \udce9 \udc81") == "€ é \ufffd"


def test_delete_one_contact(web: Web) -> None:
    web.put(make_binding(), make_binding(contact="sip:alice@192.0.2.8;transport=tcp"))
    with capturedLogs() as events:
        response, body = web.request(
            "DELETE", "/api/bindings/sip:alice@example.test", params={"contact": "sip:alice@192.0.2.8;transport=tcp"}
        )
    assert response.code == 200
    assert json.loads(body)["removed"] == 1
    assert [b.contact for b in web.store.lookup(ALICE)] == ["sip:alice@192.0.2.7:5062"]
    assert_logged(
        events, "Web removed binding {contact} of {aor}", contact="sip:alice@192.0.2.8;transport=tcp", aor=ALICE
    )


def test_delete_aor_with_a_slash_in_it(web: Web) -> None:
    aor = "sip:odd/user@example.test"
    web.put(make_binding(aor, "sip:odd@192.0.2.7"))
    response, _ = web.request("DELETE", "/api/bindings/sip%3Aodd%2Fuser%40example.test")
    assert response.code == 200
    assert web.store.lookup(aor) == []


def test_delete_unknown_is_404_json(web: Web) -> None:
    web.put(make_binding())
    for path, params in [
        ("/api/bindings/sip:carol@example.test", {}),
        ("/api/bindings/" + ALICE, {"contact": "sip:nope@192.0.2.1"}),
    ]:
        response, body = web.request("DELETE", path, params=params)
        assert response.code == 404
        assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
        assert "error" in json.loads(body)
    assert web.store.count() == 1


def test_delete_on_loopback_needs_a_loopback_host(web: Web) -> None:
    """DNS rebinding: a page from evil.example that resolves to 127.0.0.1 sends Host: evil.example."""
    web.put(make_binding())
    for host in ("localhost:8080", "127.0.0.1", "[::1]:8080"):
        web.put(make_binding())
        response, _ = web.request("DELETE", "/api/bindings/" + ALICE, headers={"Host": host})
        assert response.code == 200, host
    web.put(make_binding())
    response, _ = web.request("DELETE", "/api/bindings/" + ALICE, headers={"Host": "evil.example:8080"})
    assert response.code == 403
    assert web.store.count() == 1


def test_public_without_password_is_read_only() -> None:
    web = Web(public=True)
    web.put(make_binding())
    with capturedLogs() as events:
        response, body = web.request("DELETE", "/api/bindings/" + ALICE, headers=basic("admin", ""))
    assert response.code == 403
    assert "disabled" in json.loads(body)["error"]
    assert web.store.count() == 1
    assert any(e["log_level"].name == "warn" and e["log_format"].startswith("Web refused removal") for e in events)
    page = web.request("GET", "/")[1].decode()
    assert 'data-can-remove="false"' in page
    assert "remove-contact" not in page and "remove-aor" not in page
    assert "read-only" in page


def test_public_with_password_needs_basic_auth() -> None:
    web = Web(public=True, password="s3cret")
    web.put(make_binding())
    response, _ = web.request("DELETE", "/api/bindings/" + ALICE)
    assert response.code == 401
    assert response.headers.getRawHeaders("www-authenticate") == ['Basic realm="sipproxy", charset="UTF-8"']
    for user, password in [("admin", "wrong"), ("root", "s3cret"), ("admin", "s3cret2")]:
        assert web.request("DELETE", "/api/bindings/" + ALICE, headers=basic(user, password))[0].code == 401
    assert web.store.count() == 1
    response, _ = web.request("DELETE", "/api/bindings/" + ALICE, headers=basic("admin", "s3cret"))
    assert response.code == 200
    assert web.store.count() == 0
    page = web.request("GET", "/", headers=basic("admin", "s3cret"))[1].decode()  # reads need it too (issue 19)
    assert 'data-can-remove="true"' in page and "admin password" in page


def test_loopback_behind_a_reverse_proxy_counts_as_public(web: Web) -> None:
    web.put(make_binding())
    response, _ = web.request("DELETE", "/api/bindings/" + ALICE, headers={"X-Forwarded-For": "203.0.113.5"})
    assert response.code == 403
    assert web.store.count() == 1
    assert 'data-can-remove="false"' in web.request("GET", "/", headers={"Forwarded": "for=203.0.113.5"})[1].decode()


def test_get_is_not_a_removal(web: Web) -> None:
    web.put(make_binding())
    assert web.request("GET", "/api/bindings/" + ALICE)[0].code == 405
    assert web.request("POST", "/api/bindings")[0].code == 405
    assert web.store.count() == 1


# -- health and metrics -------------------------------------------------------


def test_healthz(web: Web) -> None:
    response, body = web.request("GET", "/healthz")
    assert (response.code, body) == (200, b"ok\n")
    web.healthy = False
    response, body = web.request("GET", "/healthz")
    assert response.code == 503


def test_metrics(web: Web) -> None:
    web.put(make_binding(), make_binding(BOB, "sip:bob@192.0.2.9"))
    response, body = web.request("GET", "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=")
    assert "# TYPE sip_bindings gauge" in body.decode()
    assert "sip_bindings 2.0" in body.decode()


def test_make_web_resource_serves_the_page() -> None:
    clock = Clock()
    store = LocationStore(clock)
    stub = StubTreq(make_web_resource(store, clock, Metrics(), lambda: True))
    response = result(stub.get(BASE + "/healthz"))
    assert response.code == 200


@pytest.mark.parametrize(
    ("description", "loopback"),
    [
        ("tcp:8080:interface=127.0.0.1", True),
        ("tcp:port=8080:interface=127.0.0.2", True),
        ("tcp:8080:interface=localhost", True),
        ("tcp6:8080:interface=\\:\\:1", True),
        ("tcp:8080:interface=[\\:\\:1]", True),
        ("ssl:8443:privateKey=key.pem:interface=127.0.0.1", True),
        ("tcp:8080", False),
        ("tcp:8080:interface=0.0.0.0", False),
        ("tcp:8080:interface=192.0.2.1", False),
        ("tcp6:8080:interface=\\:\\:", False),
        ("tcp:8080:interface=", False),
        ("unix:/run/sipproxy.sock", False),
        ("", False),
    ],
)
def test_is_loopback_description(description: str, loopback: bool) -> None:
    assert is_loopback_description(description) is loopback


# -- live updates -------------------------------------------------------------


def test_sse_message_format() -> None:
    assert (
        sse_message("binding", {"kind": "added", "x": "a\nb"})
        == b'event: binding\ndata: {"kind":"added","x":"a\\nb"}\n\n'
    )


def test_event_stream_starts_with_a_snapshot(web: Web) -> None:
    web.put(make_binding())
    stream = Stream(web)
    assert stream.response.code == 200
    assert stream.response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    assert stream.chunks[0] == b"retry: 2000\n\n"
    [(kind, snapshot)] = stream.events()
    assert kind == "snapshot"
    assert snapshot == web.get_json("/api/bindings")


def test_every_change_is_one_event_on_every_open_stream(web: Web) -> None:
    first, second = Stream(web), Stream(web)
    web.put(make_binding())
    web.clock.advance(10)
    web.put(make_binding(ttl=3700, refreshed_at=START + 10, cseq=2))
    web.put(make_binding(BOB, "sip:bob@192.0.2.9", ttl=30))
    web.store.remove(ALICE, "sip:alice@192.0.2.7:5062")
    web.clock.advance(30)
    for stream in (first, second):
        events = stream.events()[1:]
        assert [(e["kind"], e["binding"]["aor"]) for _, e in events] == [
            ("added", ALICE), ("refreshed", ALICE), ("added", BOB), ("removed", ALICE), ("expired", BOB),
        ]  # fmt: skip
        assert {name for name, _ in events} == {"binding"}
        assert events[1][1]["binding"]["expires_in"] == 3690
        assert events[1][1]["binding"]["cseq"] == 2


def test_events_say_why_a_binding_went(web: Web) -> None:
    stream = Stream(web)
    web.put(make_binding(), make_binding(BOB, "sip:bob@192.0.2.9", ttl=30))
    web.request("DELETE", "/api/bindings/" + ALICE)
    web.clock.advance(30)
    assert [(e["kind"], e["reason"], e["binding"]["aor"]) for _, e in stream.events()[1:]] == [
        ("added", "registered", ALICE), ("added", "registered", BOB), ("removed", "web", ALICE), ("expired", "expired", BOB),
    ]  # fmt: skip


def test_event_streams_opening_and_closing_are_logged_only_with_debug() -> None:
    for debug in (False, True):
        web = Web(debug=debug)
        with capturedLogs() as events:
            Stream(web).close()
        said = [(e["log_level"], e["log_format"].split(";")[0]) for e in events if "Event stream" in e["log_format"]]
        if debug:
            assert said == [
                (LogLevel.debug, "Event stream opened for {client}"),
                (LogLevel.debug, "Event stream closed"),
            ]
        else:
            assert said == []  # twistd prints every level: a debug line not emitted is the only one not shown


def test_the_changes_of_one_reactor_turn_go_out_in_one_write(web: Web) -> None:
    stream = Stream(web)
    before = len(stream.chunks)
    web.put(make_binding(), make_binding(BOB, "sip:bob@192.0.2.9"), make_binding(contact="sip:alice@192.0.2.8"))
    web.stub.flush()
    assert len(stream.chunks) == before  # held until the turn ends
    web.clock.advance(0)
    web.stub.flush()
    [new] = stream.chunks[before:]
    assert new.count(b"event: binding\n") == 3
    assert len(stream.events()) == 4  # the snapshot and the three changes
    late = Stream(web)  # opened later: its snapshot holds all three, no event repeats them
    assert [kind for kind, _ in late.events()] == ["snapshot"]


def test_head_on_the_event_stream_opens_no_stream(web: Web) -> None:
    response, body = web.request("HEAD", "/api/events")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    assert (body, web.page.streams, web.clock.getDelayedCalls()) == (b"", set(), [])


def test_idle_streams_get_a_ping_and_closed_streams_are_dropped(web: Web) -> None:
    stream = Stream(web)
    assert len(web.page.streams) == 1
    web.clock.advance(PING_INTERVAL)
    web.stub.flush()
    assert stream.chunks[-1] == b": ping\n\n"
    assert len(web.clock.getDelayedCalls()) == 1
    stream.close()
    assert web.page.streams == set()
    assert web.clock.getDelayedCalls() == []
    web.put(make_binding())  # no subscriber left to write to a closed request
    assert web.store.callback_errors == type(web.store.callback_errors)()
    assert web.page.hub._unsubscribe is None


def test_a_page_subscribes_only_while_someone_watches(web: Web) -> None:
    calls: list[object] = []
    web.page.hub.on_binding_event = calls.append  # type: ignore[method-assign]
    web.put(make_binding())
    assert calls == []
    stream = Stream(web)
    web.put(make_binding(BOB, "sip:bob@192.0.2.9"))
    assert len(calls) == 1
    stream.close()
    web.put(make_binding(contact="sip:alice@192.0.2.8"))
    assert len(calls) == 1


# -- helpers -------------------------------------------------------------------


def assert_logged(events: list[LogEvent], log_format: str, **fields: object) -> None:
    matching = [e for e in events if e.get("log_format") == log_format]
    assert matching, [e.get("log_format") for e in events]
    for name, value in fields.items():
        assert matching[0][name] == value


def test_access_log_leaves_out_polling_but_keeps_page_loads_removals_and_errors() -> None:
    from twisted.web.resource import Resource
    from twisted.web.test.requesthelper import DummyRequest

    from sipproxy.web import QuietSite

    site = QuietSite(
        Resource(), logFormatter=lambda _when, request: f"{request.method.decode()} {request.path.decode()}"
    )
    lines: list[str] = []
    site._logFile = type("Lines", (), {"write": lambda self, line: lines.append(line.strip())})()

    def served(method: str, path: str, code: int = 200) -> None:
        request = DummyRequest(path.strip("/").split("/"))
        request.method, request.path, request.code = method.encode(), path.encode(), code
        site.log(request)

    for path in ("/metrics", "/healthz", "/api/events", "/api/bindings"):
        served("GET", path)
    served("GET", "/")
    served("DELETE", "/api/bindings")
    served("GET", "/metrics", 500)
    assert lines == ["GET /", "DELETE /api/bindings", "GET /metrics"]


def test_delete_answers_once_the_removal_is_committed(tmp_path: Path) -> None:
    try:
        from tests.fakes import CommitFailsPersistence
    except ImportError:  # pragma: no cover
        from fakes import CommitFailsPersistence  # type: ignore[no-redef]

    persistence = CommitFailsPersistence(str(tmp_path / "b.sqlite"))
    web = Web(persistence=persistence)
    web.put(make_binding(), make_binding(BOB, "sip:bob@192.0.2.9"))
    web.clock.advance(0)

    pending = web.stub.delete(BASE + "/api/bindings/sip%3Aalice%40example.test")
    answers: list[Any] = []
    pending.addCallback(answers.append)
    web.stub.flush()
    assert answers == []  # not on disk yet
    web.clock.advance(0)
    web.stub.flush()
    assert answers[0].code == 200

    persistence.broken = True
    pending = web.stub.delete(BASE + "/api/bindings/sip%3Abob%40example.test")
    pending.addCallback(answers.append)
    web.clock.advance(0)
    web.stub.flush()
    assert answers[1].code == 500
    assert [b.aor for b in web.store.all_bindings()] == [BOB]  # memory is what the disk holds
    assert web.store.last_commit_failed
