"""Who may use the bindings page: the Host check (DNS rebinding), the password on a public listener, its throttle."""

from __future__ import annotations

import base64
import json

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from sipproxy.web.access import FREE_FAILURES, MAX_DELAY, HostCheck, LoginThrottle

try:
    from tests.web_helpers import ALICE, RawConnection, Web, get, make_binding
except ImportError:  # pragma: no cover
    from web_helpers import ALICE, RawConnection, Web, get, make_binding  # type: ignore[no-redef]

NAMES = ["example.test", "192.0.2.10", "::1", "2001:db8::10"]
"""What ``build_service`` passes: the domains and the advertised host."""

OURS = [
    "127.0.0.1", "127.0.0.1:8080", "127.3.4.5:80", "localhost", "LOCALHOST:8080", "localhost.", "[::1]",
    "[::1]:8080", "[0:0:0:0:0:0:0:1]:8080", "example.test", "Example.Test:8080", "192.0.2.10:8080",
    "[2001:db8::10]:8080", "[2001:DB8:0::10]",
]  # fmt: skip
NOT_OURS = [
    "127.evil.example", "127.0.0.1.evil.example", "127.evil.example:8080", "localhost.evil", "localhost.evil:8080",
    "evil.localhost", "evil.example", "example.test.evil.example", "127.1", "127.0.0.256", "::1", "[::1",
    "[::2]:8080", "[::ffff:127.0.0.1]", "127.0.0.1:abc", "127.0.0.1:99999", "127.0.0.1:", "", "[evil.example]",
]  # fmt: skip


@pytest.mark.parametrize("host", OURS)
def test_hosts_that_name_this_server(host: str) -> None:
    assert HostCheck(NAMES).problem(host.encode()) is None


@pytest.mark.parametrize("host", NOT_OURS)
def test_hosts_that_do_not(host: str) -> None:
    problem = HostCheck(NAMES).problem(host.encode())
    assert problem is not None and repr(host) in problem


def test_no_host_header_is_refused() -> None:
    assert HostCheck().problem(None) == "the request has no Host header"


ROUTES = [
    "/",
    "/api/bindings",
    "/api/bindings?aor=" + ALICE,
    "/api/events",
    "/healthz",
    "/metrics",
    "/static/bindings.js",
]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("host", ["127.evil.example", "localhost.evil:8080", "evil.example"])
def test_a_rebound_page_reads_nothing(path: str, host: str) -> None:
    """Reads on a loopback listener: a page from a rebinding name gets 403 naming its Host, and no binding."""
    web = Web(hosts=NAMES)
    web.put(make_binding())
    with capturedLogs() as events:
        connection = web.raw(get(path, host))
    assert connection.status() == 403
    assert json.loads(connection.body()) == {"error": HostCheck(NAMES).problem(host.encode())}
    assert b"alice" not in connection.body() and web.page.streams == set()
    [warning] = [e for e in events if e["log_format"].startswith("Web refused")]
    assert warning["reason"].startswith(f"Host {host!r} is not a name of this server")


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "example.test"])
def test_our_names_read_everything(path: str, host: str) -> None:
    web = Web(hosts=NAMES)
    web.put(make_binding())
    connection = web.raw(get(path, host))
    assert connection.status() == 200


def test_a_request_without_host_is_refused() -> None:
    web = Web()
    connection = web.raw(get("/api/bindings", None))
    assert connection.status() == 403
    assert json.loads(connection.body()) == {"error": "the request has no Host header"}


@pytest.mark.parametrize("host", ["127.evil.example", "127.evil.example:8080", "localhost.evil"])
def test_a_rebound_page_removes_nothing(host: str) -> None:
    """The issue's case: ``Host: 127.evil.example`` deleted bindings."""
    web = Web()
    web.put(make_binding())
    response, body = web.request("DELETE", "/api/bindings/" + ALICE, headers={"Host": host})
    assert response.code == 403
    assert "not a name of this server" in json.loads(body)["error"]
    assert web.store.count() == 1


def test_a_rebinding_page_cannot_pass_as_forwarded() -> None:
    """A rebound page is same-origin for the browser, so it may add ``X-Forwarded-For``: still refused."""
    web = Web()
    web.put(make_binding())
    connection = web.raw(get("/api/bindings", "127.evil.example", "X-Forwarded-For: 203.0.113.5"))
    assert connection.status() == 403


def test_a_public_listener_checks_no_host() -> None:
    """Beyond loopback the page is reached by whatever name the operator gave it (the password guards it)."""
    web = Web(public=True)
    assert web.raw(get("/api/bindings", "sipproxy.example.net")).status() == 200


# -- the password on a public listener, and its throttle --------------------------------------


