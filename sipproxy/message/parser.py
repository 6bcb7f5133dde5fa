"""Bytes -> :class:`Request` / :class:`Response` (RFC 3261 §7, §25).

The parser reads a whole message (one datagram, or what the stream framer
cut out).  It validates what every later layer relies on -- the start line,
Via, From, To, Call-ID, CSeq, Max-Forwards, Content-Length -- and leaves the
other headers to be parsed lazily by whoever needs them.  The only exception
it raises is :class:`ParseError`.

The everyday message (CRLF line ends, no folding, header names spelled the
usual way) goes through a short path; anything else (LF-only lines, folding,
odd names, errors) through the general one, which gives the same result.
Where the optional C accelerator (``_speedups.c``) was built, it takes the
everyday message before either, builds the same objects, and hands anything
else back; ``SIPPROXY_NO_EXTENSIONS=1`` in the environment leaves it unused.
"""

from __future__ import annotations

import os
import re

from sipproxy.message import _accel
from sipproxy.message.errors import ParseError
from sipproxy.message.headers import COMPACT_FORMS, Header, canonical_key, display_name, is_token, known_names
from sipproxy.message.message import Request, Response
from sipproxy.message.uri import SipURI
from sipproxy.message.values import CSeq, NameAddr, Via, parse_cseq, parse_name_addr, parse_via, parse_vias

__all__ = ["parse_message", "MAX_HEADERS"]

#: Headers beyond this count make the message unacceptable (a parser-DoS bound).
MAX_HEADERS = 256

_LINE_BREAK = re.compile(r"\r\n|\n")
_VERSION = re.compile(r"SIP/([0-9]{1,9})\.([0-9]{1,9})\Z", re.IGNORECASE)
_SINGLE_VALUED = frozenset(("call-id", "cseq", "from", "to", "max-forwards", "content-length"))
_MANDATORY = ("from", "to", "call-id", "cseq")
#: Exact spellings seen on the wire -> key, so most lines need no lower-casing or token check.
_KNOWN_SPELLINGS: dict[str, str] = {}
for _name in (*known_names(), *COMPACT_FORMS):
    for _spelling in (_name, _name.lower(), _name.upper()):
        _KNOWN_SPELLINGS[_spelling] = canonical_key(_name)
del _name, _spelling
#: Methods that need no token check (RFC 3261 §7.1 and the extensions' methods).
_METHODS = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO")
    + ("REFER", "MESSAGE", "UPDATE")
)
_new = object.__new__


def _load_speedups() -> None:
    """Fill in ``_accel`` from the C accelerator, unless it was not built or is switched off."""
    if os.environ.get("SIPPROXY_NO_EXTENSIONS"):
        return
    try:
        from sipproxy.message import _speedups  # type: ignore[attr-defined]
    except ImportError:  # built without a C compiler: the Python parser alone, same results
        return
    if _speedups.MAX_HEADERS != MAX_HEADERS:
        raise ImportError(
            "sipproxy/message/_speedups was built from another version of sipproxy: rebuild it "
            "(pip install again, or python3 setup.py build_ext --inplace)"
        )
    _speedups.setup(Header, Request, Response, Via, NameAddr, SipURI, CSeq, _KNOWN_SPELLINGS)
    _accel.parse = _speedups.parse
    _accel.name_addr = _speedups.name_addr
    _accel.sip_uri = _speedups.sip_uri


_load_speedups()


def parse_message(data: bytes) -> Request | Response:
    """Parse one SIP message held entirely in ``data``."""
    accelerated = _accel.parse
    if accelerated is not None:
        message = accelerated(data)
        if message is not None:
            return message  # type: ignore[no-any-return]
    return parse_python(data)


def parse_python(data: bytes) -> Request | Response:
    """:func:`parse_message` without the accelerator: the reference it is tested against."""
    lines, body = _split_crlf(data) or _split_lines(data)
    first = lines[0]
    headers = _parse_headers(lines)
    if first[:4].upper() == "SIP/":
        return _finish_response(first, headers, body)
    return _finish_request(first, headers, body)


