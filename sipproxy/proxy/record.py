# -*- test-case-name: tests.test_proxy_record -*-
"""The finished-call record of a response context (RFC 3261 §16.7) or of a request the proxy answered itself.

What goes into :class:`~sipproxy.calls.CallRecord` and its ``why``:

- a 2xx: who answered (the branch whose 2xx went to the caller first);
- the caller's CANCEL (§16.10): ``cancelled by the caller``;
- every branch answered 486 or 600: ``busy`` / ``all branches busy``;
- otherwise each failed branch's own words, once: ``no answer`` (§16.8
  timeout), ``transport error: ...`` (§16.9), ``DNS: ... does not
  resolve``, ``flow gone ...`` (the TCP/TLS connection of the REGISTER
  closed and the Contact is out of reach), or the far end's status;
- no target at all (§16.5): ``no binding for <aor>``;
- answered by the proxy before any branch (§16.3): the reason phrase.

Which requests are recorded (:func:`is_recorded`): every INVITE, and
other requests without a To tag that the proxy tried to forward (it
looked for their targets) and that failed.  In-dialog requests other
than re-INVITEs are the dialog's business, not a call of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipproxy.calls import BranchRecord, CallRecord
from sipproxy.message import ParseError, Request, Response
from sipproxy.net import Source

if TYPE_CHECKING:
    from sipproxy.proxy.branch import Branch
    from sipproxy.proxy.responses import ResponseContext

__all__ = ["context_record", "is_recorded", "refused_record"]

_BUSY = frozenset({486, 600})


def is_recorded(request: Request, status: int, forwarded: bool = True) -> bool:
    """Every INVITE; any other request only when the proxy tried to forward it, it failed, and it is out of dialog.

    ``forwarded`` is False for a request the proxy refused before looking
    for targets (§16.3, the ``authorize`` hook): an INVITE is recorded
    still, a MESSAGE or OPTIONS is not (that is the refusal's own log).
    """
    if request.method == "INVITE":
        return True
    return forwarded and status >= 300 and not _in_dialog(request)


def _in_dialog(request: Request) -> bool:
    try:
        return request.to.tag is not None
    except ParseError:
        return False


def _uri(request: Request, name: str) -> str:
    try:
        return str(request.from_.uri if name == "from" else request.to.uri)
    except ParseError:
        return "?"


def _call_id(request: Request) -> str:
    try:
        return request.call_id
    except ParseError:
        return ""


def _source(source: Source) -> str:
    host = f"[{source.host}]" if ":" in source.host else source.host
    return f"{source.transport} {host}:{source.port}"


def _branch(branch: Branch) -> BranchRecord:
    final = branch.final
    status, reason = (final.status, final.reason) if final is not None else (branch.failure or (None, ""))
    hop = branch.hop
    return BranchRecord(
        target=str(branch.target.uri),
        aor=branch.target.aor,
        transport=hop.transport if hop is not None else "",
        host=hop.host if hop is not None else "",
        port=hop.port if hop is not None else 0,
        status=status,
        reason=reason,
        why=branch.why if final is None else "",
        cancelled=branch.cancel_sent or branch.cancel_wanted or (branch.settled and status is None),
    )


def _why(context: ResponseContext, final: Response, branches: list[BranchRecord]) -> str:
    if 200 <= final.status < 300:
        return ""
    if context.cancelled:
        return "cancelled by the caller"
    if branches and all(b.status in _BUSY for b in branches):
        return "busy" if len(branches) == 1 else "all branches busy"
    reasons: list[str] = []
    for b in branches:
        if b.why:
            text = b.why
        elif b.status is not None and b.status >= 300:
            text = f"{b.target} answered {b.status} {b.reason}".rstrip()
        else:
            continue
        if text not in reasons:
            reasons.append(text)
    return "; ".join(reasons) or final.reason


def context_record(context: ResponseContext, final: Response, now: float) -> CallRecord:
    """The record of ``context`` as it sends ``final`` to the caller."""
    request = context.request
    branches = [_branch(b) for b in context.branches]
    answered = None
    if 200 <= final.status < 300:
        answered = next((i for i, b in enumerate(context.branches) if b.final and b.final.status < 300), None)
    return CallRecord(
        method=request.method,
        call_id=_call_id(request),
        caller=_uri(request, "from"),
        # as received, before §16.4; a non-INVITE server transaction lets go of its request once answered
        callee=(getattr(context.stx, "request", None) or request).uri_text,
        source=_source(context.source),
        started=context.started,
        finished=now,
        status=final.status,
        reason=final.reason,
        why=_why(context, final, branches),
        branches=tuple(branches),
        answered_by=answered,
        in_dialog=_in_dialog(request),
    )


def refused_record(request: Request, source: Source, response: Response, why: str, now: float) -> CallRecord:
    """The record of a request the proxy answered itself, before any branch (§16.3, §16.5)."""
    return CallRecord(
        method=request.method,
        call_id=_call_id(request),
        caller=_uri(request, "from"),
        callee=request.uri_text,
        source=_source(source),
        started=now,
        finished=now,
        status=response.status,
        reason=response.reason,
        why=why or response.reason,
        in_dialog=_in_dialog(request),
    )
