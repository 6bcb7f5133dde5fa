# -*- test-case-name: tests.test_proxy_validate -*-
"""Request validation (RFC 3261 §16.3), the server's own OPTIONS answer (§11.2), and loop detection (§16.6 step 8).

The checks refuse by raising :class:`sipproxy.errors.SipError` (or the
:class:`ParseError` of a malformed header); :func:`validate_request` is the
proxy's boundary that turns either into the response to send.

:func:`answer_options` builds the 200 to an OPTIONS the server answers
itself, for the stack (an OPTIONS addressed to us) and for the proxy (one
that reached us with Max-Forwards 0, §16.3 step 3): one place, so both carry
Allow, Accept, Supported and Server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from sipproxy.errors import SipError
from sipproxy.message import MAGIC_COOKIE, ParseError, Request, Response, make_response
from sipproxy.proxy.routing import Locality

__all__ = [
    "ALLOW",
    "SERVER",
    "SUPPORTED",
    "SUPPORTED_SCHEMES",
    "answer_options",
    "check_extensions",
    "check_request",
    "check_syntax",
    "is_looped",
    "loop_part",
    "make_branch",
    "refusal_response",
    "split_branch",
    "validate_request",
]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK, PUBLISH"
"""The methods we handle, for the Allow of an OPTIONS we answer (§11.2)."""

SUPPORTED = frozenset({"path", "outbound"})
"""The option tags we support as the final recipient (§11.2 Supported, §8.2.2.3 Require): RFC 3327 Path, RFC 5626."""

SERVER = "sipproxy"
"""The Server header of the responses we originate as a UAS (§20.35)."""

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


def check_request(request: Request, locality: Locality, extensions: Collection[str]) -> bool:
    """RFC 3261 §16.3 steps 1-5 (step 6, Proxy-Authorization, is the ``authorize`` hook).

    1. Reasonable syntax: a ``ParseError`` from any header we use (400 and
       its reason).
    2. URI scheme: not ``sip``/``sips`` -> 416.
    3. Max-Forwards: 0 -> 483, except OPTIONS: then we are the final
       recipient and the result is ``True`` (answer with :func:`answer_options`).
    4. Loop detection: one of our Vias carrying this request's loop part
       -> 482 (our Via with another loop part is a spiral, and fine).
    5. Proxy-Require: tags outside ``extensions`` -> 420 with Unsupported.

    A refusal is raised as :class:`SipError`; ``False``: forward the request.
    """
    check_syntax(request)  # step 1
    if request.uri.scheme not in SUPPORTED_SCHEMES:  # step 2
        raise SipError(416)
    if request.max_forwards == 0:  # step 3
        if request.method == "OPTIONS":
            return True
        raise SipError(483)
    if is_looped(request, locality):  # step 4
        raise SipError(482)
    check_extensions(request, ("proxy-require", extensions))  # step 5
    return False


def check_extensions(request: Request, *checks: tuple[str, Collection[str]]) -> None:
    """§8.2.2.3 (Require) and §16.3 step 5 (Proxy-Require): 420 with Unsupported listing every unknown tag.

    Each check is ``(header, supported tags)``, e.g. ``("require", SUPPORTED)``.
    """
    unsupported: dict[str, None] = {}
    for header, supported in checks:
        unsupported.update((tag, None) for tag in request.option_tags(header) if tag not in supported)
    if unsupported:
        raise SipError(420, None, [("Unsupported", ", ".join(unsupported))])


def validate_request(
    request: Request,
    locality: Locality,
    extensions: Collection[str],
    to_tag: str,
) -> Response | None:
    """:func:`check_request` as the proxy uses it: the response to send instead of forwarding, or ``None``.

    Never raises: a refusal or a malformed header becomes its response; an
    OPTIONS with Max-Forwards 0 gets our own 200 (or the 420 of
    :func:`answer_options`).
    """
    try:
        if check_request(request, locality, extensions):
            return answer_options(request, to_tag, extensions)
    except SipError as refusal:
        return refusal_response(request, refusal, to_tag)
    except ParseError as error:
        return make_response(request, error.status, error.reason, to_tag=to_tag)
    return None


def answer_options(
    request: Request, to_tag: str, extensions: Collection[str] = frozenset(), server: str = SERVER
) -> Response:
    """RFC 3261 §11.2: the 200 to an OPTIONS of which the server is the final recipient.

    Being that recipient, the server is the request's UAS: an option tag in
    Require that is not in :data:`SUPPORTED` (§8.2.2.3), or in Proxy-Require
    that is not in ``extensions`` (the proxy's, §16.3 step 5: the request
    reached us as a proxy first), raises :class:`SipError` 420 with
    Unsupported listing all of them (RFC 4475 ``bext01``: "listing these
    features from either the Require or Proxy-Require", so the sender can
    drop every one in one retry).
    """
    check_extensions(request, ("proxy-require", extensions), ("require", SUPPORTED))
    response = make_response(request, 200, "OK", to_tag=to_tag)
    response.add("Allow", ALLOW)
    response.add("Accept", "application/sdp")
    response.add("Supported", ", ".join(sorted(SUPPORTED)))
    response.add("Server", server)
    return response


def refusal_response(request: Request, refusal: SipError, to_tag: str) -> Response:
    """The response a :class:`SipError` stands for: its status, reason and headers, with our To tag."""
    response = make_response(request, refusal.status, refusal.reason, to_tag=to_tag)
    for name, value in refusal.headers:
        response.add(name, value)
    return response


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
