"""Fakes for testing code that sits on the transaction layer (like ``twisted.internet.testing``): no Twisted here.

- :func:`make_request` builds a request from keyword arguments (h2's ``FrameFactory`` idea);
- :class:`RecordingTransport` records what would be sent and can fail sends;
- :class:`RecordingTU` and :class:`RecordingOwner` record the callbacks they get.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sipproxy.message import Request, Response
from sipproxy.transaction.client import ClientTransaction
from sipproxy.transaction.interfaces import Source, Target
from sipproxy.transaction.server import ServerTransaction
from sipproxy.transaction.timers import Clock

__all__ = ["RecordingOwner", "RecordingTU", "RecordingTransport", "SentRequest", "make_request"]


def make_request(
    method: str = "INVITE",
    uri: str = "sip:bob@example.test",
    *,
    branch: str | None = "z9hG4bK776asdhds",
    sent_by: str = "192.0.2.7:5060",
    transport: str = "UDP",
    via_params: str = "",
    call_id: str = "a84b4c76e66710@pc33.example.test",
    cseq: int = 314159,
    cseq_method: str | None = None,
    from_: str = "Alice <sip:alice@example.test>;tag=1928301774",
    to: str = "Bob <sip:bob@example.test>",
    extra: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> Request:
    """A well-formed request, as ``parse_message`` would have produced it (documentation addresses)."""
    via = f"SIP/2.0/{transport} {sent_by}"
    if branch is not None:
        via += f";branch={branch}"
    via += via_params
    headers = [
        ("Via", via),
        *[(name, value) for name, value in extra if name.lower() in ("via", "route")],
        ("Max-Forwards", "70"),
        ("From", from_),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {cseq_method or method}"),
        *[(name, value) for name, value in extra if name.lower() not in ("via", "route")],
        ("Content-Length", str(len(body))),
    ]
    return Request.build(method, uri, headers, body)


@dataclass
class SentRequest:
    request: Request
    target: Target
    on_error: Callable[[str], None]


@dataclass
class RecordingTransport:
    """A ``Transport`` that records; set ``fail_with`` to make every ``send_request`` fail synchronously.

    With a ``clock``, ``request_times``/``response_times`` hold when each message was sent.
    """

    clock: Clock | None = None
    requests: list[SentRequest] = field(default_factory=list)
    responses: list[tuple[Response, Source]] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    response_times: list[float] = field(default_factory=list)
    fail_with: str | None = None

    def send_request(self, request: Request, target: Target, on_error: Callable[[str], None]) -> None:
        self.requests.append(SentRequest(request, target, on_error))
        if self.clock is not None:
            self.request_times.append(self.clock.seconds())
        if self.fail_with is not None:
            on_error(self.fail_with)

    def send_response(self, response: Response, source: Source) -> tuple[Response, Source]:
        self.responses.append((response, source))
        if self.clock is not None:
            self.response_times.append(self.clock.seconds())
        return (response, source)

    def resend_response(self, sent: object) -> None:
        response, source = sent  # type: ignore[misc]
        self.send_response(response, source)

    @property
    def methods(self) -> list[str]:
        return [sent.request.method for sent in self.requests]

    @property
    def statuses(self) -> list[int]:
        return [response.status for response, _ in self.responses]

    def clear(self) -> None:
        self.requests.clear()
        self.responses.clear()
        self.request_times.clear()
        self.response_times.clear()


@dataclass
class RecordingTU:
    """A ``TransactionUser``; ``on_request(request, source, stx)`` runs after recording, e.g. to answer."""

    requests: list[tuple[Request, Source, ServerTransaction | None]] = field(default_factory=list)
    responses: list[tuple[Response, Source]] = field(default_factory=list)
    on_request: Callable[[Request, Source, ServerTransaction | None], None] | None = None

    def request_received(self, request: Request, source: Source, stx: ServerTransaction | None) -> None:
        self.requests.append((request, source, stx))
        if self.on_request is not None:
            self.on_request(request, source, stx)

    def response_received(self, response: Response, source: Source) -> None:
        self.responses.append((response, source))


@dataclass
class RecordingOwner:
    """A ``ClientTransactionUser``; ``events`` holds ``("response", ctx, status)``, ``("timeout", ctx)``,
    ``("transport", ctx, reason)``; ``on_response(ctx, response)`` runs after recording."""

    events: list[tuple[object, ...]] = field(default_factory=list)
    on_response: Callable[[ClientTransaction, Response], None] | None = None
    ended: list[ClientTransaction] = field(default_factory=list)
    """The transactions that told it they were over (``terminated``)."""

    def response_received(self, ctx: ClientTransaction, response: Response) -> None:
        self.events.append(("response", ctx, response.status))
        if self.on_response is not None:
            self.on_response(ctx, response)

    def timed_out(self, ctx: ClientTransaction) -> None:
        self.events.append(("timeout", ctx))

    def transport_failed(self, ctx: ClientTransaction, reason: str) -> None:
        self.events.append(("transport", ctx, reason))

    def terminated(self, ctx: ClientTransaction) -> None:
        self.ended.append(ctx)

    @property
    def statuses(self) -> list[int]:
        return [event[2] for event in self.events if event[0] == "response"]  # type: ignore[misc]
