# -*- test-case-name: tests.test_transaction_layer -*-
"""What the transaction layer exchanges with its neighbours: the transport below, the TUs above.

Addresses (:class:`Source`, :class:`Target`) live in :mod:`sipproxy.net`, shared with the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sipproxy.net import RELIABLE_TRANSPORTS, Source, Target, is_reliable

if TYPE_CHECKING:
    from sipproxy.message import Request, Response
    from sipproxy.transaction.client import ClientTransaction
    from sipproxy.transaction.server import ServerTransaction

__all__ = [
    "RELIABLE_TRANSPORTS",
    "ClientTransactionUser",
    "Source",
    "Target",
    "TransactionError",
    "TransactionUser",
    "Transport",
    "is_reliable",
]


class TransactionError(Exception):
    """A local misuse of a transaction (h11's ``LocalProtocolError``): nothing was sent.

    Raised, for example, by :meth:`ServerTransaction.respond` for a second
    final response, or by :meth:`TransactionLayer.send_request` for an ACK.
    """


class Transport(Protocol):
    """The transport layer as the transactions see it (implemented by ``sipproxy.transport``)."""

    def send_request(self, request: Request, target: Target, on_error: Callable[[str], None]) -> None:
        """Send ``request`` to ``target``; report failures through ``on_error`` (now or later), never raise."""

    def send_response(self, response: Response, source: Source) -> object:
        """Send ``response`` per §18.2.2, using the request's ``source`` and the response's top Via.

        Returns a token for :meth:`resend_response`: what it takes to send
        the same bytes to the same place again, without the message.
        """

    def resend_response(self, sent: object) -> None:
        """Send again what :meth:`send_response` sent and returned ``sent`` for (a retransmission)."""


class TransactionUser(Protocol):
    """The core that receives new requests (the stack's dispatch to registrar and proxy)."""

    def request_received(self, request: Request, source: Source, stx: ServerTransaction | None) -> None:
        """A new request; retransmissions never reach here.

        ``stx`` is ``None`` only for an ACK that is not for a non-2xx final
        response of ours: an ACK for a 2xx, which a proxy forwards statelessly.
        """

    def response_received(self, response: Response, source: Source) -> None:
        """A response that matched no client transaction (a 2xx retransmission, a stray)."""


class ClientTransactionUser(Protocol):
    """Whoever sent a request through :meth:`TransactionLayer.send_request` (a proxy branch)."""

    def response_received(self, ctx: ClientTransaction, response: Response) -> None:
        """A provisional or final response; retransmitted finals are absorbed, except INVITE 2xx (RFC 6026)."""

    def timed_out(self, ctx: ClientTransaction) -> None:
        """Timer B or F fired before a final response arrived."""

    def transport_failed(self, ctx: ClientTransaction, reason: str) -> None:
        """The transport could not deliver the request; the transaction is already Terminated."""

    def terminated(self, ctx: ClientTransaction) -> None:
        """The transaction is over (Terminated, out of the table): nothing more comes from it.

        Called once, after the transaction let go of its user, so that what
        the user holds of it can go too (reference counting frees them; no
        cycle is left for the garbage collector).
        """
