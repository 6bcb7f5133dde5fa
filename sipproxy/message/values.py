# -*- test-case-name: tests.test_message_values -*-
"""Typed header values: name-addr, Via, CSeq (RFC 3261 §20, §25.1)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sipproxy.message import _accel
from sipproxy.message.errors import ParseError
from sipproxy.message.headers import TOKEN, format_params, is_token, quote, split_commas, split_params, unquote
from sipproxy.message.uri import DOMAIN, URI, SipURI, format_host, parse_uri

__all__ = ["NameAddr", "Via", "CSeq", "parse_name_addr", "parse_via", "parse_vias", "parse_cseq", "MAGIC_COOKIE"]

_new = object.__new__  # hot paths fill slots directly instead of running the generated __init__

#: RFC 3261 §8.1.1.7: branches that start with this follow RFC 3261 rules.
MAGIC_COOKIE = "z9hG4bK"

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
#: §20.42 sent-protocol: protocol-name SLASH protocol-version SLASH transport, then sent-by.
_VIA_PROTO = re.compile(
    r"[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*"
    r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+(.*)\Z",
    re.DOTALL,
)
#: ``;name=value;flag`` with token names, no LWS and no quotes, up to the end.
_PLAIN_PARAMS = r"((?:;" + TOKEN + r'(?:=[^;"\s]+)?)*)\Z'
#: The everyday name-addr: ``"Quoted" <uri>;params`` or ``Token Words <uri>``, no LWS inside
#: parameters.  Anything else (addr-spec, odd spacing, errors) takes the general path.
_NAME_ADDR_COMMON = re.compile(
    r'(?:"([^"\\]*)" ?|(' + TOKEN + r"(?: " + TOKEN + r")*) ?)?<([^<>\s\"]+)>" + _PLAIN_PARAMS
)
#: The everyday Via: ``SIP/2.0/UDP host[:port];params`` written without LWS.
_VIA_COMMON = re.compile(r"SIP/2\.0/([A-Za-z]+) (" + DOMAIN + r")(?::([0-9]{1,5}))?" + _PLAIN_PARAMS)
_CSEQ_COMMON = re.compile(r"([0-9]{1,10}) (" + TOKEN + r")\Z")
_SENT_BY_COLON = re.compile(r"[ \t]*:[ \t]*")
#: RFC 3261 §25.1 ``qvalue``: "0" to "1", at most three decimals.
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")
#: RFC 3261 §20.19 and §20.10: a larger ``delta-seconds`` is taken as this.
_DELTA_SECONDS_LIMIT = 2**32 - 1


@dataclass(slots=True)
class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (From, To, Contact, Route, Record-Route, Path).

    ``params`` are the *header* parameters (``tag``, ``expires``, ``q``,
    ``+sip.instance``...), never the URI's own.
    """

    uri: URI
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        """The Contact ``expires`` parameter (§20.10 delta-seconds, capped at 2**32-1), ``None`` when absent.

        The one parser of it: the registrar (§10.2.1.1) reads it here.  A
        value that is not delta-seconds raises ``ParseError`` (400) naming it.
        """
        if "expires" not in self.params:
            return None
        value = self.params["expires"]
        if value is None or not _is_digits(value):
            raise ParseError("Bad expires parameter in Contact")
        return _DELTA_SECONDS_LIMIT if len(value) > 10 else min(int(value), _DELTA_SECONDS_LIMIT)

    @property
    def q(self) -> float | None:
        """The Contact ``q`` parameter (§20.10, a §25.1 qvalue), ``None`` when absent.

        The one parser of it: the registrar (§10.2.1.2) and the proxy's 3xx
        recursion (§16.5) read it here.  Anything but a qvalue raises
        ``ParseError`` (400) naming the problem.
        """
        if "q" not in self.params:
            return None
        value = self.params["q"]
        if value is None or not _QVALUE.match(value):
            raise ParseError("Bad q parameter in Contact (must be 0 to 1)")
        return float(value)

    def __str__(self) -> str:
        if self.display is not None:
            head = f"{quote(self.display)} <{self.uri}>"
        else:
            head = f"<{self.uri}>"
        return head + format_params(self.params)


