"""Cutting SIP messages out of a byte stream (RFC 3261 §18.3, RFC 5626 §3.5.1).

On TCP and TLS a message ends where its Content-Length says, so the header
is mandatory.  Between messages a peer may send CRLFCRLF as a keep-alive
"ping"; the transport answers it with a single CRLF "pong".
"""

from __future__ import annotations

import re

from sipproxy.message.errors import ParseError

__all__ = ["StreamFramer", "KeepAlive", "KEEPALIVE", "FramingError"]

#: The first Content-Length line and its continuation lines (§7.3.1 folding).
_CONTENT_LENGTH = re.compile(rb"(?:^|\r?\n)(?:content-length|l)[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE)


class KeepAlive:
    """A CRLFCRLF ping between messages."""

    def __repr__(self) -> str:
        return "KEEPALIVE"


KEEPALIVE = KeepAlive()


class FramingError(ParseError):
    """The stream cannot be framed any further; the connection must close.

    ``head`` holds the header block that was read, if any, so that a 400 (or
    the 513 of a message over ``max_message``) can still be built for it.
    """

    def __init__(self, reason: str, head: bytes = b"", status: int = 400) -> None:
        super().__init__(reason, status)
        self.head = head


class StreamFramer:
    """Feed arbitrary chunks with :meth:`feed`; get whole messages and keep-alives back.

    Memory is bounded: a header block longer than ``max_head`` or a body
    longer than ``max_body`` is a :class:`FramingError`; so is, with
    ``max_message``, a message larger than that which has not arrived whole
    (513 once its header block is read: RFC 3261 §21.5.14), so that no
    more than ``max_message`` bytes are ever buffered for what will be
    refused.  The buffer is never rescanned from its start, so a slow peer
    costs linear time.
    """

    def __init__(self, max_head: int = 65536, max_body: int = 1 << 20, max_message: int | None = None) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.max_message = max_message
        self._head_limit = max_head if max_message is None else min(max_head, max_message)
        self._buf = bytearray()
        self._scanned = 0
        self._head_end: int | None = None
        self._need: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | KeepAlive]:
        self._buf += data
        out: list[bytes | KeepAlive] = []
        while True:
            item = self._next()
            if item is None:
                return out
            out.append(item)

    def _next(self) -> bytes | KeepAlive | None:
        buf = self._buf
        if self._head_end is None:
            while buf[:2] == b"\r\n":
                if buf[:4] == b"\r\n\r\n":
                    del buf[:4]
                    self._scanned = 0
                    return KEEPALIVE
                if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                    return None
                del buf[:2]
                self._scanned = 0
            end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
            if end < 0:
                self._scanned = len(buf)
                if len(buf) > self._head_limit:
                    raise FramingError("Message header too large")
                return None
            if end > self.max_head:
                raise FramingError("Message header too large")
            head = bytes(buf[:end])
            m = _CONTENT_LENGTH.search(head)
            if m is None:
                raise FramingError("Missing Content-Length", head)
            value = m.group(1).split()
            if len(value) != 1 or not value[0].isdigit() or len(value[0]) > 10:
                raise FramingError("Bad Content-Length", head)
            length = int(value[0])
            if length > self.max_body:
                raise FramingError("Message body too large", head)
            self._head_end = end + 4
            self._need = self._head_end + length
            if self.max_message is not None and self._need > self.max_message and len(buf) < self._need:
                raise FramingError("Message Too Large", head, 513)
        assert self._need is not None
        if len(buf) < self._need:
            return None
        message = bytes(buf[: self._need])
        del buf[: self._need]
        self._head_end = None
        self._need = None
        self._scanned = 0
        return message
