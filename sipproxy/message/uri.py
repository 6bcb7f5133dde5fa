"""SIP and SIPS URIs (RFC 3261 §19.1), other absolute URIs carried opaquely."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote_to_bytes as _pct_unquote_to_bytes

from sipproxy.message import _accel
from sipproxy.message.errors import ParseError
from sipproxy.message.headers import format_params

__all__ = ["SipURI", "AbsoluteURI", "URI", "parse_uri", "format_host", "canonical_host", "is_ip_address"]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
#: RFC 3261 §25.1 ``hostname`` (IPv4 addresses match too) as regex source, for other modules' patterns.
DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?"
_DOMAIN = re.compile(DOMAIN + r"\Z")
_PARAMCHAR_RE = r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+"
#: The everyday SIP URI after ``sip:``: user, domain or IPv4 host, port, plain parameters;
#: no password, escapes, IPv6 or headers.  Anything else takes the general path.
_SIP_COMMON = re.compile(
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,;?/]+)@)?(" + DOMAIN + r")(?::([0-9]{1,5}))?"
    r"((?:;" + _PARAMCHAR_RE + r"(?:=" + _PARAMCHAR_RE + r")?)*)\Z"
)
_USER_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+\Z")
_PASSWORD_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]*\Z")
#: §25.1 ``paramchar`` (pname and pvalue of uri-parameters).
_PARAM_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+\Z")
#: §25.1 ``hname``/``hvalue`` characters (``headers`` after the ``?``).
_HEADER_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%&=]*\Z")
#: RFC 2396 ``uric`` for the opaque part of other absolute URIs.
_URIC = re.compile(r"[A-Za-z0-9;/?:@&=+$,\-_.!~*'()%\[\]]+\Z")
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")

_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()")
#: Characters that need no escaping in each part (§25.1); anything else is written ``%XX``.
_USER_SAFE = _UNRESERVED | frozenset("&=+$,;?/")
_PASSWORD_SAFE = _UNRESERVED | frozenset("&=+$,")
_PARAM_SAFE = _UNRESERVED | frozenset("[]/:&+$")

#: §19.1.4: these parameters, present in one URI, must be present in the other.
_MUST_MATCH_PARAMS = ("user", "ttl", "method", "maddr", "transport")


#: Dotted-quad IPv4 exactly as ``ipaddress`` accepts it (ASCII digits, no leading zeros, 0-255).
_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\Z"
)


def is_ip_address(host: str) -> bool:
    host = host.strip("[]")
    if ":" not in host:  # IPv6 text always has a colon: this is IPv4 or no address at all
        return _IPV4.match(host) is not None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def format_host(host: str) -> str:
    """``2001:db8::1`` -> ``[2001:db8::1]`` for sent-by and URIs."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def canonical_host(host: str) -> str:
    """A host as compared against our domains: no IPv6 brackets, no trailing dot, lower case."""
    return host.strip("[]").rstrip(".").lower()


def _check_host(host: str) -> str:
    if not host:
        raise ParseError("Missing host in URI")
    if host[0] == "[":
        if host[-1] != "]":
            raise ParseError("Bad IPv6 reference in URI")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ParseError("Bad IPv6 reference in URI") from None
        return host
    if not _DOMAIN.match(host):
        raise ParseError("Bad host in URI")
    return host


