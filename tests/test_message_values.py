"""Typed header values: Via (§20.42), name-addr/addr-spec (§20.10, §25.1), CSeq (§20.16)."""

from __future__ import annotations

import pytest

from sipproxy.message import (
    MAGIC_COOKIE,
    AbsoluteURI,
    CSeq,
    NameAddr,
    ParseError,
    SipURI,
    Via,
    parse_cseq,
    parse_name_addr,
    parse_uri,
    parse_via,
)

# -- Via ---------------------------------------------------------------------------------


def test_via_parts() -> None:
    via = parse_via(
        "SIP/2.0/UDP pc33.atlanta.example.test:5066;branch=z9hG4bK776asdhds;received=192.0.2.1;rport=5067;maddr=239.255.255.1;ttl=16"
    )
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "UDP", "pc33.atlanta.example.test", 5066)
    assert via.branch == "z9hG4bK776asdhds" and via.rfc3261
    assert (via.received, via.rport, via.wants_rport) == ("192.0.2.1", 5067, True)
    assert (via.maddr, via.ttl) == ("239.255.255.1", 16)
    assert via.sent_by == ("pc33.atlanta.example.test", 5066)


@pytest.mark.parametrize("transport", ["UDP", "TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS", "UNKNOWN", "udp", "Tcp"])
def test_via_transports(transport: str) -> None:
    via = parse_via(f"SIP/2.0/{transport} host.example.test;branch=z9hG4bK1")
    assert via.transport == transport.upper()


def test_via_without_port_or_branch() -> None:
    """RFC 2543 peers (RFC 4475 inv2543) send neither."""
    via = parse_via("SIP/2.0/UDP iftgw.example.test")
    assert (via.port, via.branch, via.rfc3261, via.params) == (None, None, False, {})
    assert via.sent_by == ("iftgw.example.test", None)


def test_rport_without_value_asks_for_one() -> None:
    """RFC 3581."""
    via = parse_via("SIP/2.0/UDP 192.0.2.7:5060;rport;branch=z9hG4bKr")
    assert (via.wants_rport, via.rport) == (True, None)
    assert not parse_via("SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKr").wants_rport


@pytest.mark.parametrize(
    ("text", "host", "bare", "port"),
    [
        ("SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bK6", "[2001:db8::9]", "2001:db8::9", 5070),
        ("SIP/2.0/TCP [2001:db8::9];branch=z9hG4bK6", "[2001:db8::9]", "2001:db8::9", None),
        ("SIP/2.0/UDP 192.0.2.2:5062;branch=z9hG4bK6", "192.0.2.2", "192.0.2.2", 5062),
        ("SIP/2.0/UDP Host.Example.TEST;branch=z9hG4bK6", "Host.Example.TEST", "Host.Example.TEST", None),
    ],
)
def test_via_sent_by(text: str, host: str, bare: str, port: int | None) -> None:
    via = parse_via(text)
    assert (via.host, via.host_bare, via.port) == (host, bare, port)
    assert via.sent_by == (host.lower(), port)


def test_via_with_lws_everywhere() -> None:
    """RFC 4475 wsinv: LWS around the slashes, the colon and the semicolons."""
    via = parse_via("SIP  /   2.0 /UDP     spindle.example.test :  5061  ;  branch  =   z9hG4bK9ikj8 ; rport")
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "UDP", "spindle.example.test", 5061)
    assert via.params == {"branch": "z9hG4bK9ikj8", "rport": None}


def test_via_keeps_another_protocol_as_written() -> None:
    """§20.42 allows any token for the protocol name and version; a proxy forwards such a Via unchanged."""
    via = parse_via("SIP/7.0/UDP c.example.test;branch=z9hG4bKkdjuw")
    assert via.protocol == "SIP/7.0"
    assert str(via) == "SIP/7.0/UDP c.example.test;branch=z9hG4bKkdjuw"


def test_via_parameter_names_are_case_insensitive() -> None:
    via = parse_via("SIP/2.0/UDP h.example.test;BRANCH=z9hG4bKAbC;Received=192.0.2.1")
    assert via.branch == "z9hG4bKAbC" and via.received == "192.0.2.1"


