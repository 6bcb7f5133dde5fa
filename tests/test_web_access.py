"""Who may use the bindings page: the Host check on a loopback listener (DNS rebinding), in process."""

from __future__ import annotations

import json

import pytest
from twisted.logger import capturedLogs

from sipproxy.web.access import HostCheck

try:
    from tests.web_helpers import ALICE, Web, get, make_binding
except ImportError:  # pragma: no cover
    from web_helpers import ALICE, Web, get, make_binding  # type: ignore[no-redef]

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
