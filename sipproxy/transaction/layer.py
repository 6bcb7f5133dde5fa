# -*- test-case-name: tests.test_transaction_layer -*-
"""The transaction layer: the tables of client and server transactions and the matching (RFC 3261 §17).

Between the transport (below) and the TUs (above): requests and responses
from the wire are matched to transactions (§17.1.3, §17.2.3) or handed to
the TU; requests from a TU get a client transaction.

Exceptions raised by a TU or owner callback propagate to the caller of
``receive_request``/``receive_response`` (or to the clock, for timer-driven
callbacks) after the layer's state is consistent: every transaction has
taken its transition and the tables are up to date before any callback
runs.  One addition: if ``tu.request_received`` raises for a new request
that has not been answered with a final response, the layer answers 500
before re-raising, so that the server transaction terminates instead of
lingering.

Messages handed to ``receive_*`` must come from ``parse_message`` (Via,
CSeq, Call-ID, From and To present and well formed); otherwise the
``ParseError`` raised while computing the matching key propagates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sipproxy.message import Request, Response
from sipproxy.transaction.builders import build_cancel
from sipproxy.transaction.client import ClientTransaction, InviteClientTransaction, NonInviteClientTransaction
from sipproxy.transaction.interfaces import (
    ClientTransactionUser,
    Source,
    Target,
    TransactionError,
    TransactionUser,
    Transport,
)
from sipproxy.transaction.keys import ClientKey, ServerKey, ack_key, cancel_target_key, client_key, server_key
from sipproxy.transaction.machine import Environment, Machine
from sipproxy.transaction.server import InviteServerTransaction, NonInviteServerTransaction, ServerTransaction
from sipproxy.transaction.timers import Clock, DelayedCall, LingerQueues, TimerSettings

__all__ = ["TransactionLayer"]


def _ignore_error(reason: str) -> None:
    """``on_error`` for stateless sends: nobody to tell."""


class TransactionLayer:
    """Client and server transactions, matched by §17.1.3 and §17.2.3.

    ``on_server_timeout(stx)``, when given, is called when an INVITE server
    transaction's Timer H fires without an ACK (§17.2.1: "inform the TU that
    a transaction failure has occurred"); the transaction is already
    Terminated.
    """

    def __init__(
        self,
        clock: Clock,
        transport: Transport,
        tu: TransactionUser,
        settings: TimerSettings = TimerSettings(),
        *,
        on_server_timeout: Callable[[ServerTransaction], None] | None = None,
    ) -> None:
        self.clock = clock
        self.transport = transport
        self.tu = tu
        self.settings = settings
        self._on_server_timeout = on_server_timeout
        self._server: dict[ServerKey, ServerTransaction] = {}
        self._ack_aliases: dict[ServerKey, ServerTransaction] = {}
        self._client: dict[ClientKey, ClientTransaction] = {}
        self._deferred: set[DelayedCall] = set()
        self._closed = False
        self._env = Environment(
            clock=clock,
            transport=transport,
            settings=settings,
            terminated=self._terminated,
            defer=self._defer,
            add_ack_key=self._add_ack_key,
            server_timed_out=self._server_timed_out,
            lingering=LingerQueues(clock),
        )

    # -- from the transport ------------------------------------------------------

    def is_retransmission(self, request: Request) -> bool:
        """Does ``request`` match a live server transaction (§17.2.3)?  ACKs never do here."""
        return request.method != "ACK" and server_key(request) in self._server

    def receive_request(self, request: Request, source: Source) -> None:
        """A request from the wire (§17.2.3).

        A retransmission goes to its server transaction (which resends its
        last response); an ACK for a non-2xx final is absorbed by its INVITE
        transaction; an ACK matching an Accepted INVITE transaction, or
        nothing, goes to ``tu.request_received(ack, source, None)``; anything
        else creates a server transaction and goes to
        ``tu.request_received(request, source, stx)``.
        """
        if self._closed:
            return
        if request.method == "ACK":
            key = ack_key(request)
            matched = self._server.get(key) or self._ack_aliases.get(key)
            if matched is not None and not matched.receive_ack(request):
                return
            self.tu.request_received(request, source, None)
            return
        key = server_key(request)
        existing = self._server.get(key)
        if existing is not None:
            existing.receive_retransmission(request)
            return
        cls = InviteServerTransaction if request.method == "INVITE" else NonInviteServerTransaction
        stx = cls(request, source, self._env, key)
        self._server[key] = stx
        stx.start()
        try:
            self.tu.request_received(request, source, stx)
        except Exception:
            stx.abandon()
            raise

    def receive_response(self, response: Response, source: Source) -> None:
        """A response from the wire: to its client transaction (§17.1.3), else to ``tu.response_received``."""
        if self._closed:
            return
        key = client_key(response)
        ctx = self._client.get(key) if key is not None else None
        if ctx is None:
            self.tu.response_received(response, source)
            return
        ctx.receive_response(response)

    # -- from a TU -------------------------------------------------------------

    def send_request(self, request: Request, target: Target, owner: ClientTransactionUser) -> ClientTransaction:
        """Send ``request`` to ``target`` in a new client transaction (§17.1).

        The request must already carry our top Via with a unique branch.
        Raises :class:`TransactionError` for an ACK (never a transaction:
        use :meth:`send_stateless`), a request without a branch, a CSeq
        method that differs from the method, a branch already in use for
        this method, or after :meth:`close`.
        """
        if self._closed:
            raise TransactionError("the transaction layer is closed")
        if request.method == "ACK":
            raise TransactionError("ACK is not sent in a client transaction (§17.1.1.3, §13.2.2.4)")
        if request.cseq.method != request.method:
            raise TransactionError(f"CSeq method {request.cseq.method} differs from {request.method}")
        key = client_key(request)
        if key is None:
            raise TransactionError("the request's top Via has no branch")
        if key in self._client:
            raise TransactionError(f"a {key[1]} client transaction with branch {key[0]} exists")
        cls = InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
        ctx = cls(request, target, owner, self._env, key)
        self._client[key] = ctx
        ctx.start()
        return ctx

    def send_stateless(self, request: Request, target: Target, on_error: Callable[[str], None] | None = None) -> None:
        """Send a request outside any transaction: an ACK for a 2xx forwarded by a proxy (§16.11)."""
        self.transport.send_request(request, target, on_error or _ignore_error)

    def build_cancel(self, invite: Request) -> Request:
        """:func:`sipproxy.transaction.build_cancel` (§9.1), for TUs that see the layer only."""
        return build_cancel(invite)

    def find_invite_server_transaction(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction ``cancel`` cancels (§9.2), if it is still alive."""
        stx = self._server.get(cancel_target_key(cancel))
        return stx if isinstance(stx, InviteServerTransaction) else None

    # -- metrics and shutdown ------------------------------------------------------

    def server_transaction_count(self) -> int:
        return len(self._server)

    def client_transaction_count(self) -> int:
        return len(self._client)

    def server_transactions(self) -> list[ServerTransaction]:
        return list(self._server.values())

    def client_transactions(self) -> list[ClientTransaction]:
        return list(self._client.values())

    def close(self) -> None:
        """Cancel every timer and forget every transaction, telling nobody; later input is ignored."""
        self._closed = True
        for tx in [*self._server.values(), *self._client.values()]:
            tx._shutdown()
        self._server.clear()
        self._ack_aliases.clear()
        self._client.clear()
        for call in self._deferred:
            if call.active():
                call.cancel()
        self._deferred.clear()

    # -- the transactions' environment ----------------------------------------------

    def _terminated(self, tx: Machine) -> None:
        if isinstance(tx, ServerTransaction):
            if self._server.get(tx.key) is tx:
                del self._server[tx.key]
            for key in tx.ack_keys:
                if self._ack_aliases.get(key) is tx:
                    del self._ack_aliases[key]
        elif isinstance(tx, ClientTransaction) and self._client.get(tx.key) is tx:
            del self._client[tx.key]

    def _add_ack_key(self, tx: Machine, key: ServerKey) -> None:
        if isinstance(tx, ServerTransaction):
            self._ack_aliases[key] = tx

    def _server_timed_out(self, tx: Machine) -> None:
        if self._on_server_timeout is not None and isinstance(tx, ServerTransaction):
            self._on_server_timeout(tx)

    def _defer(self, f: Callable[..., object], *args: Any) -> None:
        call: DelayedCall | None = None

        def run() -> None:
            self._deferred.discard(call)
            f(*args)

        call = self.clock.callLater(0, run)
        self._deferred.add(call)