def test_magic_cookie() -> None:
    assert MAGIC_COOKIE == "z9hG4bK"
    assert parse_via("SIP/2.0/UDP h;branch=z9hG4bK").rfc3261  # RFC 4475 badbranch: just the cookie is allowed
    assert not parse_via("SIP/2.0/UDP h;branch=390skdjuw").rfc3261


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP pc33.example.test:5066;branch=z9hG4bK776;received=192.0.2.1;rport=5067",
        "SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bK6;rport",
        "SIP/2.0/UDP h.example.test",
    ],
)
def test_via_str_round_trips(text: str) -> None:
    via = parse_via(text)
    assert str(via) == text
    assert parse_via(str(via)) == via


def test_via_built_by_hand() -> None:
    via = Via("UDP", "2001:db8::1", 5060, {"branch": "z9hG4bKx"})
    assert str(via) == "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKx"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Bad Via sent-protocol"),
        ("SIP/2.0 host.example.test", "Bad Via sent-protocol"),
        ("SIP/2.0/UDP", "Bad Via sent-protocol"),
        ("SIP/2.0/UDP host.example.test:99999", "Bad Via sent-by"),
        ("SIP/2.0/UDP host.example.test:", "Bad Via sent-by"),
        ("SIP/2.0/UDP bad_host;branch=z9hG4bK1", "Bad Via sent-by"),
        ("SIP/2.0/UDP 2001:db8::1;branch=z9hG4bK1", "Bad Via sent-by"),
        ("SIP/2.0/UDP user@host.example.test", "Bad Via sent-by"),
        ("SIP/2.0/UDP host.example.test;branch", "Via branch needs a value"),
        ("SIP/2.0/UDP host.example.test;received", "Via received needs a value"),
        ("SIP/2.0/UDP host.example.test;maddr", "Via maddr needs a value"),
        ("SIP/2.0/UDP host.example.test;ttl=256", "Bad Via ttl"),
        ("SIP/2.0/UDP host.example.test;ttl=x", "Bad Via ttl"),
        ("SIP/2.0/UDP host.example.test;ttl=²", "Bad Via ttl"),
        ("SIP/2.0/UDP host.example.test;rport=65536", "Bad Via rport"),
        ("SIP/2.0/UDP host.example.test;rport=¹", "Bad Via rport"),
        ("SIP/2.0/UDP 192.0.2.15;;", "Empty parameter"),
        ("SIP/2.0/UDP host.example.test;branch=", "Empty value for parameter branch"),
        ("SIP/2.0/UDP host.example.test;bra nch=1", "Bad parameter name"),
    ],
)
def test_malformed_vias(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_via(text)
    assert (info.value.status, info.value.reason) == (400, reason)


# -- name-addr and addr-spec -------------------------------------------------------------------


def test_name_addr_with_quoted_display_name() -> None:
    address = parse_name_addr('"Alice Liddell" <sip:alice@atlanta.example.test>;tag=1928301774')
    assert address.display == "Alice Liddell"
    assert address.uri == parse_uri("sip:alice@atlanta.example.test")
    assert address.params == {"tag": "1928301774"} and address.tag == "1928301774"


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("Bob <sip:bob@example.test>", "Bob"),
        ("caller<sip:caller@example.test>", "caller"),  # RFC 4475 lwsdisp
        ("A.   Bell\t<sip:a.g.bell@example.test>", "A. Bell"),
        ("token1~` token2'+_ token3*%!.- <sip:mundane@example.com>", "token1~` token2'+_ token3*%!.-"),
        ("<sip:bob@example.test>", None),
        ('"" <sip:bob@example.test>', ""),
        ('"J Rosenberg \\\\\\"" <sip:jdrosen@example.test>', 'J Rosenberg \\"'),  # RFC 4475 wsinv
        ('"Quoted string \\"\\"" <sip:jdrosen@example.test>', 'Quoted string ""'),
        ('"Bell, Alexander" <sip:a.g.bell@example.test>', "Bell, Alexander"),
        ('"<sip:fake@example.test>" <sip:real@example.test>', "<sip:fake@example.test>"),
        ('"Ünïcödé 名前" <sip:u@example.test>', "Ünïcödé 名前"),
        ('"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:u@example.test>', "BEL:\x07 NUL:\x00 DEL:\x7f"),  # RFC 4475 intmeth
    ],
)
def test_display_names(text: str, display: str | None) -> None:
    assert parse_name_addr(text).display == display