def auth(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


RIGHT, WRONG = auth("admin", "s3cret"), auth("admin", "guess")
READS = ["/", "/api/bindings", "/api/events", "/static/bindings.js"]


@pytest.mark.parametrize("path", READS)
def test_public_reads_need_the_password(path: str) -> None:
    """A public page showed every binding's address, User-Agent and Call-ID to anyone."""
    web = Web(public=True, password="s3cret")
    web.put(make_binding())
    refused = web.raw(get(path, "sipproxy.example.net"), peer="198.51.100.7")
    assert refused.status() == 401
    assert b'\r\nwww-authenticate: basic realm="sipproxy", charset="utf-8"' in refused.received().lower()
    assert b"alice" not in refused.received() and web.page.streams == set()
    assert web.raw(get(path, "sipproxy.example.net", RIGHT), peer="198.51.100.7").status() == 200


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_health_and_metrics_stay_open(path: str) -> None:
    web = Web(public=True, password="s3cret")
    assert web.raw(get(path, "sipproxy.example.net"), peer="198.51.100.7").status() == 200


def test_reads_through_a_reverse_proxy_need_the_password() -> None:
    web = Web(password="s3cret")
    assert web.raw(get("/api/bindings", "127.0.0.1", "X-Forwarded-For: 203.0.113.5")).status() == 401
    assert web.raw(get("/api/bindings", "127.0.0.1")).status() == 200  # on loopback itself: open


def attempt(web: Web, credentials: str, peer: str = "198.51.100.7", *headers: str) -> RawConnection:
    return web.raw(get("/api/bindings", "sipproxy.example.net", credentials, *headers), peer=peer)


def retry_after(connection: RawConnection) -> int:
    [line] = [x for x in connection.received().split(b"\r\n") if x.lower().startswith(b"retry-after:")]
    return int(line.split(b":")[1])


def test_wrong_passwords_are_throttled_with_a_growing_delay() -> None:
    web = Web(public=True, password="s3cret")
    assert [attempt(web, WRONG).status() for _ in range(FREE_FAILURES - 1)] == [401] * (FREE_FAILURES - 1)
    blocked = attempt(web, WRONG)
    assert (blocked.status(), retry_after(blocked)) == (429, 1)
    assert "too many wrong passwords from 198.51.100.7" in json.loads(blocked.body())["error"]
    assert attempt(web, RIGHT).status() == 429  # while it waits, not even the right password is looked at
    delays = []
    for _ in range(4):
        web.clock.advance(retry_after(blocked))
        blocked = attempt(web, WRONG)
        delays.append(retry_after(blocked))
    assert delays == [2, 4, 8, 16]
    web.clock.advance(16)
    assert attempt(web, RIGHT).status() == 200
    assert attempt(web, WRONG).status() == 401  # a success starts the count again


def test_one_address_guessing_blocks_no_one_else() -> None:
    web = Web(public=True, password="s3cret")
    for _ in range(FREE_FAILURES):
        attempt(web, WRONG, "198.51.100.7")
    assert attempt(web, RIGHT, "198.51.100.8").status() == 200
    assert attempt(web, RIGHT, "198.51.100.7").status() == 429  # the other's success reset nothing here


def test_a_public_guesser_cannot_escape_by_writing_x_forwarded_for() -> None:
    web = Web(public=True, password="s3cret")
    for i in range(FREE_FAILURES):
        attempt(web, WRONG, "198.51.100.7", f"X-Forwarded-For: 203.0.113.{i}")
    assert attempt(web, RIGHT, "198.51.100.7", "X-Forwarded-For: 203.0.113.99").status() == 429


def test_behind_a_reverse_proxy_clients_are_counted_apart() -> None:
    web = Web(password="s3cret")
    for _ in range(FREE_FAILURES):
        web.raw(get("/", "127.0.0.1", WRONG, "X-Forwarded-For: 10.0.0.1, 203.0.113.5"))
    assert web.raw(get("/", "127.0.0.1", RIGHT, "X-Forwarded-For: 203.0.113.5")).status() == 429
    assert web.raw(get("/", "127.0.0.1", RIGHT, "X-Forwarded-For: 203.0.113.6")).status() == 200


def test_a_blocked_guesser_is_logged_once_at_info() -> None:
    web = Web(public=True, password="s3cret")
    with capturedLogs() as events:
        for _ in range(50):
            attempt(web, WRONG)
            web.clock.advance(MAX_DELAY)
    said = [(e["log_level"].name, formatEvent(e)) for e in events if "throttled" in e.get("log_format", "")]
    assert said == [
        ("info", "Web password attempts from 198.51.100.7 throttled after 5 failures "
         "(each further one waits longer, up to 900 s)"),
    ]  # fmt: skip


def test_a_request_without_credentials_is_no_failure() -> None:
    """A browser's first request carries none: it gets the 401 challenge, and counts for nothing."""
    web = Web(public=True, password="s3cret")
    for _ in range(20):
        assert web.raw(get("/", "sipproxy.example.net"), peer="198.51.100.7").status() == 401
    assert attempt(web, RIGHT).status() == 200


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    throttle = LoginThrottle(Clock(), max_tracked=3)
    for i in range(10):
        for _ in range(FREE_FAILURES):
            throttle.failed(f"198.51.100.{i}")
    assert [throttle.wait(f"198.51.100.{i}") > 0 for i in range(10)] == [False] * 7 + [True] * 3


# -- start-up: no public page without a password ------------------------------------------------


@pytest.mark.parametrize("web", ["tcp:8080", "tcp:8080:interface=0.0.0.0", "tcp6:8080:interface=\\:\\:"])
def test_a_public_page_without_password_does_not_start(web: str) -> None:
    from twisted.python.usage import UsageError

    from sipproxy.tap import Options

    with pytest.raises(UsageError) as refused:
        Options().parseOptions(["--web", web])
    assert str(refused.value) == (
        f"--web {web} listens beyond loopback, where the page shows every binding's address, User-Agent and "
        "Call-ID: give --web-password (and put TLS in front, see the README) or listen on interface=127.0.0.1"
    )
    options = Options()
    options.parseOptions(["--web", web, "--web-password", "s3cret"])
    assert options["web-password"] == "s3cret"
    with pytest.raises(UsageError, match=r"^--web-password must not be empty$"):
        Options().parseOptions(["--web", web, "--web-password", ""])
