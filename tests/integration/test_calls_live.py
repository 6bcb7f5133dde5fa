"""The call log, /api/calls and the call-flow ladder against the real ``twistd -n sipproxy`` with sipp calls.

Callees and callers are sipp (the helpers of ``test_proxy_sipp``); the
Recent calls page runs in a real headless Chromium (``test_web_browser``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from harness import LOOPBACK, ROOT, Server, free_port
from test_proxy_sipp import DOMAIN, Peers, assert_no_bugs, finished, succeeded
from test_web_browser import Chromium, browser  # noqa: F401 - the browser fixture

SCREENSHOT = ROOT / "docs" / "calls.png"
HOSTILE_NAME = "<img src=x onerror=window.pwned=1>"
HOSTILE_SUBJECT = "<script>window.pwned=2</script>"
SECRET = "6629fae49393a05397450978507c4ef1"


@pytest.fixture
def peers(server: Server) -> Iterator[Peers]:
    group = Peers(server)
    try:
        yield group
    finally:
        group.stop()
    assert_no_bugs(server)


def api(server: Server, path: str) -> Any:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{server.web_port}{path}", timeout=5) as response:
        return json.loads(response.read())


def call_lines(server: Server) -> list[str]:
    return [line.split("] ", 1)[1] for line in server.log_text().splitlines() if "[sipproxy.calls" in line]


def forked_call(peers: Peers) -> tuple[Any, Any, Any]:
    """dave on two phones: one answers after 500 ms, the other rings and is cancelled."""
    answers = peers.uas("uas_answer.xml", user="dave", hold_ms=500)
    rings = peers.uas("uas_cancel.xml", user="dave")
    uac = peers.call("call_uac.xml", keys={"callee": "dave"})
    succeeded(uac)
    finished(answers)
    finished(rings)
    return answers, rings, uac


def wait_for(check: Any, what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_forked_call_in_the_log_and_the_api(server: Server, peers: Peers) -> None:
    answers, rings, uac = forked_call(peers)
    uac_rejected = peers.call("call_rejected.xml", keys={"callee": "nobody", "target": DOMAIN, "max_forwards": "70"})
    succeeded(uac_rejected)

    lines = call_lines(server)
    answered = [line for line in lines if "-> sip:dave@example.test: 200" in line]
    assert len(answered) == 1, lines
    assert re.fullmatch(
        rf"Call sip:caller@example\.test -> sip:dave@example\.test: 200 after \d+\.\d s, 2 branches, "
        rf"answered by sip:dave@127\.0\.0\.1:{answers.port}(;transport=udp)? \(UDP\)",
        answered[0],
    ), answered[0]
    assert (
        "Call sip:caller@example.test -> sip:nobody@example.test: 480 Temporarily Unavailable after 0.0 s, "
        "no branches: no binding for sip:nobody@example.test"
    ) in lines

    data = api(server, "/api/calls")
    assert data["total"] == 2
    rejected, call = data["calls"]
    assert (rejected["status"], rejected["why"]) == (480, "no binding for sip:nobody@example.test")
    assert call["status"] == 200 and call["callee"] == "sip:dave@example.test" and 0.4 < call["setup"] < 5
    assert sorted(b["outcome"] for b in call["branches"]) == ["answered", "cancelled"]
    assert api(server, "/api/calls?aor=sip:dave@example.test")["total"] == 1

    ladder = api(server, "/api/ladder?call_id=" + urllib.request.quote(call["call_id"]))["ladder"]
    roles = [(party["role"], party["name"]) for party in ladder["parties"]]
    assert roles[:2] == [("caller", "sip:caller@example.test"), ("sipproxy", "")], roles
    assert sorted(role for role, _ in roles[2:]) == ["branch 1", "branch 2"], roles
    ringing = next(i for i, p in enumerate(ladder["parties"]) if p["address"].endswith(f":{rings.port}"))
    to_ringing = [m["label"] for m in ladder["messages"] if m["to"] == ringing]
    assert to_ringing[:2] == ["INVITE", "CANCEL"], to_ringing
    labels = [m["label"] for m in ladder["messages"]]
    assert {"ACK", "BYE", "200 OK (INVITE)", "487 Request Terminated (INVITE)"} <= set(labels), labels
    times = [m["time"] for m in ladder["messages"]]
    assert times == sorted(times) and times[0] == 0


def hostile_invite(server: Server) -> str:
    """An INVITE for nobody with a hostile display name, Subject and credentials, over UDP; never ACKed."""
    call_id = f"hostile-{time.monotonic_ns()}@{LOOPBACK}"
    port = free_port()
    data = (
        f"INVITE sip:nobody@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{port};rport;branch=z9hG4bKhostile{time.monotonic_ns()}\r\n"
        "Max-Forwards: 70\r\n"
        f'From: "{HOSTILE_NAME}" <sip:mallory@{DOMAIN}>;tag=m1\r\n'
        f"To: <sip:nobody@{DOMAIN}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Subject: {HOSTILE_SUBJECT}\r\n"
        f'Proxy-Authorization: Digest username="mallory", realm="{DOMAIN}", response="{SECRET}"\r\n'
        "Content-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, port))
        sock.settimeout(5)
        sock.sendto(data, (LOOPBACK, server.sip_port))
        while not sock.recvfrom(65535)[0].startswith(b"SIP/2.0 480"):
            pass
    return call_id


LADDER = """(() => ({
  parties: Array.from(document.querySelectorAll('#ladder svg text.party')).map(t => t.textContent),
  labels: Array.from(document.querySelectorAll('#ladder svg g.arrow text.label')).map(t => t.textContent),
  retransmissions: document.querySelectorAll('#ladder svg g.arrow.retransmission').length,
}))()"""


def click_row(browser: Chromium, call_id: str) -> None:  # noqa: F811
    browser.evaluate(
        "Array.from(document.querySelectorAll('#call-rows tr.call'))"
        f".find(tr => tr.dataset.callId === {json.dumps(call_id)}).click(), true"
    )


def click_arrow(browser: Chromium, index: int) -> str:  # noqa: F811
    browser.evaluate(
        f"document.querySelectorAll('#ladder svg g.arrow')[{index}]"
        ".dispatchEvent(new MouseEvent('click', {bubbles: true})), true"
    )
    return browser.evaluate("document.getElementById('message-text').textContent")  # type: ignore[no-any-return]


def test_the_ladder_in_a_real_browser(server: Server, peers: Peers, browser: Chromium) -> None:  # noqa: F811
    forked_call(peers)
    browser.navigate(f"http://{LOOPBACK}:{server.web_port}/calls")
    browser.wait_for(lambda: browser.evaluate("document.getElementById('status').dataset.state") == "live", "live")
    call_id = api(server, "/api/calls")["calls"][0]["call_id"]

    # Live: a call finished while the page is open appears without a reload.
    hostile = hostile_invite(server)
    browser.wait_for(
        lambda: browser.evaluate("document.querySelectorAll('#call-rows tr.call:not([hidden])').length") == 2,
        "the new call's row",
    )

    click_row(browser, call_id)
    ladder = browser.wait_for(lambda: (found := browser.evaluate(LADDER))["labels"] and found, "the ladder")
    assert len(ladder["parties"]) == 4 and ladder["parties"][1] == "sipproxy", ladder
    assert ladder["labels"].count("CANCEL") == 1 and ladder["labels"].count("INVITE") == 3, ladder
    text = click_arrow(browser, 0)
    assert text.startswith(f"INVITE sip:dave@{DOMAIN} SIP/2.0\r\n"), text

    click_row(browser, hostile)
    browser.wait_for(
        lambda: browser.evaluate("document.getElementById('ladder-title').textContent") == hostile, "hostile ladder"
    )
    # The 480 goes unacknowledged: Timer G retransmits it, and the ladder marks those.
    wait_for(
        lambda: api(server, "/api/ladder?call_id=" + hostile)["ladder"]["messages"][-1]["retransmission"],
        "a retransmission",
    )
    browser.evaluate("document.getElementById('ladder').replaceChildren(), true")
    click_row(browser, hostile)
    browser.wait_for(lambda: browser.evaluate(LADDER)["retransmissions"] > 0, "a retransmission in the ladder")
    text = click_arrow(browser, 0)
    assert HOSTILE_NAME in text and HOSTILE_SUBJECT in text and SECRET not in text
    assert "Proxy-Authorization: Digest (credentials hidden)" in text
    assert browser.evaluate("typeof window.pwned") == "undefined"
    assert (
        browser.evaluate("document.querySelectorAll('#message-text *, #call-rows img, #call-rows script').length") == 0
    )
    assert HOSTILE_NAME not in browser.evaluate("document.getElementById('call-rows').innerHTML")

    set_filter = "(f => { f.value = 'sip:dave@example.test'; f.dispatchEvent(new Event('input')); })(document.getElementById('filter'))"
    browser.evaluate(set_filter)
    assert browser.evaluate("document.querySelectorAll('#call-rows tr.call:not([hidden])').length") == 1

    browser.evaluate("document.getElementById('ladder').replaceChildren(), true")
    click_row(browser, call_id)
    browser.wait_for(lambda: browser.evaluate(LADDER)["parties"], "the forked ladder again")
    click_arrow(browser, 0)
    if os.environ.get("SIPPROXY_SCREENSHOT"):  # refresh the README's picture on request only
        browser.screenshot(SCREENSHOT)
    for width in (1366, 1024):  # the page fits common screens; a wide ladder scrolls inside its own box
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        overflow = browser.evaluate(
            "[document.documentElement, document.querySelector('main')].map(e => e.scrollWidth - e.clientWidth)"
        )
        assert overflow == [0, 0], f"horizontal overflow at {width} px (page, main): {overflow}"
    assert browser.problems() == []


def test_routing_explain_for_a_registered_aor_lists_its_contacts_in_q_order(
    server: Server,
    peers: Peers,
    browser: Chromium,  # noqa: F811
) -> None:
    low, high = free_port(), free_port()
    peers.register("erin", low, q="0.5")
    peers.register("erin", high, q="1.0")
    answer = api(server, "/api/route?uri=sip:erin@example.test&from=sip:caller@example.test&method=INVITE")
    assert [(t["q"], t["next_hop"]["port"]) for t in answer["targets"]] == [(1.0, high), (0.5, low)], answer
    assert answer["result"] == "would fork: 1 (q 1), then 1 (q 0.5)"
    assert "sipproxy.calls" not in server.log_text()  # nothing was sent, no call happened

    browser.navigate(f"http://{LOOPBACK}:{server.web_port}/calls")
    browser.evaluate(
        "document.getElementById('route-uri').value = 'sip:erin@example.test';"
        "document.getElementById('route-form').requestSubmit(), true"
    )
    steps = browser.wait_for(
        lambda: browser.evaluate(
            "Array.from(document.querySelectorAll('#route-steps > li')).map(li => ["
            "li.querySelector('.section').textContent, li.querySelector('ul').textContent])"
        ),
        "the explained steps",
    )
    assert [section for section, _ in steps] == ["§7, §25", "§16.3", "§16.4", "§16.5", "§16.6"], steps
    assert browser.evaluate("document.getElementById('route-result').textContent") == answer["result"]
    forwarding = steps[4][1]
    assert f"UDP to 127.0.0.1:{high}" in forwarding and forwarding.index(str(high)) < forwarding.index(str(low))
    assert browser.problems() == []


def test_a_message_refused_by_the_callee_has_its_log_line_and_its_ladder(server: Server, peers: Peers) -> None:
    """An out-of-dialog request other than INVITE that was forwarded and failed: in the log, the list and a ladder."""
    delivered = peers.uas("uas_message.xml", user="heidi")
    succeeded(peers.call("msg_send.xml", keys={"callee": "heidi"}))
    finished(delivered)
    grace = peers.uas("uas_message_busy.xml", user="grace")
    succeeded(peers.call("msg_send_refused.xml", keys={"callee": "grace"}))
    finished(grace)

    lines = call_lines(server)
    assert any(
        line.startswith("MESSAGE sip:caller@example.test -> sip:grace@example.test: 486 Busy Here after ")
        for line in lines
    ), lines
    assert not any("sip:heidi@" in line for line in lines), lines  # delivered: no line, no entry (the rule)
    [call] = api(server, "/api/calls")["calls"]
    assert (call["method"], call["status"], call["callee"]) == ("MESSAGE", 486, "sip:grace@example.test")
    ladder = api(server, "/api/ladder?call_id=" + urllib.request.quote(call["call_id"]))["ladder"]
    roles = [party["role"] for party in ladder["parties"]]
    assert roles == ["caller", "sipproxy", "branch 1"], ladder["parties"]
    assert ladder["parties"][2]["address"].endswith(f":{grace.port}")
    arrows = [(m["from"], m["to"], m["label"]) for m in ladder["messages"] if not m["retransmission"]]
    assert arrows == [
        (0, 1, "MESSAGE"),
        (1, 2, "MESSAGE"),
        (2, 1, "486 Busy Here (MESSAGE)"),
        (1, 0, "486 Busy Here (MESSAGE)"),
    ], arrows
