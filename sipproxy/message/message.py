# -*- test-case-name: tests.test_message_parser -*-
"""Requests and responses: ordered raw headers with typed access (RFC 3261 §7).

Headers are kept as the peer wrote them (:class:`~sipproxy.message.headers.Header`,
§7.3).  A header we never touch is written back byte for byte, so a proxy
that adds a Via, pops a Route or decrements Max-Forwards changes exactly
those lines and nothing else.  The typed accessors read §20's values (Via
§20.42, From §20.20, To §20.39, CSeq §20.16, Contact §20.10...) lazily and
keep them until a line of that header changes.  Responses are built in
:mod:`sipproxy.message.responses` (§8.2.6).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Literal, TypeVar

from sipproxy.message.errors import ParseError
from sipproxy.message.headers import (
    Header,
    cached_key,
    canonical_key,
    display_name,
    is_list_header,
    make_header,
    split_commas,
)
from sipproxy.message.uri import URI, parse_uri
from sipproxy.message.values import CSeq, NameAddr, Via, parse_cseq, parse_name_addr, parse_vias

__all__ = ["Message", "Request", "Response"]

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

_T = TypeVar("_T")


def _naming(key: str, parse: Callable[[str], _T], values: list[str]) -> list[_T]:
    """Parse every value of one header; a failure's reason names that header ("Bad From: bad display name")."""
    try:
        return [parse(v) for v in values]
    except ParseError as exc:
        raise exc.in_header(display_name(key)) from None