def parse_name_addr(text: str) -> NameAddr:
    """RFC 3261 §20.10: ``name-addr`` or ``addr-spec`` followed by header parameters.

    Without ``<>`` every ``;param`` belongs to the header, not to the URI, and
    the URI may not contain ``,`` or ``?`` (§20: such a URI must be enclosed).
    """
    accelerated = _accel.name_addr
    if accelerated is not None:
        address = accelerated(text)
        if address is not None:
            return address  # type: ignore[no-any-return]
    m = _NAME_ADDR_COMMON.match(text)
    if m is not None:
        quoted, tokens, uritext, paramtext = m.groups()
        address = _new(NameAddr)
        address.uri = parse_uri(uritext)
        address.display = quoted if quoted is not None else tokens
        params: dict[str, str | None] = {}
        if paramtext:
            for part in paramtext[1:].split(";"):
                name, eq, value = part.partition("=")
                params[name.lower()] = value if eq else None
        address.params = params
        return address
    return _parse_name_addr(text)


def _parse_name_addr(text: str) -> NameAddr:
    text = text.strip(" \t")
    if not text:
        raise ParseError("Empty address")
    display: str | None = None
    if text[0] == '"':
        m = _QUOTED.match(text)
        if m is None:
            raise ParseError("Unterminated quoted string")
        display = unquote(m.group())
        lt = m.end()
        while lt < len(text) and text[lt] in " \t":
            lt += 1
        if lt == len(text) or text[lt] != "<":
            raise ParseError("Quoted display name without <>")
    else:
        # An addr-spec's parameters may quote a "<" (+sip.instance="<urn:...>"); a display name has no ";".
        semi = text.find(";")
        lt = text.find("<", 0, semi if semi >= 0 else len(text))
        if lt < 0:
            uritext, semi_, paramtext = text.partition(";")
            uritext = uritext.rstrip(" \t")
            if any(c in uritext for c in ' \t",?>'):
                raise ParseError("Bad address (URI with , ? or spaces needs <>)")
            return NameAddr(uri=parse_uri(uritext), params=split_params(paramtext) if semi_ else {})
        prefix = text[:lt].strip(" \t")
        if prefix:
            words = prefix.split()
            if not all(is_token(word) for word in words):
                raise ParseError("Bad display name")
            display = " ".join(words)
    gt = text.find(">", lt)
    if gt < 0:
        raise ParseError("Unterminated <> in address")
    inner = text[lt + 1 : gt]
    if inner[:1] in (" ", "\t") or inner[-1:] in (" ", "\t"):
        raise ParseError("Spaces inside <> in address")
    uri = parse_uri(inner)
    rest = text[gt + 1 :].lstrip(" \t")
    params: dict[str, str | None] = {}
    if rest:
        if rest[0] != ";":
            raise ParseError("Bad address (text after >)")
        params = split_params(rest[1:])
    return NameAddr(uri=uri, display=display, params=params)


