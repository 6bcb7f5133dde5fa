# -*- test-case-name: tests.test_message_parser -*-
"""Building responses: the reason phrases and a UAS's response to a request (RFC 3261 §21, §8.2.6).

:func:`make_response` is RFC 3261 §8.2.6.2: Via, From, To, Call-ID and CSeq
copied from the request, a To tag added where the request's To had none.
Every response a layer makes itself starts here: the server transaction's
100 Trying (§17.2.1), the registrar's replies (§10.3), the proxy's own
(§16.3, §16.7 step 6, §16.10) and the 400 for a request the parser
refused (§8.2.6, the :class:`~sipproxy.message.errors.ParseError`'s reason).
"""

from __future__ import annotations

from sipproxy.message.errors import ParseError
from sipproxy.message.headers import cached_key, display_name, make_header
from sipproxy.message.message import Request, Response
from sipproxy.message.values import NameAddr, parse_name_addr

__all__ = ["REASON_PHRASES", "make_response", "response_bytes"]

_new = object.__new__

#: RFC 3261 §21 (and RFC 6585 for 429): the phrase we write when the caller gives none.
REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    429: "Too Many Requests",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_RESPONSE_COPIED = ("via", "from", "to", "call-id", "cseq")


def make_response(request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None) -> Response:
    """Build a response to ``request`` (RFC 3261 §8.2.6.2).

    Via (all of them, in order), From, To, Call-ID and CSeq are copied as
    written; a To tag is added when ``to_tag`` is given and the request's To
    has none (never on 100 Trying).
    """
    headers = []
    single_seen: set[str] = set()
    for h in request.headers:
        key = h.key
        if key in _RESPONSE_COPIED:
            if key != "via":
                if key in single_seen:
                    continue  # a repeated identical From/To/Call-ID/CSeq is copied once
                single_seen.add(key)
            headers.append(make_header(key, h.name, h.value, h.raw))
    response = _new(Response)  # Response(status, reason, headers) without the __init__ chain
    response.headers = headers
    response.body = b""
    response.status = status
    response.reason = reason if reason is not None else REASON_PHRASES.get(status, "")
    copied: dict[str, object] = {}
    response._cache = copied
    cache = request._cache
    for key in ("via", "from", "cseq", "to"):
        if key in cache:  # the request's parsed values describe the copied lines too
            value = cache[key]
            copied[key] = list(value) if isinstance(value, list) else value  # type: ignore[arg-type]
    if to_tag and status > 100:
        for h in headers:
            if h.key == "to":
                if _lacks_tag(request, h.value):
                    h.value = f"{h.value.rstrip()};tag={to_tag}"
                    h.raw = None
                    response._cache.pop("to", None)
                break
    return response


def response_bytes(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """``make_response(request, status, reason, to_tag=to_tag)`` with ``extra`` headers added, serialized.

    The same bytes as building that response, adding ``extra`` and calling
    ``to_bytes()``, in one pass and without the :class:`Response`: for the
    stateless refusals of an overloaded server, which send a response and
    keep nothing of it.
    """
    out = [f"SIP/2.0 {status} {reason if reason is not None else REASON_PHRASES.get(status, '')}\r\n"]
    single_seen: set[str] = set()
    tag_to = bool(to_tag) and status > 100
    for h in request.headers:
        key = h.key
        if key not in _RESPONSE_COPIED:
            continue
        if key != "via":
            if key in single_seen:
                continue
            single_seen.add(key)
            if key == "to" and tag_to and _lacks_tag(request, h.value):
                out.append(f"{h.name}: {h.value.rstrip()};tag={to_tag}\r\n")
                continue
        out.append(f"{h.raw}\r\n" if h.raw is not None else f"{h.name}: {h.value}\r\n")
    for name, value in extra:
        key = cached_key(name)
        out.append(f"{display_name(key) if len(name) == 1 else name}: {value}\r\n")
    out.append("Content-Length: 0\r\n\r\n")
    return "".join(out).encode("utf-8", "surrogateescape")


def _lacks_tag(request: Request, value: str) -> bool:
    try:
        to = request._cache.get("to")
        return (to if isinstance(to, NameAddr) else parse_name_addr(value)).tag is None
    except ParseError:
        return True