class Message:
    """What requests and responses share: headers, body and typed accessors."""

    __slots__ = ("_cache", "body", "headers")

    def __init__(self, headers: list[Header] | None = None, body: bytes = b"") -> None:
        self.headers: list[Header] = headers if headers is not None else []
        self.body = body
        self._cache: dict[str, object] = {}

    # -- raw access -----------------------------------------------------

    def get(self, name: str) -> str | None:
        """The first value of ``name`` as written (the whole line's value)."""
        key = cached_key(name)
        for h in self.headers:
            if h.key == key:
                return h.value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, list headers split at their commas (§7.3.1)."""
        key = cached_key(name)
        out: list[str] = []
        if is_list_header(key):
            for h in self.headers:
                if h.key == key:
                    out.extend(split_commas(h.value))
        else:
            out = [h.value for h in self.headers if h.key == key]
        return out

    def has(self, name: str) -> bool:
        key = cached_key(name)
        return any(h.key == key for h in self.headers)

    def count(self, name: str) -> int:
        key = cached_key(name)
        return sum(1 for h in self.headers if h.key == key)

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Add a header line: at the end, or with ``first`` before every other line of that name.

        A ``first`` line with no namesake goes to the top of the header, where
        a proxy's Via, Route and Record-Route belong (RFC 3261 §7.3.1 advises
        these early, so that proxies need not parse the whole message).
        """
        key = cached_key(name)
        header = make_header(key, display_name(key) if len(name) == 1 else name, value, None)
        vias = self._cache.get("via") if first and key == "via" else None
        self._changed(key)
        if vias is not None:  # a proxy's own Via on top: the others stay parsed
            try:
                self._cache["via"] = parse_vias([value]) + vias  # type: ignore[operator]
            except ParseError:
                pass  # parsed (and refused) when read, as for any header
        if first:
            for i, h in enumerate(self.headers):
                if h.key == key:
                    self.headers.insert(i, header)
                    return
            self.headers.insert(0, header)
            return
        self.headers.append(header)

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` with one line, kept where the first one was."""
        key = cached_key(name)
        self._changed(key)
        for i, h in enumerate(self.headers):
            if h.key == key:
                h.value = value
                h.raw = None
                self.headers[i + 1 :] = [x for x in self.headers[i + 1 :] if x.key != key]
                return
        self.headers.append(Header(key, display_name(key), value))

    def remove(self, name: str) -> None:
        key = cached_key(name)
        self._changed(key)
        self.headers = [h for h in self.headers if h.key != key]

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of a list header (top Via, top Route)."""
        key = cached_key(name)
        for i, h in enumerate(self.headers):
            if h.key == key:
                cache = self._cache
                # The values below the popped one stay parsed (the Vias under ours, §16.7 step 3; the Route set).
                rest = [(k, v[1:]) for k in (key, "list:" + key) if isinstance(v := cache.get(k), list) and v]
                self._changed(key)
                cache.update(rest)
                values = split_commas(h.value)
                if len(values) <= 1:
                    del self.headers[i]
                    return values[0] if values else None
                h.value = ", ".join(values[1:])
                h.raw = None
                return values[0]
        return None

    def _changed(self, key: str) -> None:
        """Lines of ``key`` changed: forget what was parsed from them (other headers' values stay)."""
        cache = self._cache
        if cache:
            cache.pop(key, None)
            cache.pop("list:" + key, None)

    def replace_top_via(self, via: Via) -> None:
        """Write ``via`` over the top Via value (§18.2.1 ``received``, RFC 3581 ``rport``).

        Other Via values and lines stay as written; the parsed list is kept.
        """
        for h in self.headers:
            if h.key == "via":
                values = split_commas(h.value) if "," in h.value else [h.value]
                values[0] = str(via)
                h.value = ", ".join(values)
                h.raw = None
                break
        vias = self._cache.get("via")
        if vias:
            vias[0] = via  # type: ignore[index]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for h in self.headers:
            yield h.name, h.value

    # -- typed access (parsed lazily, cached until a header changes) -----

    def _cached(self, key: str, build: object) -> object:
        try:
            return self._cache[key]
        except KeyError:
            value = build()  # type: ignore[operator]
            self._cache[key] = value
            return value

    @property
    def vias(self) -> list[Via]:
        vias: list[Via] | None = self._cache.get("via")  # type: ignore[assignment]
        if vias is None:  # the parser leaves them here: only messages we built come this way
            vias = self._cache["via"] = parse_vias([h.value for h in self.headers if h.key == "via"])
        return vias

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise ParseError("Missing Via")
        return vias[0]

    @property
    def call_id(self) -> str:
        value = self.get("call-id")
        if value is None or not value.strip(" \t"):
            raise ParseError("Missing Call-ID")
        return value.strip(" \t")

    @property
    def cseq(self) -> CSeq:
        def build() -> CSeq:
            value = self.get("cseq")
            if value is None:
                raise ParseError("Missing CSeq")
            return _naming("cseq", parse_cseq, [value])[0]

        return self._cached("cseq", build)  # type: ignore[return-value]

    def _address(self, name: str) -> NameAddr:
        address: NameAddr | None = self._cache.get(name)  # type: ignore[assignment]
        if address is None:  # the parser leaves From and To here: only messages we built come this way
            value = self.get(name)
            if value is None:
                raise ParseError(f"Missing {display_name(name)}")
            address = self._cache[name] = _naming(name, parse_name_addr, [value])[0]
        return address

    @property
    def from_(self) -> NameAddr:
        return self._address("from")

    @property
    def to(self) -> NameAddr:
        return self._address("to")

    def addresses(self, name: str) -> list[NameAddr]:
        """Every name-addr of a list header: Contact, Route, Record-Route, Path."""
        key = cached_key(name)
        return self._cached(f"list:{key}", lambda: _naming(key, parse_name_addr, self.get_all(key)))  # type: ignore[return-value]

    @property
    def contacts(self) -> list[NameAddr] | Literal["*"]:
        """Contact values, or ``"*"`` for the wildcard (§10.2.2)."""
        cached = self._cache.get("list:contact")
        if cached is not None:
            return cached  # type: ignore[return-value]
        values = self.get_all("contact")
        if "*" in values:
            if len(values) != 1:
                raise ParseError("Wildcard Contact must be the only Contact")
            return "*"
        addresses = _naming("contact", parse_name_addr, values)
        self._cache["list:contact"] = addresses
        return addresses

    def _integer(self, name: str, limit: int) -> int | None:
        value = self.get(name)
        if value is None:
            return None
        value = value.strip(" \t")
        if not (value.isascii() and value.isdigit()) or len(value) > 10 or int(value) > limit:
            raise ParseError(f"Bad {display_name(canonical_key(name))}")
        return int(value)

    @property
    def max_forwards(self) -> int | None:
        return self._integer("max-forwards", 255)

    @property
    def expires(self) -> int | None:
        return self._integer("expires", 2**32 - 1)

    @property
    def content_length(self) -> int | None:
        return self._integer("content-length", 2**31)

    def option_tags(self, name: str) -> list[str]:
        """Require, Proxy-Require, Supported, Unsupported (§20.32 and friends)."""
        return [tag.lower() for tag in self.get_all(name)]

    # -- output ---------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialize; Content-Length is always made to match the body."""
        body = self.body
        length = str(len(body))
        out = [self.start_line()]
        seen_length = False
        for h in self.headers:
            if h.key == "content-length":
                if seen_length:
                    continue
                seen_length = True
                if h.value.strip() != length:
                    out.append(f"{h.name}: {length}\r\n")
                    continue
            out.append(h.line())
        if not seen_length:
            out.append(f"Content-Length: {length}\r\n")
        out.append("\r\n")
        return "".join(out).encode(_ENCODING, _ERRORS) + body

    def copy_headers(self) -> list[Header]:
        return [make_header(h.key, h.name, h.value, h.raw) for h in self.headers]

    def _copy_parsed(self, other: Message) -> None:
        """Give ``other`` (a copy of this message) our parsed Vias, as copies of its own."""
        vias = self._cache.get("via")
        if vias is not None:
            other._cache["via"] = [v.clone() for v in vias]  # type: ignore[attr-defined]


class Request(Message):
    __slots__ = ("_uri", "method", "uri_text")

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: list[Header] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        if isinstance(uri, str):
            self.uri_text = uri
            self._uri: URI | None = None
        else:
            self.uri_text = str(uri)
            self._uri = uri

    @property
    def uri(self) -> URI:
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value
        self.uri_text = str(value)

    def start_line(self) -> str:
        return f"{self.method} {self.uri_text} SIP/2.0\r\n"

    def copy(self) -> Request:
        req = Request(self.method, self.uri_text, self.copy_headers(), self.body)
        self._copy_parsed(req)
        return req

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text}>"

    @classmethod
    def build(
        cls,
        method: str,
        uri: URI | str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Request:
        req = cls(method, uri, body=body)
        for name, value in headers:
            req.add(name, value)
        return req


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str = "", headers: list[Header] | None = None, body: bytes = b"") -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}\r\n"

    def copy(self) -> Response:
        response = Response(self.status, self.reason, self.copy_headers(), self.body)
        self._copy_parsed(response)
        return response

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"
