# -*- test-case-name: tests.test_web -*-
"""The web face of sipproxy: the live bindings page, its JSON API, health and metrics."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from sipproxy.calls.ring import RecentCalls
from sipproxy.location import LocationService
from sipproxy.location.history import BindingHistory
from sipproxy.metrics import Metrics
from sipproxy.net import Clock
from sipproxy.web.app import BindingsPage, Explain
from sipproxy.web.render import FlowState, make_environment
from sipproxy.web.streams import MAX_STREAMS

__all__ = ["BindingsPage", "QuietSite", "is_loopback_description", "make_environment", "make_web_resource"]

_POLLED = frozenset({b"/metrics", b"/healthz", b"/api/events", b"/api/bindings", b"/api/call-events", b"/api/calls"})


class QuietSite(Site):
    """A ``Site`` whose access log leaves out what machines poll.

    Successful GETs of ``/metrics`` (Prometheus scrapes), ``/healthz``, the
    event stream (one line per browser reconnect) and ``/api/bindings`` (the
    page's polling fallback, every 2 s) are not logged; page loads, removals
    and every error are.
    """

    noisy = False

    def log(self, request: Request) -> None:
        if request.method in (b"GET", b"HEAD") and request.path in _POLLED and request.code < 400:
            return
        super().log(request)


def make_web_resource(
    store: LocationService,
    clock: Clock,
    metrics: Metrics,
    healthy: Callable[[], bool | str],
    password: str | None = None,
    public: bool = False,
    debug: bool = False,
    hosts: Iterable[str] = (),
    max_streams: int = MAX_STREAMS,
    calls: RecentCalls | None = None,
    explain: Explain | None = None,
    flow: FlowState | None = None,
    history: BindingHistory | None = None,
) -> IResource:
    """The resource to serve with ``twisted.web.server.Site``.

    ``public`` says the listener is reachable beyond loopback (see
    :func:`is_loopback_description`); then removing bindings needs
    ``password``, and without one the page is read-only. ``debug``
    (``--debug``) logs event streams opening and closing. ``hosts``: the
    server's own names, accepted in ``Host`` on a loopback listener besides
    ``localhost`` and the loopback addresses. ``max_streams``:
    ``--max-event-streams``. ``calls``: the recent calls (``--recent-calls``). ``explain``: the proxy's routing explain.
    ``flow``: each binding's flow state (RFC 5626), from the transport.
    ``history``: the binding history (``None``: off).
    """
    page = BindingsPage(
        store,
        clock,
        metrics,
        make_environment(),
        healthy,
        password=password,
        public=public,
        debug=debug,
        hosts=hosts,
        max_streams=max_streams,
        calls=calls,
        explain=explain,
        flow=flow,
        history=history,
    )
    return page.resource()


def _unescape(value: str) -> str:
    r"""Undo strports escaping (``\:`` stands for a colon inside a value)."""
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


def _split_description(description: str) -> list[str]:
    r"""Split a strports description on unescaped colons (``tcp:8080:interface=\:\:1``)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _is_loopback_interface(interface: str) -> bool:
    interface = interface.strip().strip("[]")
    if interface.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def is_loopback_description(strports_description: str) -> bool:
    r"""Whether a strports description listens on loopback only.

    True for ``tcp:8080:interface=127.0.0.1`` (any 127.x address),
    ``interface=\:\:1`` or ``interface=localhost``; False for ``tcp:8080``
    (all interfaces), any other address, and anything else, including
    ``unix:`` sockets (a reverse proxy in front of one may publish it).
    """
    parts = _split_description(strports_description)
    kind = parts[0].strip().lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() == "interface":
            return _is_loopback_interface(_unescape(value))
    return False