def _split_crlf(data: bytes) -> tuple[list[str], bytes] | None:
    """The everyday message: CRLF line ends only, nothing before the start line; else ``None``."""
    end = data.find(b"\r\n\r\n")
    if end <= 0 or data[0] == 0x0D:
        return None
    text = data[:end].decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks:
        return None
    return lines, data[end + 4 :]


def _split_lines(data: bytes) -> tuple[list[str], bytes]:
    """The header lines and the body of any message: leading CRLFs, bare LF line ends."""
    head, body = _split_head(data)
    text = head.decode("utf-8", "surrogateescape")
    crlf = text.count("\r\n")
    if text.count("\r") != crlf:
        raise ParseError("Stray CR in headers")
    return (text.split("\r\n") if text.count("\n") == crlf else _LINE_BREAK.split(text)), body


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Find the empty line ending the headers (§7: CRLF, tolerating bare LF)."""
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2  # §7.5: CRLFs before the start line are ignored
    end = data.find(b"\n\r\n", start)
    bare = data.find(b"\n\n", start, None if end < 0 else end + 1)
    if bare >= 0:
        end, after = bare, bare + 2
    elif end >= 0:
        after = end + 3
    elif data.endswith(b"\n") and len(data) > start:
        end, after = len(data) - 1, len(data)  # headers only, no empty line: no body either
    elif len(data) <= start:
        raise ParseError("Empty message")
    else:
        raise ParseError("Missing blank line after headers")
    if end > start and data[end - 1] == 0x0D:
        end -= 1
    return data[start:end], data[after:]


def _parse_headers(lines: list[str]) -> list[Header]:
    headers: list[Header] = []
    append = headers.append
    known = _KNOWN_SPELLINGS.get
    last: Header | None = None
    for i in range(1, len(lines)):
        line = lines[i]
        name, colon, value = line.partition(":")
        key = known(name)
        if key is None or not colon:
            if not line:
                raise ParseError("Empty header line")
            if line[0] == " " or line[0] == "\t":
                if last is None:
                    raise ParseError("Continuation line before any header")
                _fold(last, line)
                continue
            name = name.rstrip(" \t")
            if not colon or not is_token(name):
                raise ParseError("Bad header line")
            key = canonical_key(name)
        # Header(key, name, value, line) without the Python-level __init__: this runs for every line.
        last = _new(Header)
        last.key = key
        last.name = name
        last.value = value.strip(" \t")
        last.raw = line
        append(last)
    if len(headers) > MAX_HEADERS:
        raise ParseError("Too many headers")
    return headers


def _fold(header: Header, line: str) -> None:
    """§7.3.1: a line starting with whitespace continues the previous one; the fold is one SP."""
    stripped = line.strip(" \t")
    if stripped:
        header.value = f"{header.value} {stripped}" if header.value else stripped
    header.raw = f"{header.raw}\r\n{line}"


def _check_version(version: str, *, request: bool) -> None:
    if version == "SIP/2.0":
        return
    m = _VERSION.match(version)
    if m is None:
        raise ParseError("Bad SIP version")
    if (int(m.group(1)), int(m.group(2))) != (2, 0):
        raise ParseError("Version Not Supported", 505 if request else 400)


def _finish_request(first: str, headers: list[Header], body: bytes) -> Request:
    parts = first.split(" ")
    if len(parts) != 3 or not all(parts):
        # RFC 4475 lwsstart, trws, lwsruri: still answerable with a 400 when the method can be read.
        method = first.replace("\t", " ").split(" ", 1)[0]
        partial = Request(method, "", headers, body) if is_token(method) and _respondable(headers) else None
        raise ParseError("Bad request line", partial=partial)
    method, uri_text, version = parts
    if method not in _METHODS and not is_token(method):
        raise ParseError("Bad method")
    request = _new(Request)  # Request(method, uri_text, headers, body) without the __init__ chain
    request.headers = headers
    request.body = body
    request._cache = {}
    request.method = method
    request.uri_text = uri_text
    request._uri = None
    try:
        if version != "SIP/2.0":
            _check_version(version, request=True)
        try:
            uri = request.uri
        except ParseError:
            raise ParseError("Bad Request-URI") from None
        if isinstance(uri, SipURI) and uri.headers:
            raise ParseError("Bad Request-URI (headers are not allowed)")  # §19.1.1 table, RFC 4475 escruri
        _validate(request, headers)
        if request.cseq.method != method:
            raise ParseError("CSeq method does not match request method")
    except ParseError as exc:
        raise exc.with_partial(request if _respondable(headers) else None) from None
    return request


def _finish_response(first: str, headers: list[Header], body: bytes) -> Response:
    version, _, rest = first.partition(" ")
    _check_version(version, request=False)
    code, _, reason = rest.partition(" ")
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or code[0] not in "123456":
        raise ParseError("Bad status code")
    response = _new(Response)  # Response(int(code), reason, headers, body) without the __init__ chain
    response.headers = headers
    response.body = body
    response._cache = {}
    response.status = int(code)
    response.reason = reason
    _validate(response, headers)
    return response


def _validate(message: Request | Response, headers: list[Header]) -> None:
    """Check the headers every layer relies on and leave their typed values in the cache."""
    firsts: dict[str, str] = {}
    via_values: list[str] = []
    for h in headers:
        key = h.key
        if key == "via":
            via_values.append(h.value)
        elif key in _SINGLE_VALUED:
            previous = firsts.setdefault(key, h.value)
            if previous is not h.value and previous != h.value:
                raise ParseError(f"Multiple {display_name(key)} headers")
    if not via_values:
        raise ParseError("Missing Via")
    for key in _MANDATORY:
        if key not in firsts:
            raise ParseError(f"Missing {display_name(key)}")
    cache = message._cache
    if len(via_values) == 1 and "," not in via_values[0] and via_values[0]:
        try:
            vias = [parse_via(via_values[0])]
        except ParseError as exc:
            raise exc.in_header("Via") from None
    else:
        vias = parse_vias(via_values)
        if not vias:
            raise ParseError("Missing Via")
    cache["via"] = vias
    try:
        cache["from"] = parse_name_addr(firsts["from"])
    except ParseError as exc:
        raise exc.in_header("From") from None
    try:
        cache["to"] = parse_name_addr(firsts["to"])
    except ParseError as exc:
        raise exc.in_header("To") from None
    try:
        cache["cseq"] = parse_cseq(firsts["cseq"])
    except ParseError as exc:
        raise exc.in_header("CSeq") from None
    call_id = firsts["call-id"]
    if not call_id or " " in call_id or "\t" in call_id:
        raise ParseError("Bad Call-ID")
    if "max-forwards" in firsts and isinstance(message, Request):
        _integer(firsts["max-forwards"], 255, "Max-Forwards")
    length = firsts.get("content-length")
    if length is not None:
        if length == "0":
            n = 0
        else:
            n = _integer(length, 2**31, "Content-Length")
        body = message.body
        if n != len(body):
            if n > len(body):
                raise ParseError("Bad Content-Length")  # longer than what arrived
            message.body = body[:n]  # §18.3: bytes past Content-Length are discarded


def _integer(value: str, limit: int, name: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 10 or int(value) > limit:
        raise ParseError(f"Bad {name}")
    return int(value)


def _respondable(headers: list[Header]) -> bool:
    """Whether a response can be built (§8.2.6): it copies Via, From, To, Call-ID and CSeq as written."""
    present = {h.key for h in headers}
    return "via" in present and all(key in present for key in _MANDATORY)