@dataclass(slots=True, eq=False)
class SipURI:
    """A ``sip:`` or ``sips:`` URI.

    ``host`` keeps brackets around IPv6 references, ``port`` is ``None`` when
    absent (which §19.1.4 distinguishes from an explicit 5060), and
    ``params`` keeps the uri-parameters in order with lower-case names.
    """

    scheme: str
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def host_bare(self) -> str:
        """The host without IPv6 brackets, as sockets want it."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def with_(self, **changes: object) -> SipURI:
        return replace(self, **changes)  # type: ignore[arg-type]

    def aor(self) -> SipURI:
        """The canonical address-of-record (§10.3 step 5): parameters and headers removed.

        The host is lower-cased and the user's escapes are normalised (``%61lice`` -> ``alice``,
        ``%7e`` -> ``~``, ``a b`` stays ``a%20b``), so two AORs equal under §19.1.4 give the same
        string and that string is still a valid URI.
        """
        return SipURI(
            scheme=self.scheme, user=_canonical(self.user, _USER_SAFE), host=self.host.lower(), port=self.port
        )

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":")
                out.append(self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        if self.params:
            out.append(format_params(self.params))
        if self.headers:
            out.append("?")
            out.append(self.headers)
        return "".join(out)

    def __eq__(self, other: object) -> bool:
        """RFC 3261 §19.1.4 URI comparison."""
        if not isinstance(other, SipURI):
            return NotImplemented
        if self.scheme.lower() != other.scheme.lower():
            return False
        if _canonical(self.user, _USER_SAFE) != _canonical(other.user, _USER_SAFE):
            return False
        if _canonical(self.password, _PASSWORD_SAFE) != _canonical(other.password, _PASSWORD_SAFE):
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        for name in _MUST_MATCH_PARAMS:
            a = self.params.get(name, _ABSENT)
            b = other.params.get(name, _ABSENT)
            if (a is _ABSENT) != (b is _ABSENT):
                return False
        for name, a_val in self.params.items():
            if name in other.params and _param_cmp(a_val) != _param_cmp(other.params[name]):
                return False
        return _headers_set(self.headers) == _headers_set(other.headers)

    def __hash__(self) -> int:
        return hash((self.scheme.lower(), _canonical(self.user, _USER_SAFE), self.host.lower(), self.port))


_ABSENT = object()


def _canonical(text: str | None, safe: frozenset[str]) -> str | None:
    """Normalise ``%XX`` escapes: unescape what needs no escaping, upper-case the rest.

    Two spellings give the same result exactly when they unescape to the same
    octets (§19.1.4 "comparison ... after unescaping"), without ever turning
    ``%00`` or ``%FF`` into text.
    """
    if text is None or "%" not in text:
        return text
    return _ESCAPE.sub(lambda m: _unescaped_or_upper(m.group(1), safe), text)


def _unescaped_or_upper(hexdigits: str, safe: frozenset[str]) -> str:
    ch = chr(int(hexdigits, 16))
    return ch if ch in safe else "%" + hexdigits.upper()


def _param_cmp(value: str | None) -> bytes | None:
    return None if value is None else _pct_unquote_to_bytes(value).lower()


def _headers_set(headers: str) -> frozenset[tuple[bytes, bytes]]:
    if not headers:
        return frozenset()
    out = set()
    for item in headers.split("&"):
        name, _, value = item.partition("=")
        out.add((_pct_unquote_to_bytes(name).lower(), _pct_unquote_to_bytes(value)))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class AbsoluteURI:
    """Any other URI (``tel:``, ``http:``, ``urn:``...), carried as written."""

    scheme: str
    text: str

    def __str__(self) -> str:
        return self.text


URI = SipURI | AbsoluteURI

_new = object.__new__


def parse_uri(text: str) -> URI:
    """Parse a Request-URI or the URI inside a name-addr.

    Raises :class:`ParseError` (400) when a ``sip``/``sips`` URI is malformed.
    Other schemes are returned as :class:`AbsoluteURI`; deciding whether we
    can handle them (416) is the proxy's job (§16.3 step 2).
    """
    accelerated = _accel.sip_uri
    if accelerated is not None:
        uri = accelerated(text)
        if uri is not None:
            return uri  # type: ignore[no-any-return]
    if text.startswith("sip:"):  # the everyday spelling: no need to check and lower-case the scheme
        lscheme, rest = "sip", text[4:]
    else:
        scheme, colon, rest = text.partition(":")
        if not colon or not _SCHEME.match(scheme):
            raise ParseError("Bad URI")
        lscheme = scheme.lower()
        if lscheme != "sip" and lscheme != "sips":
            if not _URIC.match(rest):
                raise ParseError("Bad URI")
            return AbsoluteURI(lscheme, text)
    m = _SIP_COMMON.match(rest)
    if m is not None:
        user, host, port, paramtext = m.groups()
        if port is None or len(port) < 5 or int(port) <= 65535:
            common: dict[str, str | None] = {}
            if paramtext:
                for part in paramtext[1:].split(";"):
                    name, eq, value = part.partition("=")
                    common[name.lower()] = value if eq else None
            # Built without the generated __init__ (this is the hot path of every message).
            uri = _new(SipURI)
            uri.scheme = lscheme
            uri.host = host
            uri.user = user
            uri.password = None
            uri.port = None if port is None else int(port)
            uri.params = common
            uri.headers = ""
            return uri
    return _parse_sip(lscheme, rest)


def _parse_sip(lscheme: str, rest: str) -> SipURI:
    """Every ``sip:``/``sips:`` URI, with a reason for each way it can be wrong."""
    if not rest:
        raise ParseError("Bad SIP URI")
    if "%" in rest and _PCT.search(rest):
        raise ParseError("Bad escape in SIP URI")
    # userinfo first: its user part may hold "?" and ";" (§25.1 user-unreserved),
    # and "@" appears nowhere else unescaped.
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, pcolon, pw = userinfo.partition(":")
        if pcolon:
            if not _PASSWORD_CHARS.match(pw):
                raise ParseError("Bad password in SIP URI")
            password = pw
        if not user or not _USER_CHARS.match(user):
            raise ParseError("Bad user part in SIP URI")
    headers = ""
    if "?" in rest:
        rest, _, headers = rest.partition("?")
        if not _HEADER_CHARS.match(headers):
            raise ParseError("Bad headers in SIP URI")
    params: dict[str, str | None] = {}
    if ";" in rest:
        rest, _, paramtext = rest.partition(";")
        params = _uri_params(paramtext)
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ParseError("Bad IPv6 reference in URI")
        host, portpart = rest[: end + 1], rest[end + 1 :]
        if portpart and portpart[0] != ":":
            raise ParseError("Bad host in URI")
        has_port = bool(portpart)
        portpart = portpart[1:]
    else:
        host, has_colon, portpart = rest.partition(":")
        has_port = bool(has_colon)
    port = None
    if has_port:
        if not (portpart.isascii() and portpart.isdigit()) or len(portpart) > 5 or int(portpart) > 65535:
            raise ParseError("Bad port in URI")
        port = int(portpart)
    return SipURI(
        scheme=lscheme,
        host=_check_host(host),
        user=user,
        password=password,
        port=port,
        params=params,
        headers=headers,
    )


def _uri_params(text: str) -> dict[str, str | None]:
    """``;name=value;flag`` uri-parameters (§19.1.1): names lower-cased, escapes in names normalised."""
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if not name or not _PARAM_CHARS.match(name) or (eq and not _PARAM_CHARS.match(value)):
            raise ParseError("Bad URI parameter")
        if "%" in name:
            name = _canonical(name, _PARAM_SAFE)  # type: ignore[assignment]  # §4475 esc01: %6C%72 is lr
        params[name.lower()] = value if eq else None
    return params
