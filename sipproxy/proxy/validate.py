# -*- test-case-name: tests.test_proxy_validate -*-
"""Request validation (RFC 3261 §16.3) and the loop-detection part of our branch (§16.6 step 8).

``validate_request`` returns the response to send instead of forwarding, or
``None`` when the request may go on.  It never raises: a malformed header
surfaces as a ``ParseError`` and becomes the 400 it carries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from sipproxy.message import MAGIC_COOKIE, ParseError, Request, Response, make_response
from sipproxy.proxy.routing import Locality

__all__ = [
    "ALLOW",
    "SUPPORTED_SCHEMES",
    "loop_part",
    "make_branch",
    "split_branch",
    "validate_request",
    "check_syntax",
    "is_looped",
]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK, PUBLISH"
"""What we answer an OPTIONS with when Max-Forwards reached 0 (§16.3 step 3, §11.2)."""

SUPPORTED_SCHEMES = frozenset({"sip", "sips"})
"""§16.3 step 2: we route ``sip:`` and ``sips:``; ``tel:`` and the rest get 416 (we map no tel: numbers)."""

_LOOP_LENGTH = 16


def check_syntax(request: Request) -> None:
    """§16.3 step 1: the headers the proxy relies on parse; raises :class:`ParseError`."""
    request.vias  # noqa: B018
    request.top_via  # noqa: B018
    request.from_  # noqa: B018
    request.to  # noqa: B018
    request.call_id  # noqa: B018
    request.cseq  # noqa: B018
    request.max_forwards  # noqa: B018
    request.addresses("route")
    request.option_tags("proxy-require")


def validate_request(
    request: Request,
    locality: Locality,
    extensions: Collection[str],
    to_tag: str,
) -> Response | None:
    """RFC 3261 §16.3 steps 1-5 (step 6, Proxy-Authorization, is the ``authorize`` hook).

    1. Reasonable syntax: a ``ParseError`` from any header we use -> its
       status (400) and reason.
    2. URI scheme: not ``sip``/``sips`` -> 416.
    3. Max-Forwards: 0 -> 483, except OPTIONS, which we answer 200 ourselves.
    4. Loop detection: one of our Vias carrying this request's loop part
       -> 482 (our Via with another loop part is a spiral, and fine).
    5. Proxy-Require: tags outside ``extensions`` -> 420 with Unsupported.
    """
    try:
        check_syntax(request)  # step 1
        if request.uri.scheme not in SUPPORTED_SCHEMES:  # step 2
            return make_response(request, 416, to_tag=to_tag)
        if request.max_forwards == 0:  # step 3
            if request.method == "OPTIONS":
                response = make_response(request, 200, to_tag=to_tag)
                response.add("Allow", ALLOW)
                response.add("Accept", "application/sdp")
                return response
            return make_response(request, 483, to_tag=to_tag)
        if is_looped(request, locality):  # step 4
            return make_response(request, 482, to_tag=to_tag)
        unsupported = [tag for tag in request.option_tags("proxy-require") if tag not in extensions]  # step 5
        if unsupported:
            response = make_response(request, 420, to_tag=to_tag)
            response.add("Unsupported", ", ".join(dict.fromkeys(unsupported)))
            return response
    except ParseError as error:
        return make_response(request, error.status, error.reason, to_tag=to_tag)
    return None


# -- §16.3 step 4 and §16.6 step 8: loop detection through the branch -------


def loop_part(request: Request) -> str:
    """The loop-detection part of our branch: a hash over what routing of this request depends on.

    RFC 3261 §16.6 step 8 lists the To tag, From tag, Call-ID, the
    Request-URI as received, the CSeq number, Proxy-Require and
    Proxy-Authorization; we add the CSeq method and the Route set.  The
    topmost Via is left out on purpose: it differs on every trip around a
    loop, so including it would turn every loop into a "spiral".
    Max-Forwards is left out for the same reason.  Computed on the request
    as received, before §16.4 changes it.
    """
    cseq = request.cseq
    parts = [
        request.uri_text,
        request.from_.tag or "",
        request.to.tag or "",
        request.call_id,
        str(cseq.seq),
        cseq.method,
        ",".join(request.get_all("proxy-require")),
        ",".join(request.get_all("proxy-authorization")),
        ",".join(request.get_all("route")),
    ]
    data = "\x00".join(parts).encode("utf-8", "surrogateescape") + b"\x00"
    return hashlib.sha256(data).hexdigest()[:_LOOP_LENGTH]


def make_branch(loop: str, unique: str) -> str:
    """``z9hG4bK<loop>.<unique>``: the RFC 3261 magic cookie, our loop part, a per-branch unique part."""
    return f"{MAGIC_COOKIE}{loop}.{unique}"


def split_branch(branch: str | None) -> tuple[str, str] | None:
    """``(loop, unique)`` of a branch we made, or ``None`` for anybody else's."""
    if not branch or not branch.startswith(MAGIC_COOKIE):
        return None
    loop, dot, unique = branch[len(MAGIC_COOKIE) :].partition(".")
    if not dot or len(loop) != _LOOP_LENGTH:
        return None
    return loop, unique


def is_looped(request: Request, locality: Locality) -> bool:
    """§16.3 step 4: a Via of ours whose loop part equals this request's -> loop; otherwise spiral or new."""
    ours = [via for via in request.vias if locality.is_our_via(via)]
    if not ours:
        return False
    loop = loop_part(request)
    for via in ours:
        split = split_branch(via.branch)
        if split is not None and split[0] == loop:
            return True
    return False
