# -*- test-case-name: tests.test_web_calls -*-
"""The Recent calls page's values: calls as JSON, each call's ladder, and their live stream.

- :func:`call_json`: one :class:`~sipproxy.calls.ring.CallEntry` as the
  ``/api/calls`` list shows it (who, when, outcome, setup time, branches).
- :func:`ladder_json`: its call flow for ``/api/calls/<Call-ID>``: the
  parties (caller, sipproxy, every other peer, in the order they first
  appear), one arrow per message with its label (method or status),
  time from the first message, retransmissions marked, and the message
  text with ``Authorization`` and ``Proxy-Authorization`` masked.
- :class:`CallHub`: ``/api/call-events``, one ``call`` event per finished
  call for open pages, bounded like the bindings stream
  (:mod:`sipproxy.web.events`: a number of streams, a buffer per stream,
  one write per stream per reactor turn).

Everything here is data for the page's script, which puts it in the page
with ``textContent`` only: a message text is what a peer sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jinja2
from twisted.web.server import Request

from sipproxy.calls import BranchRecord, CallRecord, call_line
from sipproxy.calls.ring import CallEntry, CapturedMessage, RecentCalls
from sipproxy.net import Clock, DelayedCall
from sipproxy.web.render import iso_utc
from sipproxy.web.streams import STREAM_BUFFER, StreamHub, sse_message

__all__ = [
    "EMPTY_CALL",
    "MAX_LISTED",
    "CallHub",
    "call_json",
    "calls_answer",
    "ladder_json",
    "masked",
    "render_calls_page",
]

MAX_LISTED = 500
"""Calls in one page or one ``/api/calls`` answer at most (the newest): rendered in the reactor, between SIP."""

_CREDENTIALS = re.compile(r"^((?:proxy-)?authorization[ \t]*:[ \t]*)(\S+)[^\r\n]*", re.IGNORECASE | re.MULTILINE)


def masked(text: str) -> str:
    """``text`` with the value of every ``Authorization`` and ``Proxy-Authorization`` line hidden (its scheme kept)."""
    return _CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)} (credentials hidden)", text)


def _branch_json(branch: BranchRecord) -> dict[str, Any]:
    return {
        "target": branch.target,
        "aor": branch.aor,
        "transport": branch.transport,
        "host": branch.host,
        "port": branch.port,
        "status": branch.status,
        "reason": branch.reason,
        "why": branch.why,
        "outcome": branch.outcome,
    }


def record_json(record: CallRecord) -> dict[str, Any]:
    return {
        "method": record.method,
        "call_id": record.call_id,
        "caller": record.caller,
        "callee": record.callee,
        "source": record.source,
        "started_at": iso_utc(record.started),
        "setup": round(record.setup, 3),
        "status": record.status,
        "reason": record.reason,
        "why": record.why,
        "in_dialog": record.in_dialog,
        "branches": [_branch_json(b) for b in record.branches],
        "answered_by": record.answered_by,
        "line": call_line(record),
    }


EMPTY_CALL: dict[str, Any] = {
    "method": "",
    "call_id": "",
    "caller": "",
    "callee": "",
    "source": "",
    "started_at": "",
    "setup": 0,
    "status": 0,
    "reason": "",
    "why": "",
    "in_dialog": False,
    "branches": [],
    "answered_by": None,
    "line": "",
}
"""The shape of :func:`record_json` with blank values: the page's row template for its script."""


def call_json(entry: CallEntry) -> dict[str, Any]:
    """One call of ``/api/calls``: its deciding record's fields, every record, and how many messages are kept."""
    record = entry.record
    out: dict[str, Any] = record_json(record) if record is not None else {**EMPTY_CALL, "call_id": entry.call_id}
    out["records"] = [record_json(r) for r in entry.records]
    out["messages"] = len(entry.messages)
    out["dropped"] = entry.dropped
    return out


def render_calls_page(env: jinja2.Environment, calls: RecentCalls | None) -> str:
    """The Recent calls page with the newest :data:`MAX_LISTED` calls (autoescaped: what phones sent is text)."""
    return env.get_template("calls.html").render(
        calls=[call_json(entry) for entry in calls.calls()[:MAX_LISTED]] if calls is not None else [],
        enabled=calls is not None,
        max_calls=calls.max_calls if calls is not None else 0,
        max_bytes=calls.max_bytes if calls is not None else 0,
        placeholder=EMPTY_CALL,
    )


