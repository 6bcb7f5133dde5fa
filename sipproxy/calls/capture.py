# -*- test-case-name: tests.test_calls_capture -*-
"""The call-flow capture: every message of a recent call as it crosses the transport, by Call-ID.

:class:`Capture` is the transport's ``MessageTap``
(:class:`sipproxy.transport.sink.MessageTap`): a
:class:`~sipproxy.transport.sink.Tapped` sink behind the admission guard
calls it with each message admitted, the transport with each one it
sends, with the bytes on the wire.  What the guard refused never reaches
it: under overload, thousands of refused INVITEs would each take a place in
the ring and push out the ladders of the calls that went through, the ones
the operator wants to see (and each cost the capture its entry).  It keeps
the messages in the :class:`~sipproxy.calls.ring.RecentCalls` entry of
their Call-ID:

- an out-of-dialog INVITE received (no To tag) starts an entry;
- another out-of-dialog request (MESSAGE, OPTIONS, SUBSCRIBE..., not
  REGISTER, ACK or CANCEL) is held with the messages that follow it
  (:meth:`RecentCalls.hold`), until the proxy's record of its failure
  makes them a ladder, or newer ones push them out;
- any other message joins the entry of its Call-ID (or what is held for
  it) if there is one, and is forgotten at once if not (REGISTERs, other
  dialogs).

What it costs per message when it is on: a Call-ID lookup in a dict, and
for the messages of a call kept, a small object holding a reference to
the bytes that already exist (no copy).  Off (``--recent-calls 0`` or
``--recent-calls-bytes 0``), the transport has no tap at all.
"""

from __future__ import annotations

import re

from twisted.logger import Logger

from sipproxy.calls.ring import CapturedMessage, RecentCalls
from sipproxy.message import ParseError, Request, Response
from sipproxy.net import Clock, Source

__all__ = ["Capture"]

_NEVER = frozenset({"REGISTER", "ACK", "CANCEL"})
"""Requests that start nothing: the registrar's, and the two that belong to an INVITE."""

_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def _call_id(message: Request | Response) -> str | None:
    try:
        return message.call_id
    except ParseError:
        return None


class Capture:
    """The transport's message tap feeding the ring (see the module docstring)."""

    log = Logger(namespace="sipproxy.calls")

    def __init__(self, ring: RecentCalls, clock: Clock) -> None:
        self.ring = ring
        self.clock = clock

    def received(self, message: Request | Response, source: Source, data: bytes) -> None:
        """A message from ``source`` that parsed; ``data`` as it came.  Never raises (SIP goes on)."""
        try:
            self._received(message, source, data)
        except Exception:
            self.log.failure("Bug in the call capture (message received)")

    def sent(self, message: Request | Response | None, transport: str, host: str, port: int, data: bytes) -> None:
        """``data`` sent to ``host:port``; ``message`` is None for a response sent again.  Never raises."""
        try:
            self._sent(message, transport, host, port, data)
        except Exception:
            self.log.failure("Bug in the call capture (message sent)")

    def _received(self, message: Request | Response, source: Source, data: bytes) -> None:
        entries = self.ring.entries
        call_id = _call_id(message)
        if call_id is None:
            return
        entry = entries.get(call_id)
        captured = CapturedMessage(self.clock.seconds(), True, source.transport, source.host, source.port, data)
        if entry is None:
            if call_id in self.ring.pending:
                self.ring.hold(call_id, captured)
                return
            if not isinstance(message, Request) or message.method in _NEVER or _has_to_tag(message):
                return
            if message.method != "INVITE":
                self.ring.hold(call_id, captured)
                return
            entry = self.ring.start(call_id, self.clock.seconds())
        self.ring.add(entry, captured)

    def _sent(self, message: Request | Response | None, transport: str, host: str, port: int, data: bytes) -> None:
        if message is not None:
            call_id = _call_id(message)
        else:
            found = _CALL_ID.search(data)
            call_id = found.group(1).strip().decode("utf-8", "replace") if found else None
        if call_id is None:
            return
        entry = self.ring.entries.get(call_id)
        if entry is not None:
            self.ring.add(entry, CapturedMessage(self.clock.seconds(), False, transport, host, port, data))
        elif call_id in self.ring.pending:
            self.ring.hold(call_id, CapturedMessage(self.clock.seconds(), False, transport, host, port, data))


def _has_to_tag(request: Request) -> bool:
    try:
        return request.to.tag is not None
    except ParseError:
        return True
