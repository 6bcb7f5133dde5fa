"""JsSIP 3.13 in headless Chromium against the real ``twistd -n sipproxy --wss ...`` (issue 14, proof with real clients).

The browser phone is the npm package ``jssip`` (pinned in
``tests/integration/jssip/package.json``), bundled with the page's little
API (``phone.js``) by ``npm ci`` in that folder, which the README's test
command runs.  The page is served by this module on 127.0.0.1, not by
sipproxy; JsSIP connects to ``wss://127.0.0.1:PORT`` with a certificate from
a ``trustme`` CA.  Chromium trusts exactly that certificate's key
(``--ignore-certificate-errors-spki-list``, which needs the
``--user-data-dir`` the suite gives it) rather than all of them
(``--ignore-certificate-errors``): a WSS listener serving another key
would still fail the handshake.  Media is Chromium's fake microphone.

The other phones are sipp over UDP, with a WebRTC-shaped SDP (``webrtc_*.xml``).
Requests inside a dialog towards a browser (the ACK for its 200, a BYE to
it) go to a ``.invalid`` Contact: they reach it only by following the flow
it registered on (RFC 5626 outbound).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from harness import LOOPBACK, ROOT, Server, free_port, passwd_file, require

try:
    from test_proxy_sipp import Peers, Sipp, assert_no_bugs
    from test_web_browser import Chromium
except ImportError:  # pragma: no cover
    from tests.integration.test_proxy_sipp import Peers, Sipp, assert_no_bugs  # type: ignore[no-redef]
    from tests.integration.test_web_browser import Chromium  # type: ignore[no-redef]

PAGE_DIR = Path(__file__).resolve().parent / "jssip"
BUNDLE = PAGE_DIR / "phone.bundle.js"
JSSIP_VERSION = json.loads((PAGE_DIR / "package.json").read_text())["dependencies"]["jssip"]
DOMAIN = "example.test"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}


# -- the servers: sipproxy with WSS, and the page's HTTP server ---------------------------


class PhoneServer(Server):
    wss_port: int
    spki: str  # base64 SHA-256 of the WSS certificate's public key, as Chromium's SPKI list wants it


def make_server(tmp_path: Path, *extra: str) -> PhoneServer:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", LOOPBACK)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    public_key = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_key()
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    srv = PhoneServer(tmp_path, [])
    srv.wss_port = free_port()
    srv.spki = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    srv.extra = [
        "--tls-cert", str(tmp_path / "cert.pem"),
        "--tls-key", str(tmp_path / "key.pem"),
        "--tls-port", str(free_port()),
        "--wss", f"tcp:{srv.wss_port}:interface={LOOPBACK}",
        *extra,
    ]  # fmt: skip
    srv.start()
    return srv


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[PhoneServer]:
    srv = make_server(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()
    assert_no_bugs(srv)


@pytest.fixture
def sipps(proxy: PhoneServer) -> Iterator[Peers]:
    """The sipp phones of one test (over UDP), stopped at teardown."""
    group = Peers(proxy)
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def page_url() -> Iterator[str]:
    """The test page on a small HTTP server of its own on 127.0.0.1 (sipproxy serves no phone page)."""
    if not BUNDLE.exists():
        pytest.fail(f"{BUNDLE} is missing: run `npm ci --prefix {PAGE_DIR.relative_to(ROOT)}`"
                    " (the README's test command does)")  # fmt: skip

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), functools.partial(Quiet, directory=str(PAGE_DIR)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{httpd.server_address[1]}/index.html"
    finally:
        httpd.shutdown()
        httpd.server_close()


def open_browser(tmp_path: Path, proxy: PhoneServer, page_url: str) -> Chromium:
    flags = (
        "--use-fake-device-for-media-stream",  # a generated microphone: getUserMedia works headless
        "--use-fake-ui-for-media-stream",  # and is granted without a prompt
        f"--ignore-certificate-errors-spki-list={proxy.spki}",  # trust the test WSS key, and only it
        "--allow-loopback-in-peer-connection",  # ICE candidates on 127.0.0.1 (phone.js keeps only those)
    )
    chromium = Chromium(require("chromium"), tmp_path / "chromium-profile", tmp_path / "chromium.log", flags)
    chromium.open_page()
    chromium.navigate(page_url)
    assert chromium.evaluate("window.phone && window.phone.version") == JSSIP_VERSION
    return chromium


@pytest.fixture
def browser(tmp_path: Path, proxy: PhoneServer, page_url: str) -> Iterator[Chromium]:
    chromium = open_browser(tmp_path, proxy, page_url)
    try:
        yield chromium
        assert chromium.problems() == []
    finally:
        chromium.close()


# -- driving the phones ---------------------------------------------------------


def start_phone(browser: Chromium, proxy: PhoneServer, user: str, *, password: str | None = None) -> str:
    """Start a JsSIP UA for ``user`` in the page (REGISTER over WSS); what JsSIP reports: 'registered' or a cause."""
    config = {"uri": f"sip:{user}@{DOMAIN}", "ws": f"wss://{LOOPBACK}:{proxy.wss_port}"}
    if password is not None:
        config |= {"user": user, "password": password}
    return browser.evaluate(f"phone.start({json.dumps(user)}, {json.dumps(config)})")  # type: ignore[no-any-return]


def state(browser: Chromium, user: str) -> dict[str, Any]:
    return browser.evaluate(f"phone.state({json.dumps(user)})")  # type: ignore[no-any-return]


def events(browser: Chromium, user: str) -> list[str]:
    return [event["type"] for event in state(browser, user)["events"]]


def act(browser: Chromium, action: str, user: str, *args: str) -> None:
    assert browser.evaluate(f"phone.{action}({', '.join(json.dumps(a) for a in (user, *args))})") is True


def wait_event(browser: Chromium, user: str, wanted: str, *, timeout: float = 15) -> dict[str, Any]:
    """The first event ``wanted`` of ``user``'s phone, once it has happened."""

    def seen() -> dict[str, Any] | None:
        return next((e for e in state(browser, user)["events"] if e["type"] == wanted), None)

    return browser.wait_for(seen, f"{user}'s {wanted} (so far {events(browser, user)})", timeout=timeout)  # type: ignore[no-any-return]