def calls_answer(calls: RecentCalls | None, *, aor: str | None, call_id: str | None, limit: int) -> dict[str, Any]:
    """``/api/calls``: the newest ``limit`` calls matching ``aor`` / ``call_id``, ``total`` counting them all."""
    if calls is None:
        return {"calls": [], "total": 0, "enabled": False}
    found = calls.calls(aor=aor, call_id=call_id)
    return {
        "calls": [call_json(entry) for entry in found[:limit]],
        "total": len(found),
        "enabled": True,
        "kept_bytes": calls.size,
        "max_bytes": calls.max_bytes,
        "max_calls": calls.max_calls,
        "evicted": calls.evicted,
    }


def _peer(message: CapturedMessage) -> str:
    host = f"[{message.host}]" if ":" in message.host else message.host
    return f"{host}:{message.port}"


def _label(text: str) -> str:
    """An arrow's label: the method of a request, the status and reason of a response (with its CSeq method)."""
    first = text.split("\r\n", 1)[0]
    if first.startswith("SIP/2.0 "):
        cseq = re.search(r"^(?:cseq)[ \t]*:[ \t]*\d+[ \t]+(\S+)", text, re.IGNORECASE | re.MULTILINE)
        status = first[len("SIP/2.0 ") :].strip()
        return f"{status} ({cseq.group(1)})" if cseq else status
    return first.split(" ", 1)[0]


def ladder_json(entry: CallEntry) -> dict[str, Any]:
    """The call flow of ``entry``: parties and arrows (see the module docstring).

    A party is ``{"role", "name", "address"}``: the caller (the first
    message's peer), ``sipproxy``, then every other peer in the order it
    first appears, named by the branch whose target it was.
    """
    parties: list[dict[str, str]] = []
    index: dict[str, int] = {}
    names = _party_names(entry)
    arrows: list[dict[str, Any]] = []
    start = entry.messages[0].at if entry.messages else entry.created
    for message in entry.messages:
        peer = _peer(message)
        if peer not in index:
            role, name = names.get(peer, ("peer", ""))
            if not parties:
                parties.append({"role": "caller", "name": name, "address": f"{message.transport} {peer}"})
                parties.append({"role": "sipproxy", "name": "", "address": ""})
                index[peer] = 0
            else:
                index[peer] = len(parties)
                parties.append({"role": role, "name": name, "address": f"{message.transport} {peer}"})
        text = masked(message.data.decode("utf-8", "replace"))
        column = index[peer]
        arrows.append(
            {
                "from": column if message.incoming else 1,
                "to": 1 if message.incoming else column,
                "label": _label(text),
                "time": round(message.at - start, 3),
                "retransmission": message.retransmission,
                "transport": message.transport,
                "size": len(message.data),
                "text": text,
            }
        )
    return {"call_id": entry.call_id, "parties": parties, "messages": arrows, "dropped": entry.dropped}


def _party_names(entry: CallEntry) -> dict[str, tuple[str, str]]:
    """``host:port`` -> (role, name): the caller and its From URI, ``branch N`` and its target URI."""
    names: dict[str, tuple[str, str]] = {}
    for record in entry.records:
        names.setdefault(record.source.split(" ", 1)[-1], ("caller", record.caller))
        for number, branch in enumerate(record.branches, 1):
            if branch.host:
                host = f"[{branch.host}]" if ":" in branch.host else branch.host
                names.setdefault(f"{host}:{branch.port}", (f"branch {number}", branch.target))
    return names


class CallHub(StreamHub):
    """``/api/call-events``: the open pages' streams of finished calls, fed by one subscription to the ring."""

    poll = "api/calls"
    label = "Call event stream"

    def __init__(
        self,
        calls: RecentCalls,
        clock: Clock,
        *,
        max_streams: int,
        buffer_limit: int = STREAM_BUFFER,
        client: Callable[[Request], str] = lambda request: "?",
    ) -> None:
        super().__init__(clock, max_streams=max_streams, buffer_limit=buffer_limit, client=client)
        self.calls = calls
        self._pending: dict[str, CallEntry] = {}
        """Calls finished in this reactor turn, by Call-ID (a call twice in a turn is sent once)."""
        self._flush_call: DelayedCall | None = None

    def _subscribe(self) -> Callable[[], None]:
        return self.calls.subscribe(self.on_call)

    def _stopped(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._pending.clear()

    def on_call(self, entry: CallEntry) -> None:
        """Ring subscriber: the call goes to every stream at the end of the reactor turn."""
        self._pending[entry.call_id] = entry
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if not self._pending:
            return
        data = b"".join(sse_message("call", call_json(entry)) for entry in self._pending.values())
        self._pending.clear()
        for stream in list(self.streams):
            stream.send(data)
