"""SIP and SIPS URIs (RFC 3261 §19.1, §25.1) and the §19.1.4 comparison rules."""

from __future__ import annotations

import pytest

from sipproxy.message import AbsoluteURI, ParseError, SipURI, format_host, is_ip_address, parse_uri


def sip(text: str) -> SipURI:
    uri = parse_uri(text)
    assert isinstance(uri, SipURI)
    return uri


# -- components --------------------------------------------------------------------------


def test_the_parts_of_a_sip_uri() -> None:
    uri = sip(
        "sip:alice:secretword@atlanta.example.test:5061;transport=tcp;lr;maddr=239.255.255.1;user=phone?subject=project%20x&priority=urgent"
    )
    assert uri.scheme == "sip"
    assert (uri.user, uri.password) == ("alice", "secretword")
    assert (uri.host, uri.port) == ("atlanta.example.test", 5061)
    assert uri.params == {"transport": "tcp", "lr": None, "maddr": "239.255.255.1", "user": "phone"}
    assert (uri.transport, uri.lr, uri.maddr) == ("tcp", True, "239.255.255.1")
    assert uri.headers == "subject=project%20x&priority=urgent"


def test_minimal_uri() -> None:
    uri = sip("sip:example.test")
    assert (uri.user, uri.password, uri.host, uri.port, uri.params, uri.headers) == (
        None,
        None,
        "example.test",
        None,
        {},
        "",
    )
    assert (uri.transport, uri.lr, uri.maddr) == (None, False, None)


@pytest.mark.parametrize(
    "text", ["sips:bob@biloxi.example.test", "SIPS:bob@biloxi.example.test", "SiPs:bob@biloxi.example.test"]
)
def test_sips_and_scheme_case(text: str) -> None:
    uri = sip(text)
    assert uri.scheme == "sips"
    assert str(uri) == "sips:bob@biloxi.example.test"


def test_transport_param_is_compared_lower_case_but_written_as_given() -> None:
    uri = sip("sip:bob@example.test;Transport=TCP")
    assert uri.params == {"transport": "TCP"}
    assert uri.transport == "tcp"
    assert str(uri) == "sip:bob@example.test;transport=TCP"


@pytest.mark.parametrize(
    ("text", "host", "bare", "port"),
    [
        ("sip:alice@192.0.2.4", "192.0.2.4", "192.0.2.4", None),
        ("sip:alice@192.0.2.4:5070", "192.0.2.4", "192.0.2.4", 5070),
        ("sip:alice@[2001:db8::10]", "[2001:db8::10]", "2001:db8::10", None),
        ("sip:alice@[2001:db8::10]:5070", "[2001:db8::10]", "2001:db8::10", 5070),
        ("sip:alice@[::ffff:192.0.2.4]", "[::ffff:192.0.2.4]", "::ffff:192.0.2.4", None),
        ("sip:alice@Atlanta.Example.TEST", "Atlanta.Example.TEST", "Atlanta.Example.TEST", None),
        ("sip:alice@a-b.example.test.", "a-b.example.test.", "a-b.example.test.", None),
        ("sip:alice@localhost:0", "localhost", "localhost", 0),
        ("sip:alice@h:65535", "h", "h", 65535),
    ],
)
def test_hosts_and_ports(text: str, host: str, bare: str, port: int | None) -> None:
    uri = sip(text)
    assert (uri.host, uri.host_bare, uri.port) == (host, bare, port)


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:@example.test",
        "sip:alice@",
        "sip:alice@bad_host",
        "sip:alice@-bad.example.test",
        "sip:alice@bad-.example.test",
        "sip:alice@a..b",
        "sip:alice@[2001:db8::1",
        "sip:alice@[zz::1]",
        "sip:alice@[2001:db8::1]5060",
        "sip:alice@2001:db8::1",  # RFC 5118: IPv6 needs brackets
        "sip:alice@example.test:",
        "sip:alice@example.test:65536",
        "sip:alice@example.test:123456",
        "sip:alice@example.test:¹²",
        "sip:alice@example.test:-1",
        "sip:al ice@example.test",
        "sip:alice@example.test;",
        "sip:alice@example.test;;lr",
        "sip:alice@example.test;=x",
        "sip:alice@example.test;maddr=",
        "sip:alice@example.test;a=b=c",
        'sip:alice@example.test;a"b',
        "sip:ali<ce@example.test",
        "sip:alice@example.test?a=<b>",
        "sip:ali%ZZce@example.test",
        "sip:alice%4@example.test",
        "sip:alice@example.test;lr%",
        "sip:alïce@example.test",
        "sip:alice@exämple.test",
        "sip:alice:pa ss@example.test",
        "sip:alice:p@ss@example.test",
        "sip:alice@example.test\r\n",
    ],
)
def test_malformed_sip_uris(text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_uri(text)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "text", ["", "nocolon", "1abc:x", ":x", "tel:", "tel:+1 201", "http://x/<y>", 'urn:"q"', "tel:\x00", "tel:ü"]
)
def test_malformed_other_uris(text: str) -> None:
    with pytest.raises(ParseError, match="Bad URI"):
        parse_uri(text)


