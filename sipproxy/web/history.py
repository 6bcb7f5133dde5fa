# -*- test-case-name: tests.test_web_history -*-
"""The binding history's web face: ``/history?aor=`` (the page) and ``/api/history?aor=`` (JSON).

Each :class:`~sipproxy.location.history.HistoryEvent` becomes one line of
an address-of-record's timeline with a sentence saying what happened
(:func:`what`): "registered from UDP 192.0.2.7:5062", "removed through the
page by 127.0.0.1", "rejected: 423 Interval Too Brief (Min-Expires 60)".
Everything in it that a phone sent (contact, User-Agent, the AOR) is text:
the page is rendered with autoescaping, control characters are shown as
their Unicode control pictures, and the JSON is JSON.  Nothing of a
request's credentials is ever kept: the history holds no header but
User-Agent and Contact.
"""

from __future__ import annotations

from typing import Any

import jinja2

from sipproxy.location.history import HistoryEvent
from sipproxy.web.render import format_utc, iso_utc, readable

__all__ = ["history_json", "render_history_page", "visible", "what"]

_PICTURES = {code: 0x2400 + code for code in range(0x20)} | {0x7F: 0x2421}
"""C0 controls and DEL -> U+2400..U+2421 (``␀``, ``␛``, ``␡``): seen, never acted on."""

_SAYS = {
    "registered": "registered",
    "refreshed": "refreshed",
    "replaced": "replaced",
    "unregistered": "unregistered",
    "expired": "expired",
    "removed": "removed",
    "flow-lost": "flow lost",
    "rejected": "REGISTER rejected",
    "reloaded": "reloaded",
}


def visible(text: str) -> str:
    """Text a phone sent as the page shows it: :func:`readable`, control characters as control pictures."""
    return readable(text).translate(_PICTURES)


def what(event: HistoryEvent) -> str:
    """One sentence for ``event`` (text as the phone sent it; the caller escapes)."""
    says = _SAYS.get(event.kind, event.kind)
    if event.kind == "registered":
        line = f"registered from {event.source}" if event.source else "registered"
    elif event.kind == "refreshed" and event.count > 1:
        line = f"refreshed {event.count} times"
    elif event.kind == "rejected":
        line = f"{says}: {event.detail}"
        return f"{line} (from {event.source})" if event.source else line
    else:
        line = says
    if event.detail and event.kind != "rejected":
        line = (
            f"{line} {event.detail}"
            if event.kind in ("removed", "replaced", "unregistered")
            else f"{line}: {event.detail}"
        )
    return line


def history_json(event: HistoryEvent) -> dict[str, Any]:
    """One event as ``/api/history`` answers it (text as :func:`readable`)."""
    return {
        "at": iso_utc(event.at),
        "last_at": iso_utc(event.last_at),
        "aor": readable(event.aor),
        "kind": event.kind,
        "what": readable(what(event)),
        "contact": readable(event.contact),
        "source": event.source,
        "user_agent": readable(event.user_agent),
        "detail": readable(event.detail),
        "status": event.status,
        "count": event.count,
    }


def render_history_page(
    env: jinja2.Environment, aor: str | None, events: list[HistoryEvent], max_age: float, max_per_aor: int
) -> str:
    """The page of ``aor``'s timeline, newest first (a form to pick an AOR when ``aor`` is None)."""
    rows = [
        {
            "at": format_utc(iso_utc(e.at)),
            "last_at": format_utc(iso_utc(e.last_at)) if e.count > 1 else "",
            "kind": e.kind,
            "what": visible(what(e)),
            "contact": visible(e.contact),
            "user_agent": visible(e.user_agent),
            "status": e.status,
        }
        for e in events
    ]
    return env.get_template("history.html").render(
        aor=visible(aor) if aor is not None else None,
        query=aor or "",
        events=rows,
        max_days=round(max_age / 86400, 1),
        max_per_aor=max_per_aor,
    )
