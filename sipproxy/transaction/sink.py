# -*- test-case-name: tests.test_transaction_layer -*-
"""The transaction layer as the transport's message sink (RFC 3261 §17.1.3, §17.2.3 from the wire).

The transport hands every message it parsed to a sink
(``sipproxy.transport.MessageSink``, matched here by shape: this package
imports nothing from the transport); :class:`TransactionSink` is the last
one, behind filters such as the admission guard.  It counts what reached
the transaction layer (``sip_requests_received``, ``sip_responses_received``:
after admission) and lets the layer match it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipproxy.message import ParseError, Request, Response
from sipproxy.net import Source

if TYPE_CHECKING:
    from sipproxy.metrics import Metrics
    from sipproxy.transaction.layer import TransactionLayer

__all__ = ["TransactionSink"]


class TransactionSink:
    """Messages from the transport to :class:`~sipproxy.transaction.TransactionLayer`, counted."""

    def __init__(self, transactions: TransactionLayer, metrics: Metrics | None = None) -> None:
        self.transactions = transactions
        self.metrics = metrics

    def message_received(self, message: Request | Response, source: Source, data: bytes) -> None:
        """To the matching transaction, or the TU (§17.1.3, §17.2.3); a ``ParseError`` goes back to the transport."""
        metrics = self.metrics
        if isinstance(message, Request):
            if metrics is not None:
                metrics.method(metrics.requests_in, message.method)
            self.transactions.receive_request(message, source)
        else:
            if metrics is not None:
                metrics.status(metrics.responses_in, message.status)
            self.transactions.receive_response(message, source)

    def unparseable(self, error: ParseError, source: Source, size: int) -> bool:
        """Nothing to match: the transport answers it (400) or logs it."""
        return True
