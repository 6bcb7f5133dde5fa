# -*- test-case-name: tests.test_transport_sink -*-
"""Where the transport hands what it received: the message sink (RFC 3261 §18.1.2, §18.2.1).

The transport parses, stamps ``received``/``rport`` on a request's top Via
(§18.2.1, RFC 3581) and hands every message, with the bytes it came as, to
one :class:`MessageSink`.  What stands behind it is not the transport's
business: the transaction layer in the end
(``sipproxy.transaction.TransactionSink``), and filters in front of it,
such as the admission guard, which implement the same protocol and wrap
the next sink (twisted.names' ``allowQuery`` gate, as a layer).
:class:`Tapped` is such a filter: it shows a :class:`MessageTap` (the
recent calls' capture) what reached it -- behind the guard, what was
admitted, so that a refused INVITE costs the capture nothing.

A filter that refuses a request answers it statelessly with
:meth:`~sipproxy.transport.TransportLayer.send_to_source` (a :data:`Reply`),
straight back where the packet came from, whatever its Via says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sipproxy.message import ParseError, Request, Response
from sipproxy.net import Source

__all__ = ["MessageSink", "MessageTap", "Reply", "Resend", "Tapped"]

Reply = Callable[[Response, Source], object]
"""Send a response straight back to the packet's source (its connection, else its address); returns what
:data:`Resend` takes to send the same bytes again (``None``: it cannot be)."""

Resend = Callable[[object], None]
"""Send a response again, byte for byte, from what :data:`Reply` returned (no new serialization, no new copy
to the tap's listeners but a resend)."""


class MessageSink(Protocol):
    """What :class:`~sipproxy.transport.TransportLayer` hands every message from the network to."""

    def message_received(self, message: Request | Response, source: Source, data: bytes) -> None:
        """A message that parsed, ``data`` as it came from ``source``; a request's top Via already stamped (§18.2.1).

        May raise :class:`ParseError` for a message found malformed above
        the parser (a header only the transaction layer reads): the
        transport then answers it as it answers one that did not parse.
        """

    def unparseable(self, error: ParseError, source: Source, size: int) -> bool:
        """``size`` bytes from ``source`` that did not parse.

        True: the transport logs it and answers the 400 it implies (never
        for an ACK or what has no request line).  False: drop it silently
        (a blocked source, a flood).
        """


class MessageTap(Protocol):
    """Who sees the messages received (through :class:`Tapped`) and sent (the transport), with their bytes.

    The recent calls' capture.  Called on the fast path: it must be cheap
    and must not raise.  The transport has none unless one is given.
    """

    def received(self, message: Request | Response, source: Source, data: bytes) -> None:
        """A message that parsed, as ``data`` came from ``source``."""

    def sent(self, message: Request | Response | None, transport: str, host: str, port: int, data: bytes) -> None:
        """``data`` sent to ``host:port`` over ``transport``; ``message`` is None for a response sent again."""


class Tapped:
    """The next sink, with ``tap`` shown each message on its way there: a filter with nothing to refuse."""

    def __init__(self, tap: MessageTap, sink: MessageSink) -> None:
        self.tap = tap
        self.sink = sink

    def message_received(self, message: Request | Response, source: Source, data: bytes) -> None:
        self.tap.received(message, source, data)
        self.sink.message_received(message, source, data)

    def unparseable(self, error: ParseError, source: Source, size: int) -> bool:
        return self.sink.unparseable(error, source, size)
