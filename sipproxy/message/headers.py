# -*- test-case-name: tests.test_message_headers,tests.test_message_parser -*-
"""Header lines, names, compact forms and the comma rule (RFC 3261 §7.3, §7.3.1, §7.3.3, §20).

A :class:`Header` is one line as the peer wrote it (RFC 3261 §7.3); the
functions below name it (§7.3.3 compact forms, §20 spellings), split its
value at commas (§7.3.1) and at semicolons (§25.1 ``generic-param``).
"""

from __future__ import annotations

import re

from sipproxy.message.errors import ParseError

__all__ = [
    "Header",
    "make_header",
    "cached_key",
    "canonical_key",
    "display_name",
    "is_list_header",
    "split_commas",
    "split_params",
    "unquote",
    "quote",
    "is_token",
]

#: RFC 3261 §7.3.3 and later RFCs' compact forms -> long name.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

#: Canonical spelling used when we write a header ourselves.
_CANONICAL = {
    name.lower(): name
    for name in (
        *COMPACT_FORMS.values(),
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Authentication-Info",
        "Authorization",
        "Call-Info",
        "Content-Disposition",
        "Content-Language",
        "CSeq",
        "Date",
        "Error-Info",
        "Expires",
        "In-Reply-To",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Organization",
        "Path",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Record-Route",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "Server",
        "Service-Route",
        "Timestamp",
        "Unsupported",
        "User-Agent",
        "Warning",
        "WWW-Authenticate",
        "RAck",
        "RSeq",
    )
}

#: Headers whose values may be combined with commas (RFC 3261 §7.3.1).  The
#: authentication headers hold commas too but are *not* lists.
_LIST_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "in-reply-to",
        "path",
        "proxy-require",
        "record-route",
        "require",
        "route",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    }
)

#: RFC 3261 §25.1 ``token`` as a character class, for other modules' patterns.
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN = re.compile(TOKEN + r"\Z")
#: ``;name=value;flag`` with token names, plain values and no LWS: the common case of
#: :func:`split_params`, read without the general scanner.
_SIMPLE_PARAMS = re.compile(r"(?:" + TOKEN + r"(?:=[^;\"\s]+)?;)*" + TOKEN + r"(?:=[^;\"\s]+)?\Z")


def known_names() -> tuple[str, ...]:
    """Every long header name we spell canonically (``Via``, ``Call-ID``...)."""
    return tuple(_CANONICAL.values())


def is_token(text: str) -> bool:
    """RFC 3261 §25.1 ``token``."""
    return _TOKEN.match(text) is not None


def canonical_key(name: str) -> str:
    """The lower-case long form of a header name: ``v`` and ``VIA`` both give ``via``."""
    key = name.lower()
    if len(key) == 1:
        long = COMPACT_FORMS.get(key)
        if long is not None:
            return long.lower()
    return key


def display_name(key: str) -> str:
    """How we spell a header we write: ``call-id`` -> ``Call-ID``."""
    known = _CANONICAL.get(key)
    if known is not None:
        return known
    return "-".join(part.capitalize() for part in key.split("-"))


#: name as callers spell it -> key; callers use a handful of literal names, so this stays small.
_KEYS: dict[str, str] = {}


def cached_key(name: str) -> str:
    """:func:`canonical_key`, remembered for the names code asks for again and again."""
    key = _KEYS.get(name)
    if key is None:
        key = canonical_key(name)
        if len(_KEYS) < 512:
            _KEYS[name] = key
    return key


class Header:
    """One header line: its key (lower-case long name), the name as written, its value.

    ``raw`` is the exact original text of the line, folding included, without
    the final CRLF -- or ``None`` once the value was changed by us.
    """

    __slots__ = ("key", "name", "raw", "value")

    def __init__(self, key: str, name: str, value: str, raw: str | None = None) -> None:
        self.key = key
        self.name = name
        self.value = value
        self.raw = raw

    def line(self) -> str:
        if self.raw is not None:
            return f"{self.raw}\r\n"
        return f"{self.name}: {self.value}\r\n"

    def __repr__(self) -> str:
        return f"Header({self.name!r}, {self.value!r})"


_new = object.__new__


def make_header(key: str, name: str, value: str, raw: str | None) -> Header:
    """``Header(key, name, value, raw)`` without the Python-level ``__init__``."""
    h = _new(Header)
    h.key = key
    h.name = name
    h.value = value
    h.raw = raw
    return h


def is_list_header(key: str) -> bool:
    return key in _LIST_HEADERS


def split_commas(value: str) -> list[str]:
    """Split a list header's value at commas outside quoted strings and ``<...>``."""
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    if '"' not in value and "<" not in value:  # nothing can hide a comma: split at all of them
        return [part for part in (p.strip() for p in value.split(",")) if part]
    parts: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    if in_quotes:
        raise ParseError("Unterminated quoted string")
    parts.append(value[start:].strip())
    return [p for p in parts if p]


def unquote(text: str) -> str:
    """Undo ``quoted-string`` (RFC 3261 §25.1) if ``text`` is one."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        if "\\" not in inner:
            return inner
        out = []
        i = 0
        while i < len(inner):
            ch = inner[i]
            if ch == "\\" and i + 1 < len(inner):
                i += 1
                ch = inner[i]
            out.append(ch)
            i += 1
        return "".join(out)
    return text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_params(text: str) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` generic parameters (RFC 3261 §25.1 ``generic-param``).

    ``text`` starts after the first ``;``.  Names are lower-cased, values kept
    as written (quoted strings stay quoted: callers unquote what they need).
    """
    params: dict[str, str | None] = {}
    if not text:
        return params
    if _SIMPLE_PARAMS.match(text):
        for part in text.split(";"):
            name, eq, val = part.partition("=")
            params[name.lower()] = val if eq else None
        return params
    return _split_params(text)


def _split_params(text: str) -> dict[str, str | None]:
    """:func:`split_params` for any input: LWS, quoted values, and a reason for each error."""
    params: dict[str, str | None] = {}
    for part in _split_semicolons(text):
        part = part.strip(" \t")
        if not part:
            raise ParseError("Empty parameter")
        name, eq, val = part.partition("=")
        name = name.rstrip(" \t").lower()
        if not is_token(name):
            raise ParseError("Bad parameter name")
        if eq:
            val = val.lstrip(" \t")
            if not val:
                raise ParseError(f"Empty value for parameter {name}")
            params[name] = val
        else:
            params[name] = None
    return params


def _split_semicolons(text: str) -> list[str]:
    if '"' not in text:
        return text.split(";")
    parts = []
    start = 0
    in_quotes = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == ";":
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise ParseError("Unterminated quoted string")
    parts.append(text[start:])
    return parts


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())
