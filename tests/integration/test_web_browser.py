"""The bindings page in a real headless Chromium against the real ``twistd -n sipproxy``, fed by real sipp.

Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: commands go in on fd 3, answers come out on
fd 4, each a JSON text ended by a NUL byte), so the suite needs no
WebDriver and no websocket client.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LOOPBACK, ROOT, free_port, require

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "register.xml"
SCREENSHOT = ROOT / "docs" / "bindings.png"
DOMAIN = "example.test"
HOSTILE_UA = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2><b>bold</b>"
USERS = [
    ("alice", "Linphone/5.2.5 (belle-sip/5.2.0)"),
    ("bob", "Zoiper rv2.10.20.3"),
    ("carol", HOSTILE_UA),
]
LIVE_DEADLINE = 2.0
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--window-size=1600,900",
]


# -- sipp -----------------------------------------------------------------------


def sipp_register(
    server: Any,
    tmp: Path,
    users: list[tuple[str, str]],
    *,
    expires: int = 3600,
    contact_port: int | None = None,
    scenario: Path = SCENARIO,
) -> None:
    """REGISTER each ``(user, user_agent)`` at ``user@example.test`` with real sipp; fail unless all got 200.

    (``scenario`` ``register_brief.xml``: unless all got 423.)
    """
    sipp = require("sipp")
    csv = tmp / f"users-{time.monotonic_ns()}.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{user};{agent}\n" for user, agent in users))
    local_port = free_port()
    command = [
        sipp, f"{LOOPBACK}:{server.sip_port}",
        "-sf", str(scenario), "-inf", str(csv),
        "-key", "domain", DOMAIN,
        "-key", "contact_host", LOOPBACK,
        "-key", "contact_port", str(contact_port or local_port),
        "-key", "expires", str(expires),
        "-m", str(len(users)), "-r", "50", "-l", "10",
        "-i", LOOPBACK, "-p", str(local_port), "-t", "u1",
        "-recv_timeout", "5000", "-timeout", "20s", "-nostdin",
        "-trace_err", "-error_file", str(tmp / "sipp-errors.log"),
    ]  # fmt: skip
    result = subprocess.run(
        command, check=False, cwd=tmp, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    errors = (tmp / "sipp-errors.log").read_text(errors="replace") if (tmp / "sipp-errors.log").exists() else ""
    assert result.returncode == 0, f"sipp exit {result.returncode}\n{result.stdout[-2000:]}\n{errors[-2000:]}"


def api_bindings(server: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{server.web_port}/api/bindings", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


# -- Chromium over the DevTools protocol -------------------------------------------


class DevToolsError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium with one page, spoken to over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, profile: Path, log_path: Path, extra_flags: tuple[str, ...] = ()) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def onto_fds_3_and_4() -> None:
            readable, writable = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(readable, 3)
            os.dup2(writable, 4)

        self.log = open(log_path, "wb")  # noqa: SIM115 - open as long as Chromium runs, closed in close()
        self.proc = subprocess.Popen(
            [
                binary,
                *CHROMIUM_FLAGS,
                *extra_flags,
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(3, 4),
            preexec_fn=onto_fds_3_and_4,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.session = ""
        self.on_event: Callable[[dict[str, Any]], None] | None = None

    # protocol

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 15.0, session: bool = True
    ) -> Any:
        """Run one DevTools command and return its result (events seen meanwhile go to ``events``)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        wanted = self._next_id
        deadline = time.monotonic() + timeout
        while wanted not in self._replies:
            self._take(self._read(deadline))
        reply = self._replies.pop(wanted)
        if "error" in reply:
            raise DevToolsError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def pump(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self._take(self._read(deadline))
        except TimeoutError:
            pass

    def _take(self, message: dict[str, Any]) -> None:
        """Keep a reply for its command (an event handler may send commands of its own meanwhile)."""
        if "id" in message:
            self._replies[message["id"]] = message
            return
        self.events.append(message)
        if self.on_event is not None:
            self.on_event(message)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise DevToolsError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)  # type: ignore[no-any-return]

    # page

    def open_page(self) -> None:
        """Attach to a fresh page target; later commands go to it."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1600, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )

    def navigate(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_for(lambda: any(e["method"] == "Page.loadEventFired" for e in self.events), "page load")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, check: Callable[[], Any], what: str, *, timeout: float = 10.0) -> Any:
        """Poll ``check`` (every 50 ms, taking in events) until it is truthy; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.pump(0.05)

    def screenshot(self, path: Path) -> None:
        """A PNG of the page, as tall as its content."""
        height = self.evaluate("Math.ceil(document.querySelector('footer').getBoundingClientRect().bottom + 24)")
        metrics = {"width": 1600, "height": max(300, min(height, 2400)), "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics)
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def problems(self) -> list[str]:
        """Script exceptions, console errors and CSP violations the page produced."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(json.dumps(params["args"])[:500])
            elif event["method"] == "Page.javascriptDialogOpening" and params["type"] == "alert":
                found.append("alert: " + params["message"])
        return found

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except (DevToolsError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self.log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(require("chromium"), tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        chromium.open_page()
        yield chromium
    finally:
        chromium.close()


# -- page queries (run inside the page) ----------------------------------------------

ROWS = """Array.from(document.querySelectorAll('#bindings tbody.aor-group:not([hidden]) tr.binding:not([hidden])')).map(tr => ({
  aor: tr.closest('tbody').dataset.aor,
  contact: tr.querySelector('[data-field="contact"]').textContent,
  expires: Number(tr.querySelector('[data-field="expires"]').dataset.expiresIn),
  user_agent: tr.querySelector('[data-field="user_agent"]').textContent,
  source: tr.querySelector('[data-field="source"]').textContent,
  refreshed: tr.querySelector('[data-field="refreshed_at"]').textContent,
}))"""


def rows(browser: Chromium) -> list[dict[str, Any]]:
    return browser.evaluate(ROWS)  # type: ignore[no-any-return]


def aors_shown(browser: Chromium) -> set[str]:
    return {row["aor"] for row in rows(browser)}


def aor(user: str) -> str:
    return f"sip:{user}@{DOMAIN}"


# -- the test ------------------------------------------------------------------------


def test_bindings_page_in_a_real_browser(server, browser: Chromium, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sipp_register(server, tmp_path, USERS)
    sipp_register(server, tmp_path, [("alice", "Yealink SIP-T54W 96.86.0.100")], contact_port=free_port())
    assert api_bindings(server)["total"] == 4
    browser.on_event = accept_confirm_dialogs(browser)

    browser.navigate(f"http://{LOOPBACK}:{server.web_port}/")
    browser.wait_for(lambda: browser.evaluate("document.getElementById('status').dataset.state") == "live", "live")

    # Every AOR with its contacts, and the totals.
    shown = browser.wait_for(lambda: (found := rows(browser)) and len(found) == 4 and found, "four rows")
    assert {row["aor"] for row in shown} == {aor(user) for user, _ in USERS}
    assert browser.evaluate("document.getElementById('aor-total').textContent") == "3"
    assert browser.evaluate("document.getElementById('binding-total').textContent") == "4"
    for row in shown:
        assert row["contact"].startswith(row["aor"].replace(f"@{DOMAIN}", f"@{LOOPBACK}:"))
        assert 3590 <= row["expires"] <= 3600
        assert row["source"].startswith(f"UDP {LOOPBACK}:")
        assert row["refreshed"].endswith(" UTC")

    # What a phone sent is text: the hostile User-Agent is shown verbatim and never runs.
    [carol] = [row for row in shown if row["aor"] == aor("carol")]
    assert carol["user_agent"] == HOSTILE_UA
    assert (
        browser.evaluate("document.querySelectorAll('#bindings td script, #bindings td img, #bindings td b').length")
        == 0
    )
    assert browser.evaluate("typeof window.pwned") == "undefined"

    # The countdown runs in the page.
    before = {row["contact"]: row["expires"] for row in rows(browser)}
    browser.pump(2.2)
    after = {row["contact"]: row["expires"] for row in rows(browser)}
    assert all(after[contact] < before[contact] for contact in before), (before, after)

    # A REGISTER while the page is open shows within 2 s, without reload.
    browser.evaluate("window.notReloaded = true")
    sipp_register(server, tmp_path, [("dave", "Grandstream GXP2170 1.0.11.23")])
    registered = time.monotonic()
    browser.wait_for(lambda: aor("dave") in aors_shown(browser), "dave's row", timeout=LIVE_DEADLINE)
    assert time.monotonic() - registered <= LIVE_DEADLINE
    assert browser.evaluate("window.notReloaded") is True
    assert browser.evaluate("document.getElementById('binding-total').textContent") == "5"

    # The filter box narrows the rows by AOR, contact or user agent.
    set_filter(browser, "zoiper")
    assert aors_shown(browser) == {aor("bob")}
    set_filter(browser, "ALICE")
    assert aors_shown(browser) == {aor("alice")} and len(rows(browser)) == 2
    set_filter(browser, "")
    assert len(rows(browser)) == 5

    # "Remove all" (loopback listener: no credentials) after the confirm dialog.
    click(browser, f'tbody[data-aor="{aor("carol")}"] .remove-aor')
    browser.wait_for(lambda: aor("carol") not in aors_shown(browser), "carol's row to go", timeout=5)
    assert browser.evaluate("document.getElementById('message').textContent") == f"Removed 1 binding of {aor('carol')}."
    assert aor("carol") not in {b["aor"] for b in api_bindings(server)["bindings"]}
    assert f"Web removed 1 binding of {aor('carol')}" in server.log_text()
    assert f"Binding removed: {aor('carol')} -> " in server.log_text()
    assert "(removed through the web page/API)" in server.log_text()

    browser.screenshot(tmp_path / "bindings.png")
    if os.environ.get("SIPPROXY_SCREENSHOT"):  # refresh the README's picture on request only
        browser.screenshot(SCREENSHOT)

    # An unregister (Expires: 0) disappears within 2 s.
    bob_port = contact_port(api_bindings(server), "bob")
    sipp_register(server, tmp_path, [("bob", "Zoiper rv2.10.20.3")], expires=0, contact_port=bob_port)
    unregistered = time.monotonic()
    browser.wait_for(lambda: aor("bob") not in aors_shown(browser), "bob's row to go", timeout=LIVE_DEADLINE)
    assert time.monotonic() - unregistered <= LIVE_DEADLINE
    assert f"Binding removed: {aor('bob')} -> " in server.log_text()
    assert "(unregistered by the phone)" in server.log_text()

    # The per-contact Remove button.
    click(browser, f'tbody[data-aor="{aor("dave")}"] .remove-contact')
    browser.wait_for(lambda: aor("dave") not in aors_shown(browser), "dave's row to go", timeout=5)
    assert aor("dave") not in {b["aor"] for b in api_bindings(server)["bindings"]}
    assert "Web removed binding" in server.log_text()
    assert browser.evaluate("document.getElementById('binding-total').textContent") == "2"

    assert browser.problems() == []


def set_filter(browser: Chromium, text: str) -> None:
    browser.evaluate(
        f"(f => {{ f.value = {json.dumps(text)}; f.dispatchEvent(new Event('input')); }})(document.getElementById('filter'))"
    )


def click(browser: Chromium, selector: str) -> None:
    """Click later, so that the confirm dialog the click opens does not block this evaluation."""
    browser.evaluate(f"setTimeout(() => document.querySelector({json.dumps(selector)}).click(), 0), true")


def accept_confirm_dialogs(browser: Chromium) -> Callable[[dict[str, Any]], None]:
    def on_event(event: dict[str, Any]) -> None:
        if event["method"] == "Page.javascriptDialogOpening" and event["params"]["type"] == "confirm":
            browser.send("Page.handleJavaScriptDialog", {"accept": True})

    return on_event


def contact_port(data: dict[str, Any], user: str) -> int:
    """The port in the Contact of ``user``'s only binding (``sip:bob@127.0.0.1:PORT;transport=UDP``)."""
    [binding] = [b for b in data["bindings"] if b["aor"] == aor(user)]
    return int(binding["contact"].split(":")[2].split(";")[0].rstrip(">"))


def test_page_falls_back_to_polling_when_the_event_stream_is_blocked(server, browser: Chromium, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A proxy that breaks Server-Sent Events: the page polls api/bindings and stays live."""

    def block_event_stream(event: dict[str, Any]) -> None:
        if event["method"] == "Fetch.requestPaused":
            browser.send("Fetch.failRequest", {"requestId": event["params"]["requestId"], "errorReason": "Failed"})

    browser.on_event = block_event_stream
    browser.send("Fetch.enable", {"patterns": [{"urlPattern": "*/api/events*"}]})
    sipp_register(server, tmp_path, USERS[:1])

    browser.navigate(f"http://{LOOPBACK}:{server.web_port}/")
    browser.wait_for(
        lambda: browser.evaluate("document.getElementById('status').dataset.state") == "polling", "polling"
    )
    browser.wait_for(lambda: aors_shown(browser) == {aor("alice")}, "alice's row")

    sipp_register(server, tmp_path, [("erin", "Cisco/SPA504G-7.6.2")])
    registered = time.monotonic()
    browser.wait_for(lambda: aor("erin") in aors_shown(browser), "erin's row", timeout=LIVE_DEADLINE)
    assert time.monotonic() - registered <= LIVE_DEADLINE
    assert browser.evaluate("document.getElementById('status').dataset.state") == "polling"
    assert any(e["method"] == "Fetch.requestPaused" for e in browser.events)


# -- the binding history (issue 18) ----------------------------------------------------

HISTORY_ROWS = """Array.from(document.querySelectorAll('#history tr.event')).map(tr => ({
  kind: tr.dataset.kind,
  what: tr.querySelector('[data-field="what"]').textContent,
  contact: tr.querySelector('[data-field="contact"]').textContent,
  user_agent: tr.querySelector('[data-field="user_agent"]').textContent,
}))"""


def history_rows(browser: Chromium) -> list[dict[str, Any]]:
    return browser.evaluate(HISTORY_ROWS)  # type: ignore[no-any-return]


def test_binding_history_says_why_a_binding_vanished(server_factory, browser: Chromium, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Removed with the page's Remove button, refused 423, expired: each in the AOR's history, as text."""
    server = server_factory("--min-expires", "2")
    hostile = "<script>window.pwned=1</script>\"quoted' <img src=x onerror=window.pwned=2>"
    sipp_register(server, tmp_path, [("erin", hostile)])
    browser.on_event = accept_confirm_dialogs(browser)
    base = f"http://{LOOPBACK}:{server.web_port}/"
    browser.navigate(base)
    browser.wait_for(lambda: browser.evaluate("document.getElementById('status').dataset.state") == "live", "live")
    browser.wait_for(lambda: aor("erin") in aors_shown(browser), "erin's row")
    browser.pump(0.5)  # the script's first render after the snapshot: buttons with their handlers
    link = browser.evaluate(f"document.querySelector('tbody[data-aor=\"{aor('erin')}\"] a.history-link').href")
    assert link == base + "history?aor=sip%3Aerin%40example.test"

    # The Remove button, then the AOR's history: removed through the page by the browser's address.
    click(browser, f'tbody[data-aor="{aor("erin")}"] .remove-contact')
    browser.wait_for(lambda: aor("erin") not in aors_shown(browser), "erin's row to go", timeout=5)
    browser.navigate(link)
    removed, registered = browser.wait_for(
        lambda: (found := history_rows(browser)) and len(found) == 2 and found, "two events"
    )
    assert removed["kind"] == "removed" and removed["what"] == f"removed through the page by {LOOPBACK}"
    assert registered["kind"] == "registered" and registered["what"].startswith(f"registered from UDP {LOOPBACK}:")
    assert registered["user_agent"] == hostile
    assert browser.evaluate("document.querySelectorAll('#history td script, #history td img').length") == 0
    assert browser.evaluate("typeof window.pwned") == "undefined"

    # A REGISTER with a too-brief Expires: 423 in the history, with the minimum.
    sipp_register(
        server, tmp_path, [("erin", "Brief/1.0")], expires=1, scenario=SCENARIO.with_name("register_brief.xml")
    )
    # An expired binding: registered for 2 s, gone by itself.
    sipp_register(server, tmp_path, [("erin", "Short/1.0")], expires=2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "Binding expired: " + aor("erin") not in server.log_text():
        time.sleep(0.1)
    browser.navigate(link)
    found = browser.wait_for(lambda: (rows_ := history_rows(browser)) and len(rows_) == 5 and rows_, "five events")
    assert [row["kind"] for row in found] == ["expired", "registered", "rejected", "removed", "registered"]
    assert found[0]["what"] == "expired: not refreshed before it expired"
    assert found[2]["what"].startswith("REGISTER rejected: 423 Interval Too Brief (Min-Expires 2) (from UDP ")
    assert found[2]["user_agent"] == "Brief/1.0"

    # The JSON says the same, under the same access rule as removal (loopback: open).
    with urllib.request.urlopen(f"{base}api/history?aor=sip%3Aerin%40example.test", timeout=5) as response:
        events = json.loads(response.read())["events"]
    assert [e["kind"] for e in events] == ["expired", "registered", "rejected", "removed", "registered"]
    assert events[2]["status"] == 423
    assert browser.problems() == []
