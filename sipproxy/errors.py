# -*- test-case-name: tests.test_errors -*-
"""One way to refuse a request: raise :class:`SipError` carrying the response it implies.

h11's ``error_status_hint`` and h2's ``error_code`` in SIP's terms: the
registrar, the proxy's checks, the stack and the security hooks raise it;
the one place that answers the request (``stack.py`` for the cores, the
registrar's ``handle``) turns it into the response.  A parse error of the
message layer is :class:`sipproxy.message.ParseError`, which carries its
status the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SipError"]


class SipError(Exception):
    """A refusal: ``status`` with ``reason`` (``None``: the status's standard phrase) and extra headers.

    ``headers`` are (name, value) pairs added to the response in order, for
    example ``[("Min-Expires", "60")]`` with a 423 or ``[("Unsupported",
    "foo")]`` with a 420.
    """

    def __init__(self, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()) -> None:
        if not 300 <= status <= 699:
            raise ValueError(f"a refusal is a final non-2xx status, not {status}")
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)

    def __repr__(self) -> str:
        return f"SipError({self.status}, {self.reason!r}, {list(self.headers)!r})"
