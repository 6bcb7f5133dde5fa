"""The one exception the message layer raises, carrying the reply it implies."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipproxy.message.message import Request

__all__ = ["ParseError"]


class ParseError(ValueError):
    """Bytes or a header value that RFC 3261 does not allow.

    ``status`` and ``reason`` are the response a server should send (RFC 3261
    §21: 400 with a phrase that says what was wrong, 505, 416...).  When the
    failure happened in a request whose Via, From, To, Call-ID and CSeq could
    be read, ``partial`` holds that request so that the response can be built
    (RFC 3261 §8.2.6); otherwise it is ``None`` and the input can only be
    dropped.
    """

    def __init__(self, reason: str, status: int = 400, partial: Request | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.partial = partial

    def __str__(self) -> str:
        # ``reason`` may be refined on the way up (e.g. "... in From"), so build the text late.
        return f"{self.status} {self.reason}"

    def in_header(self, name: str) -> ParseError:
        """Say which header was wrong: ``Empty parameter`` -> ``Bad Via: empty parameter``."""
        reason = self.reason
        if name not in reason:
            if len(reason) > 1 and reason[0].isupper() and reason[1].islower():
                reason = reason[0].lower() + reason[1:]
            self.reason = f"Bad {name}: {reason}"
        return self

    def with_partial(self, partial: Request | None) -> ParseError:
        """Return this error carrying ``partial`` (the request read so far)."""
        self.partial = partial
        return self