def test_user_part_may_hold_unusual_characters() -> None:
    """RFC 4475 intmeth and semiuri: "?", ";", "/" and more are user-unreserved."""
    uri = sip(
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    )
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert (uri.host, uri.params, uri.headers) == ("example.com", {}, "")

    semi = sip("sip:user;par=u%40example.net@example.com")
    assert (semi.user, semi.host, semi.params) == ("user;par=u%40example.net", "example.com", {})


def test_escaped_user_is_kept_as_written() -> None:
    uri = sip("sip:sips%3Auser%40example.com@example.net")
    assert uri.user == "sips%3Auser%40example.com" and uri.host == "example.net"
    assert str(uri) == "sip:sips%3Auser%40example.com@example.net"


def test_escaped_parameter_names_are_normalised() -> None:
    """RFC 4475 esc01: ``%6C%72`` is ``lr``; the value keeps its escapes (``value%41`` is not ``valueA``)."""
    uri = sip("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert uri.lr
    assert uri.params == {"lr": None, "name": "v%61lue%25%34%31"}
    assert uri == sip("sip:caller@host5.example.net;lr;name=value%2541")
    assert uri != sip("sip:caller@host5.example.net;lr;name=valueA")


def test_parameter_characters() -> None:
    uri = sip("sip:h.example.test;x-[a]=/b:c&d+$;mAdDr=[2001:db8::1]")
    assert uri.params == {"x-[a]": "/b:c&d+$", "maddr": "[2001:db8::1]"}


def test_tel_and_other_schemes_are_carried_opaquely() -> None:
    tel = parse_uri("tel:+1-201-555-0123;phone-context=example.test")
    assert tel == AbsoluteURI("tel", "tel:+1-201-555-0123;phone-context=example.test")
    assert str(tel) == "tel:+1-201-555-0123;phone-context=example.test"
    assert parse_uri("TEL:+358-555-1234567") == AbsoluteURI("tel", "TEL:+358-555-1234567")
    assert parse_uri("soap.beep://192.0.2.103:3002").scheme == "soap.beep"  # type: ignore[union-attr]
    assert parse_uri("nobodyKnowsThisScheme:totallyopaquecontent").scheme == "nobodyknowsthisscheme"  # type: ignore[union-attr]
    assert parse_uri("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6") == AbsoluteURI(
        "urn", "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    )
    assert parse_uri("tel:+1-201-555-0123") != sip("sip:+1-201-555-0123@example.test;user=phone")


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.example.test",
        "sips:alice:pw@[2001:db8::1]:5061;transport=tls;lr;maddr=192.0.2.1?Subject=hi&Priority=urgent",
        "sip:%61lice@atlanta.example.test;Transport=TCP",
        "sip:user;par=u%40example.net@example.com",
        "sip:biloxi.example.test;method=REGISTER?to=sip:bob%40biloxi.example.test",
    ],
)
def test_str_round_trips(text: str) -> None:
    uri = sip(text)
    assert sip(str(uri)) == uri
    assert str(sip(str(uri))) == str(uri)


def test_with_makes_a_changed_copy() -> None:
    uri = sip("sip:bob@example.test;lr")
    moved = uri.with_(host="192.0.2.9", port=5070)
    assert str(moved) == "sip:bob@192.0.2.9:5070;lr"
    assert str(uri) == "sip:bob@example.test;lr"


def test_aor_drops_parameters_headers_and_password() -> None:
    uri = sip("sips:Bob:pw@BILOXI.Example.TEST:5061;transport=tls?Subject=x")
    aor = uri.aor()
    assert str(aor) == "sips:Bob@biloxi.example.test:5061"
    assert aor == sip("sips:Bob@biloxi.example.test:5061")


