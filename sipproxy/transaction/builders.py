# -*- test-case-name: tests.test_transaction_client -*-
"""Requests a transaction derives from an INVITE: CANCEL (RFC 3261 §9.1) and ACK for a non-2xx (§17.1.1.3)."""

from __future__ import annotations

from sipproxy.message import Request, Response
from sipproxy.transaction.interfaces import TransactionError

__all__ = ["build_ack", "build_cancel"]


def _derive(invite: Request, method: str, to: str) -> Request:
    """Request-URI, top Via, Route set, From, Call-ID and CSeq number of ``invite``; ``method`` and ``to`` given."""
    if invite.method != "INVITE":
        raise TransactionError(f"{method} is built from an INVITE, not {invite.method}")
    vias = invite.get_all("via")
    sender = invite.get("from")
    if not vias or sender is None:
        raise TransactionError(f"cannot build {method}: the INVITE has no Via or From")
    request = Request(method, invite.uri_text)
    request.add("Via", vias[0])
    for route in invite.get_all("route"):
        request.add("Route", route)
    request.add("Max-Forwards", "70")
    request.add("From", sender)
    request.add("To", to)
    request.add("Call-ID", invite.call_id)
    request.add("CSeq", f"{invite.cseq.seq} {method}")
    request.add("Content-Length", "0")
    return request


def build_cancel(invite: Request) -> Request:
    """The CANCEL for ``invite`` (RFC 3261 §9.1).

    Request-URI, Call-ID, To, From and the CSeq number are the INVITE's (tags
    included); the method is CANCEL; a single Via equal to the INVITE's top
    Via (so the CANCEL takes the same branch and reaches the same server,
    which matches it per §9.2); the INVITE's Route headers; Max-Forwards: 70;
    no body.
    """
    to = invite.get("to")
    if to is None:
        raise TransactionError("cannot build CANCEL: the INVITE has no To")
    return _derive(invite, "CANCEL", to)


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK a client transaction sends for a 300-699 final ``response`` to ``invite`` (RFC 3261 §17.1.1.3).

    Request-URI, Call-ID, From and the CSeq number are the INVITE's, the
    method is ACK, To is the response's (with the tag it added), Via is only
    the INVITE's top Via, and the INVITE's Route headers are kept.
    """
    to = response.get("to")
    if to is None:
        raise TransactionError("cannot build ACK: the response has no To")
    return _derive(invite, "ACK", to)
