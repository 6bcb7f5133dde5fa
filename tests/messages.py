"""The one builder of SIP messages as wire bytes for the tests (RFC 3261 §7, §8.1.1, §20).

A helpers module, not a test module.  :func:`make_request` writes the
mandatory headers of §8.1.1 first, in the order of :data:`DEFAULTS` (a
keyword overrides one, ``None`` drops it), then other keyword headers, then
the raw ``extra`` lines as given, then ``Content-Length``.  Modules with
their own defaults (``security_fakes.request``, ``proxy_helpers.make_request``)
are thin wrappers over it.  Addresses are documentation ones
(example.test, 192.0.2.0/24).
"""

from __future__ import annotations

from collections.abc import Iterable

from sipproxy.message import Request, Response, parse_message

#: The mandatory request headers (RFC 3261 §8.1.1) in the order they are written; ``{method}`` is filled in.
DEFAULTS = (
    ("Via", "SIP/2.0/UDP client.example.test:5060;branch=z9hG4bK74bf9"),
    ("Max-Forwards", "70"),
    ("From", "Alice <sip:alice@example.test>;tag=9fxced76sl"),
    ("To", "Bob <sip:bob@example.test>"),
    ("Call-ID", "3848276298220188511@client.example.test"),
    ("CSeq", "1 {method}"),
)


#: A keyword header's value: one line, one line per item (``via=(top, next)``), or ``None`` for none.
Value = str | tuple[str, ...] | None


def _header_lines(defaults: tuple[tuple[str, str], ...], method: str, headers: dict[str, Value]) -> list[str]:
    """``call_id=`` names Call-ID, ``from_=`` From; a header not among the defaults is written after them."""
    wanted = {name.rstrip("_").replace("_", "-").lower(): value for name, value in headers.items()}
    lines = []
    for name, default in defaults:
        key = name.lower()
        value: Value = wanted.pop(key) if key in wanted else default.format(method=method)
        lines += _lines(name, value)
    for key, value in wanted.items():
        if key != "content-length":
            lines += _lines("-".join(p.capitalize() for p in key.split("-")), value)
    return lines


def _lines(name: str, value: Value) -> list[str]:
    values = () if value is None else (value,) if isinstance(value, str) else value
    return [f"{name}: {v}" for v in values]


def _finish(
    first: str, lines: list[str], extra: Iterable[str | bytes], body: bytes | str, content_length: object
) -> bytes:
    """Start line, header lines, Content-Length (the body's length, the given value, or none), body.

    A raw ``extra`` line may be bytes, for a header that is not UTF-8 on the wire.
    """
    if isinstance(body, str):
        body = body.encode()
    written = [line.encode() for line in (first, *lines)]
    written += [line if isinstance(line, bytes) else line.encode() for line in extra]
    if content_length is not None:
        written.append(f"Content-Length: {len(body) if content_length == 'auto' else content_length}".encode())
    return b"\r\n".join(written) + b"\r\n\r\n" + body


def make_request(
    method: str = "INVITE",
    uri: str = "sip:bob@example.test",
    *,
    version: str = "SIP/2.0",
    body: bytes | str = b"",
    extra: Iterable[str | bytes] = (),
    content_length: object = "auto",
    **headers: Value,
) -> bytes:
    """Wire bytes of a request.

    The mandatory headers come first (a keyword overrides one, ``None`` drops
    it: ``call_id=None``, a tuple writes one line per item), then other
    keywords, then the raw ``extra`` lines, then ``Content-Length`` (the
    body's length, a given value, or none).
    """
    lines = _header_lines(DEFAULTS, method, headers)
    return _finish(f"{method} {uri} {version}", lines, extra, body, content_length)


def make_response_bytes(
    status: int = 200,
    reason: str = "OK",
    *,
    method: str = "INVITE",
    body: bytes | str = b"",
    extra: Iterable[str | bytes] = (),
    content_length: object = "auto",
    **headers: Value,
) -> bytes:
    """Wire bytes of a response: the request's defaults without Max-Forwards (RFC 3261 §8.2.6.2), same keywords."""
    defaults = tuple((n, v) for n, v in DEFAULTS if n != "Max-Forwards")
    lines = _header_lines(defaults, method, headers)
    return _finish(f"SIP/2.0 {status} {reason}", lines, extra, body, content_length)


def parse_request(data: bytes) -> Request:
    """``data`` through the real parser, which must find a request in it."""
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def parse_response(data: bytes) -> Response:
    """``data`` through the real parser, which must find a response in it."""
    message = parse_message(data)
    assert isinstance(message, Response)
    return message