def api_bindings(proxy: Server) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{proxy.web_port}/api/bindings", timeout=5) as response:
        return json.loads(response.read())["bindings"]  # type: ignore[no-any-return]


def binding_of(proxy: Server, user: str) -> dict[str, Any]:
    [binding] = [b for b in api_bindings(proxy) if b["aor"] == f"sip:{user}@{DOMAIN}"]
    return binding


def sipp_caller(sipps: Peers, scenario: str, callee: str, *, hold_ms: int = 0) -> Sipp:
    """A sipp UAC over UDP calling ``callee`` through the proxy, running in the background."""
    caller = Sipp(
        sipps.workdir,
        f"uac-{callee}",
        scenario,
        port=free_port(),
        remote=sipps.server.sip_port,
        keys={"domain": DOMAIN, "callee": callee},
        extra=("-d", str(hold_ms), "-recv_timeout", "20000"),
        timeout=30,
    )
    sipps.procs.append(caller)
    return caller


def finished(sipp: Sipp) -> None:
    assert sipp.wait(40) == 0, sipp.report()


# -- the tests ------------------------------------------------------------------------


def test_jssip_registers_over_wss_and_unregisters(proxy: PhoneServer, browser: Chromium) -> None:
    assert start_phone(browser, proxy, "alice") == "registered"

    binding = binding_of(proxy, "alice")
    assert binding["transport"] == "WSS"
    assert binding["source_host"] == LOOPBACK
    assert binding["contact"].startswith("sip:") and binding["contact"].endswith(".invalid;transport=ws")
    assert binding["instance"].startswith("<urn:uuid:") and binding["reg_id"] == 1
    assert binding["user_agent"].startswith("JsSIP 3.13")
    assert f"Registered sip:alice@{DOMAIN} -> {binding['contact']} for 600 s from WSS {LOOPBACK}:" in proxy.log_text()

    act(browser, "stop", "alice")  # UA.stop() unregisters (Expires: 0) before closing the WebSocket
    wait_event(browser, "alice", "unregistered")
    assert api_bindings(proxy) == []
    assert (
        f"Binding removed: sip:alice@{DOMAIN} -> {binding['contact']} (unregistered by the phone)" in proxy.log_text()
    )


def test_jssip_registers_with_digest_credentials(tmp_path: Path, page_url: str) -> None:
    users = passwd_file(tmp_path / "users", PASSWORDS, DOMAIN)
    proxy = make_server(tmp_path, "--users", str(users))
    browser = open_browser(tmp_path, proxy, page_url)
    try:
        assert start_phone(browser, proxy, "bob", password="wrong") == "Authentication Error"
        assert api_bindings(proxy) == []
        assert start_phone(browser, proxy, "alice", password=PASSWORDS["alice"]) == "registered"
        assert binding_of(proxy, "alice")["transport"] == "WSS"
        assert browser.problems() == []
    finally:
        browser.close()
        proxy.stop()
    assert_no_bugs(proxy)


