# -*- test-case-name: tests.test_transaction_keys,tests.test_transaction_layer -*-
"""Transaction matching as dictionary keys (RFC 3261 §17.1.3, §17.2.3, §9.2).

Every rule is turned into a hashable key, so that matching is one dict
lookup.  URIs are compared per §19.1.4 because ``SipURI`` implements that
equality (and a hash consistent with it).

All functions expect messages that passed ``parse_message`` (Via, CSeq,
Call-ID, From and To present); a missing header raises ``ParseError``.
"""

from __future__ import annotations

from collections.abc import Hashable

from sipproxy.message import Request, Response, Via

__all__ = [
    "ClientKey",
    "ServerKey",
    "ack_key",
    "cancel_target_key",
    "client_key",
    "expected_ack_key",
    "server_key",
]

ServerKey = tuple[Hashable, ...]
ClientKey = tuple[str, str]


def _via_identity(via: Via) -> Hashable:
    """A top Via as §20.42 compares it: sent-protocol, sent-by and the set of parameters."""
    params = frozenset((name.lower(), None if value is None else value.lower()) for name, value in via.params.items())
    return (via.transport.upper(), via.host.lower(), via.port, params)


def server_key(request: Request, method: str | None = None) -> ServerKey:
    """The key of the server transaction ``request`` belongs to (§17.2.3).

    With the magic cookie: branch, sent-by and method, where ACK counts as
    INVITE.  Without it (RFC 2543): Request-URI, To tag, From tag, Call-ID,
    CSeq number and method, and the top Via.  ``method`` overrides the
    request's method (CANCEL matching, §9.2).  Do not use this for an ACK
    without the cookie: that one is matched by :func:`ack_key`.
    """
    method = method or request.method
    if method == "ACK":
        method = "INVITE"
    via = request.top_via
    if via.rfc3261:
        return ("3261", via.branch, via.host.lower(), via.port, method)
    return (
        "2543",
        request.uri,
        request.to.tag,
        request.from_.tag,
        request.call_id,
        request.cseq.seq,
        method,
        _via_identity(via),
    )


def ack_key(ack: Request) -> ServerKey:
    """The key an ACK is looked up by (§17.2.3).

    With the cookie it is the INVITE's key.  Without it the ACK matches the
    INVITE's Request-URI, From tag, Call-ID, CSeq number and top Via, and the
    To tag of the response the server transaction sent: see
    :func:`expected_ack_key`, registered when that response is sent.
    """
    via = ack.top_via
    if via.rfc3261:
        return server_key(ack)
    return ("2543-ACK", ack.uri, ack.to.tag, ack.from_.tag, ack.call_id, ack.cseq.seq, _via_identity(via))


def expected_ack_key(invite: Request, response: Response) -> ServerKey | None:
    """For an RFC 2543 INVITE, the key its ACK will have once ``response`` is sent; ``None`` with the cookie."""
    via = invite.top_via
    if via.rfc3261:
        return None
    return (
        "2543-ACK",
        invite.uri,
        response.to.tag,
        invite.from_.tag,
        invite.call_id,
        invite.cseq.seq,
        _via_identity(via),
    )


def cancel_target_key(cancel: Request) -> ServerKey:
    """The key of the INVITE server transaction a CANCEL cancels (§9.2): the CANCEL's own key, method INVITE."""
    return server_key(cancel, method="INVITE")


def client_key(message: Request | Response) -> ClientKey | None:
    """Top Via branch and CSeq method (§17.1.3); ``None`` when the top Via has no branch."""
    branch = message.top_via.branch
    if not branch:
        return None
    return (branch, message.cseq.method)