@dataclass(slots=True)
class Via:
    """One Via value (RFC 3261 §20.42): ``SIP/2.0/UDP host:port;branch=...``.

    ``protocol`` is the sent-protocol's name and version: ``SIP/2.0`` but for
    odd peers (§20.42 allows any token; a proxy forwards such a Via as is).
    """

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The filled-in ``rport`` (RFC 3581), ``None`` when absent or empty."""
        value = self.params.get("rport")
        if value is None or not _is_digits(value):
            return None
        return int(value)

    @property
    def wants_rport(self) -> bool:
        return "rport" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def ttl(self) -> int | None:
        value = self.params.get("ttl")
        return int(value) if value and _is_digits(value) else None

    @property
    def rfc3261(self) -> bool:
        branch = self.branch
        return branch is not None and branch.startswith(MAGIC_COOKIE)

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return (self.host.lower(), self.port)

    @property
    def host_bare(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def __str__(self) -> str:
        hostport = format_host(self.host) if self.port is None else f"{format_host(self.host)}:{self.port}"
        return f"{self.protocol}/{self.transport} {hostport}{format_params(self.params)}"

    def clone(self) -> Via:
        """An independent copy (its own ``params``), cheaper than parsing the text again."""
        via = _new(Via)
        via.transport, via.host, via.port, via.protocol = self.transport, self.host, self.port, self.protocol
        via.params = dict(self.params)
        return via


def parse_via(text: str) -> Via:
    """RFC 3261 §20.42: one Via value."""
    m = _VIA_COMMON.match(text)
    if m is not None:
        transport, host, port, paramtext = m.groups()
        if port is None or len(port) < 5 or int(port) <= 65535:
            params: dict[str, str | None] = {}
            if paramtext:
                for part in paramtext[1:].split(";"):
                    name, eq, value = part.partition("=")
                    params[name.lower()] = value if eq else None
                _check_via_params(params)
            via = _new(Via)
            via.transport = transport if transport == "UDP" or transport == "TCP" else transport.upper()
            via.host = host
            via.port = None if port is None else int(port)
            via.params = params
            via.protocol = "SIP/2.0"
            return via
    return _parse_via(text)


def parse_vias(values: list[str]) -> list[Via]:
    """Every Via value of these header lines, top first (§7.3.1 comma lists included)."""
    vias: list[Via] = []
    try:
        for value in values:
            if "," in value:
                vias.extend(parse_via(v) for v in split_commas(value))
            elif value:
                vias.append(parse_via(value))
    except ParseError as exc:
        raise exc.in_header("Via") from None
    return vias


def _parse_via(text: str) -> Via:
    m = _VIA_PROTO.match(text)
    if m is None:
        raise ParseError("Bad Via sent-protocol")
    name, version, transport, rest = m.groups()
    sent_by, semi, paramtext = rest.partition(";")
    sent_by = _SENT_BY_COLON.sub(":", sent_by.rstrip(" \t"))  # COLON = SWS ":" SWS
    try:
        probe = parse_uri(f"sip:{sent_by}")
    except ParseError:
        raise ParseError("Bad Via sent-by") from None
    if not isinstance(probe, SipURI) or probe.user is not None or probe.params or probe.headers:
        raise ParseError("Bad Via sent-by")
    params = split_params(paramtext) if semi else {}
    _check_via_params(params)
    protocol = "SIP/2.0" if name == "SIP" and version == "2.0" else f"{name.upper()}/{version}"
    return Via(transport=transport.upper(), host=probe.host, port=probe.port, params=params, protocol=protocol)


def _check_via_params(params: dict[str, str | None]) -> None:
    if None in params.values():  # only flags need a look: most Vias have none but rport
        for pname in ("branch", "received", "maddr", "ttl"):
            if pname in params and params[pname] is None:
                raise ParseError(f"Via {pname} needs a value")
    ttl = params.get("ttl")
    if ttl is not None and (not _is_digits(ttl) or len(ttl) > 3 or int(ttl) > 255):
        raise ParseError("Bad Via ttl")
    rport = params.get("rport")
    if rport is not None and (not _is_digits(rport) or len(rport) > 5 or int(rport) > 65535):
        raise ParseError("Bad Via rport")


def _is_digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts ``²`` and other digits ``int`` rejects."""
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """RFC 3261 §20.16: a 32-bit sequence number and a method."""
    m = _CSEQ_COMMON.match(text)
    if m is not None:
        number, method = m.groups()
        seq = int(number)
        if seq <= 2**31 - 1:
            cseq = _new(CSeq)  # frozen: fill the slots directly, as the generated __init__ would
            _set_seq(cseq, seq)
            _set_method(cseq, method)
            return cseq
    return _parse_cseq(text)


_set_seq = CSeq.__dict__["seq"].__set__
_set_method = CSeq.__dict__["method"].__set__


def _parse_cseq(text: str) -> CSeq:
    parts = text.replace("\t", " ").split(" ")
    parts = [p for p in parts if p]
    if len(parts) != 2:
        raise ParseError("Bad CSeq")
    number, method = parts
    if not _is_digits(number) or len(number) > 10 or int(number) > 2**31 - 1:
        raise ParseError("Bad CSeq number")
    if not is_token(method):
        raise ParseError("Bad CSeq method")
    return CSeq(int(number), method)