def test_jssip_calls_a_sipp_phone_over_udp_and_hangs_up(proxy: PhoneServer, browser: Chromium, sipps: Peers) -> None:
    assert start_phone(browser, proxy, "alice") == "registered"
    carol = sipps.uas("webrtc_uas.xml", user="carol", hold_ms=200)

    act(browser, "call", "alice", f"sip:carol@{DOMAIN}")
    wait_event(browser, "alice", "call:progress")  # carol's 180
    wait_event(browser, "alice", "call:confirmed")  # her 200, and our ACK sent
    assert set(state(browser, "alice")["candidates"]) == {LOOPBACK}  # what the offer named: loopback only
    act(browser, "hangup", "alice")
    ended = wait_event(browser, "alice", "call:ended")
    assert ended["originator"] == "local"
    finished(carol)  # carol got the ACK and the BYE, and answered it
    [invite] = carol.requests("INVITE")
    assert invite.get_all("via")[-1].startswith("SIP/2.0/WSS ") and ".invalid;" in invite.get_all("via")[-1]
    assert invite.get_all("content-type") == ["application/sdp"]
    assert len(carol.requests("BYE")) >= 1


def test_a_sipp_call_over_udp_is_answered_by_jssip_and_hung_up_by_sipp(
    proxy: PhoneServer, browser: Chromium, sipps: Peers
) -> None:
    assert start_phone(browser, proxy, "alice") == "registered"
    caller = sipp_caller(sipps, "webrtc_uac.xml", "alice", hold_ms=500)

    incoming = wait_event(browser, "alice", "call:new:incoming")
    assert incoming["remote"] == f"sip:caller@{DOMAIN}"
    act(browser, "answer", "alice")
    wait_event(browser, "alice", "call:confirmed")  # sipp's ACK reached the browser
    ended = wait_event(browser, "alice", "call:ended")  # and so did its BYE
    assert ended["originator"] == "remote" and ended["cause"] == "Terminated"
    finished(caller)  # the BYE's 200 came back


def test_jssip_hangs_up_a_call_from_sipp(proxy: PhoneServer, browser: Chromium, sipps: Peers) -> None:
    assert start_phone(browser, proxy, "alice") == "registered"
    caller = sipp_caller(sipps, "webrtc_uac_hungup.xml", "alice")

    wait_event(browser, "alice", "call:new:incoming")
    act(browser, "answer", "alice")
    wait_event(browser, "alice", "call:confirmed")
    act(browser, "hangup", "alice")
    assert wait_event(browser, "alice", "call:ended")["originator"] == "local"
    finished(caller)  # the browser's BYE reached sipp, which answered it
    assert len(caller.requests("BYE")) >= 1


def test_two_jssip_phones_call_each_other(proxy: PhoneServer, browser: Chromium) -> None:
    """Two UAs in one page, each with its own WebSocket: alice calls bob and he hangs up; he calls her and she does."""
    assert start_phone(browser, proxy, "alice") == "registered"
    assert start_phone(browser, proxy, "bob") == "registered"
    assert {b["aor"]: b["transport"] for b in api_bindings(proxy)} == {
        f"sip:alice@{DOMAIN}": "WSS",
        f"sip:bob@{DOMAIN}": "WSS",
    }

    call_and_hang_up(browser, "alice", "bob", hangs_up="bob")
    call_and_hang_up(browser, "bob", "alice", hangs_up="alice")


def call_and_hang_up(browser: Chromium, caller: str, callee: str, *, hangs_up: str) -> None:
    before = {user: len(state(browser, user)["events"]) for user in (caller, callee)}

    def new_event(user: str, wanted: str) -> Callable[[], dict[str, Any] | None]:
        return lambda: next((e for e in state(browser, user)["events"][before[user] :] if e["type"] == wanted), None)

    def wait(user: str, wanted: str) -> dict[str, Any]:
        return browser.wait_for(new_event(user, wanted), f"{user}'s {wanted}", timeout=15)  # type: ignore[no-any-return]

    act(browser, "call", caller, f"sip:{callee}@{DOMAIN}")
    assert wait(callee, "call:new:incoming")["remote"] == f"sip:{caller}@{DOMAIN}"
    act(browser, "answer", callee)
    wait(caller, "call:confirmed")
    wait(callee, "call:confirmed")  # the caller's ACK reached the callee's browser
    # Media flows between the two browsers (ICE connected), on loopback only.
    for user in (caller, callee):
        browser.wait_for(lambda u=user: state(browser, u)["ice"] in ("connected", "completed"), f"{user}'s ICE")
        assert set(state(browser, user)["candidates"]) == {LOOPBACK}
    act(browser, "hangup", hangs_up)
    other = callee if hangs_up == caller else caller
    assert wait(hangs_up, "call:ended")["originator"] == "local"
    assert wait(other, "call:ended")["originator"] == "remote"  # the BYE reached the other browser