def test_addr_spec_parameters_belong_to_the_header() -> None:
    """§20.10: without <>, ``;tag=x`` is a header parameter, never a URI one."""
    address = parse_name_addr("sip:alice@atlanta.example.test;tag=88sja8x;transport=tcp")
    assert address.params == {"tag": "88sja8x", "transport": "tcp"}
    assert isinstance(address.uri, SipURI) and address.uri.params == {}
    assert address.display is None


def test_name_addr_parameters_inside_brackets_belong_to_the_uri() -> None:
    address = parse_name_addr("<sip:alice@atlanta.example.test;tag=88sja8x;lr>;tag=real")
    assert isinstance(address.uri, SipURI)
    assert address.uri.params == {"tag": "88sja8x", "lr": None}
    assert address.params == {"tag": "real"}


def test_contact_parameters_rfc4475_cparam() -> None:
    unbracketed = parse_name_addr("sip:+19725552222@gw1.example.net;unknownparam")
    bracketed = parse_name_addr("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert unbracketed.params == {"unknownparam": None} and unbracketed.uri.params == {}  # type: ignore[union-attr]
    assert bracketed.params == {} and bracketed.uri.params == {"unknownparam": None}  # type: ignore[union-attr]


def test_lws_around_parameters() -> None:
    address = parse_name_addr('  "Quoted" <sip:jdrosen@example.test> ; newparam = newvalue ;  secondparam ; q = 0.33  ')
    assert address.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    spec = parse_name_addr("sip:vivekg@chair-dnrc.example.test ;   tag    = 1918181833n")
    assert spec.tag == "1918181833n"


def test_quoted_parameter_values_are_kept_quoted() -> None:
    address = parse_name_addr(
        '<sip:bob@192.0.2.4>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    )
    assert address.params == {"+sip.instance": '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"', "reg-id": "1"}
    spec = parse_name_addr('sip:bob@192.0.2.4;+sip.instance="<urn:uuid:1>";x="a;b"')
    assert spec.params == {"+sip.instance": '"<urn:uuid:1>"', "x": '"a;b"'}


def test_other_uri_schemes_in_addresses() -> None:
    """RFC 4475 unksm2: the parser carries them; the registrar refuses them."""
    assert parse_name_addr("isbn:2983792873").uri == AbsoluteURI("isbn", "isbn:2983792873")
    assert parse_name_addr("<http://www.example.com>;tag=3234233").uri == AbsoluteURI("http", "http://www.example.com")
    tel = parse_name_addr("<tel:+1-201-555-0123;phone-context=example.test>;tag=1")
    assert str(tel.uri) == "tel:+1-201-555-0123;phone-context=example.test" and tel.tag == "1"
    bare_tel = parse_name_addr("tel:+1-201-555-0123;tag=1")
    assert str(bare_tel.uri) == "tel:+1-201-555-0123" and bare_tel.tag == "1"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Empty address"),
        ("   ", "Empty address"),
        ('"Mr. J. User <sip:j.user@example.test>', "Unterminated quoted string"),  # RFC 4475 quotbl
        ('"Mr. J. User" sip:j.user@example.test', "Quoted display name without <>"),
        ("< sip:t.watson@example.test >", "Spaces inside <> in address"),  # RFC 4475 badaspec
        ("<sip:t.watson@example.test >", "Spaces inside <> in address"),
        ("Bell, Alexander <sip:a.g.bell@example.test>", "Bad display name"),  # RFC 4475 baddn
        ('Bell "A" <sip:a.g.bell@example.test>', "Bad display name"),
        ("<sip:bob@example.test", "Unterminated <> in address"),
        ("<sip:bob@example.test> junk", "Bad address (text after >)"),
        (
            "sip:user@example.test?Route=%3Csip:sip.example.test%3E",
            "Bad address (URI with , ? or spaces needs <>)",
        ),  # regbadct
        ("sip:a@example.test, sip:b@example.test", "Bad address (URI with , ? or spaces needs <>)"),
        ("<sip:bob@example.test>;=1", "Bad parameter name"),
        ("<sip:bob@example.test>;;tag=1", "Empty parameter"),
        ("<sip:bob@exa_mple.test>", "Bad host in URI"),
        ("<>", "Bad URI"),
    ],
)
def test_malformed_addresses(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_name_addr(text)
    assert (info.value.status, info.value.reason) == (400, reason)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (NameAddr(parse_uri("sip:bob@example.test")), "<sip:bob@example.test>"),
        (NameAddr(parse_uri("sip:bob@example.test"), "Bob", {"tag": "1"}), '"Bob" <sip:bob@example.test>;tag=1'),
        (
            NameAddr(parse_uri("sip:bob@example.test"), 'say "hi" \\', {"lr": None}),
            '"say \\"hi\\" \\\\" <sip:bob@example.test>;lr',
        ),
    ],
)
def test_name_addr_str(address: NameAddr, text: str) -> None:
    assert str(address) == text
    assert parse_name_addr(text) == address