@pytest.mark.parametrize(
    ("text", "aor"),
    [
        ("sip:%61lice@example.test", "sip:alice@example.test"),
        ("sip:I%20have%20spaces@example.test", "sip:I%20have%20spaces@example.test"),
        ("sip:null-%00-null@example.test", "sip:null-%00-null@example.test"),
        ("sip:%7e%2fx%3a@example.test", "sip:~/x%3A@example.test"),
    ],
)
def test_aor_normalises_escapes_into_a_valid_uri(text: str, aor: str) -> None:
    canonical = sip(text).aor()
    assert str(canonical) == aor
    assert sip(str(canonical)) == sip(text)


def test_helpers() -> None:
    assert format_host("2001:db8::1") == "[2001:db8::1]"
    assert format_host("[2001:db8::1]") == "[2001:db8::1]"
    assert format_host("example.test") == "example.test"
    assert is_ip_address("192.0.2.1") and is_ip_address("[2001:db8::1]") and is_ip_address("2001:db8::1")
    assert not is_ip_address("example.test")


# -- §19.1.4 comparison --------------------------------------------------------------------

#: The pairs RFC 3261 §19.1.4 lists as equivalent.
EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
]

#: The pairs RFC 3261 §19.1.4 lists as not equivalent.
NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),  # different usernames
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),  # can resolve to different ports
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),  # can resolve to different transports
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),  # different port and transport
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),  # different header component
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),  # even if that is what the name resolves to
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_rfc3261_equal_pairs(a: str, b: str) -> None:
    assert sip(a) == sip(b) and sip(b) == sip(a)
    assert hash(sip(a)) == hash(sip(b))


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_rfc3261_not_equal_pairs(a: str, b: str) -> None:
    assert sip(a) != sip(b) and sip(b) != sip(a)


def test_equality_is_not_transitive() -> None:
    """§19.1.4: security=on and security=off both match the bare URI, but not each other."""
    bare, on, off = (
        sip("sip:carol@chicago.com"),
        sip("sip:carol@chicago.com;security=on"),
        sip("sip:carol@chicago.com;security=off"),
    )
    assert bare == on and bare == off and on != off


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("sip:alice@example.test", "sips:alice@example.test", False),  # scheme
        ("sip:%41@example.test", "sip:A@example.test", True),  # escapes compared unescaped
        ("sip:%4a@example.test", "sip:%4A@example.test", True),  # hex case
        ("sip:%FF@example.test", "sip:%FE@example.test", False),  # octets, not text: both are not U+FFFD
        ("sip:%00@example.test", "sip:%00%00@example.test", False),  # RFC 4475 escnull
        ("sip:alice@example.test", "sip:Alice@example.test", False),  # user is case-sensitive
        ("sip:alice:pw@example.test", "sip:alice:PW@example.test", False),  # so is the password
        ("sip:alice:pw@example.test", "sip:alice@example.test", False),
        ("sip:alice@example.test;user=phone", "sip:alice@example.test", False),  # user, ttl, method, maddr, transport
        ("sip:alice@example.test;ttl=1", "sip:alice@example.test", False),
        ("sip:alice@example.test;method=INVITE", "sip:alice@example.test", False),
        ("sip:alice@example.test;maddr=192.0.2.1", "sip:alice@example.test", False),
        ("sip:alice@example.test;lr", "sip:alice@example.test", True),  # other parameters only if in both
        ("sip:alice@example.test;foo=A%42", "sip:alice@example.test;FOO=ab", True),
        ("sip:alice@example.test;foo=1", "sip:alice@example.test;foo=2", False),
        ("sip:alice@[2001:DB8::1]", "sip:alice@[2001:db8::1]", True),
        ("sip:alice@example.test?a=1", "sip:alice@example.test?A=1", True),  # header names are case-insensitive
        ("sip:alice@example.test?a=x", "sip:alice@example.test?a=X", False),  # their values are not
    ],
)
def test_more_comparison_rules(a: str, b: str, equal: bool) -> None:
    assert (sip(a) == sip(b)) is equal
    assert (sip(b) == sip(a)) is equal
    if equal:
        assert hash(sip(a)) == hash(sip(b))


def test_a_sip_uri_never_equals_another_type() -> None:
    assert sip("sip:alice@example.test") != "sip:alice@example.test"
    assert sip("sip:alice@example.test") != AbsoluteURI("sip", "sip:alice@example.test")
    assert len({sip("sip:%61lice@example.test"), sip("sip:alice@EXAMPLE.test")}) == 1