@pytest.mark.parametrize(
    ("params", "expires", "q"),
    [
        ("", None, None),
        (";expires=3600;q=0.7", 3600, 0.7),
        (";expires=0;q=1", 0, 1.0),
        (";q=0", None, 0.0),
        (";q=1.000", None, 1.0),
        (";q=0.123", None, 0.123),
        (";expires=4294967295", 2**32 - 1, None),
        (";expires=280297596632815", 2**32 - 1, None),  # RFC 4475 scalarlg: capped, not an error
    ],
)
def test_contact_expires_and_q(params: str, expires: int | None, q: float | None) -> None:
    contact = parse_name_addr(f"<sip:alice@192.0.2.7>{params}")
    assert (contact.expires, contact.q) == (expires, q)


@pytest.mark.parametrize("params", [";expires=soon", ";expires=-1", ";expires=²", ";expires"])
def test_bad_contact_expires(params: str) -> None:
    with pytest.raises(ParseError, match="Bad expires parameter in Contact"):
        parse_name_addr(f"<sip:alice@192.0.2.7>{params}").expires  # noqa: B018


@pytest.mark.parametrize("params", [";q=1.5", ";q=0.1234", ";q=2", ";q=.5", ";q=high", ";q"])
def test_bad_contact_q(params: str) -> None:
    with pytest.raises(ParseError, match="Bad q parameter in Contact"):
        parse_name_addr(f"<sip:alice@192.0.2.7>{params}").q  # noqa: B018


# -- CSeq ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cseq"),
    [
        ("1 INVITE", CSeq(1, "INVITE")),
        ("0009 INVITE", CSeq(9, "INVITE")),  # RFC 4475 wsinv
        ("0 ACK", CSeq(0, "ACK")),
        ("2147483647 BYE", CSeq(2**31 - 1, "BYE")),
        (
            "139122385 !interesting-Method0123456789_*+`.%indeed'~",
            CSeq(139122385, "!interesting-Method0123456789_*+`.%indeed'~"),
        ),
        ("  7 \t  OPTIONS  ", CSeq(7, "OPTIONS")),
    ],
)
def test_cseq(text: str, cseq: CSeq) -> None:
    assert parse_cseq(text) == cseq
    assert str(cseq) == f"{cseq.seq} {cseq.method}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Bad CSeq"),
        ("1", "Bad CSeq"),
        ("INVITE", "Bad CSeq"),
        ("1 INVITE extra", "Bad CSeq"),
        ("2147483648 INVITE", "Bad CSeq number"),
        ("36893488147419103232 REGISTER", "Bad CSeq number"),  # RFC 4475 scalarlg
        ("-1 INVITE", "Bad CSeq number"),
        ("1.0 INVITE", "Bad CSeq number"),
        ("١ INVITE", "Bad CSeq number"),
        ("1 IN<VITE", "Bad CSeq method"),
    ],
)
def test_malformed_cseq(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_cseq(text)
    assert info.value.reason == reason
