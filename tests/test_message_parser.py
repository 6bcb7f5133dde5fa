"""Parsing and writing whole messages (RFC 3261 §7, §8.2.6, §18.3, §20, §25).

The builders in ``tests/messages.py`` make wire bytes; each test changes the
one thing it is about.  Addresses are documentation ones (example.test, 192.0.2.0/24).
"""

from __future__ import annotations

import pytest

from sipproxy.message import (
    AbsoluteURI,
    CSeq,
    ParseError,
    Request,
    Response,
    SipURI,
    canonical_key,
    make_response,
    parse_message,
    parse_uri,
)
from sipproxy.message.parser import MAX_HEADERS

try:
    from tests.messages import make_request, make_response_bytes, parse_request
except ImportError:  # pragma: no cover
    from messages import make_request, make_response_bytes, parse_request  # type: ignore[no-redef]

#: Each test runs with the C accelerator in front and with the Python parser alone.
pytestmark = pytest.mark.usefixtures("both_parsers")


def parse_error(data: bytes) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_message(data)
    return info.value


def wire_lines(data: bytes) -> list[bytes]:
    """The start line and header lines of a message, as written."""
    head, _, _ = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")


# -- the builder itself ------------------------------------------------------------


def test_builder_makes_a_valid_request() -> None:
    data = make_request("OPTIONS", call_id="x@example.test", subject="hi")
    assert data.startswith(b"OPTIONS sip:bob@example.test SIP/2.0\r\nVia: ")
    assert b"\r\nCall-ID: x@example.test\r\n" in data
    assert b"\r\nCSeq: 1 OPTIONS\r\n" in data
    assert data.endswith(b"Subject: hi\r\nContent-Length: 0\r\n\r\n")
    assert b"Call-ID" not in make_request(call_id=None)


# -- start lines -------------------------------------------------------------------


def test_request_line() -> None:
    request = parse_request(make_request("INVITE", "sip:bob@example.test;transport=tcp"))
    assert request.method == "INVITE"
    assert request.uri_text == "sip:bob@example.test;transport=tcp"
    assert isinstance(request.uri, SipURI)
    assert (request.uri.user, request.uri.host, request.uri.transport) == ("bob", "example.test", "tcp")
    assert request.start_line() == "INVITE sip:bob@example.test;transport=tcp SIP/2.0\r\n"


@pytest.mark.parametrize(
    "method", ["PUBLISH", "FOOBAR", "X-Custom.Method", "!interesting-Method0123456789_*+`.%indeed'~"]
)
def test_extension_methods_are_tokens(method: str) -> None:
    request = parse_request(make_request(method))
    assert request.method == method
    assert request.cseq == CSeq(1, method)


def test_method_is_case_sensitive() -> None:
    """§7.1: "invite" is an unknown method, not INVITE, so "CSeq: 1 INVITE" does not match it."""
    assert parse_request(make_request("invite")).method == "invite"
    error = parse_error(make_request("invite", cseq="1 INVITE"))
    assert (error.status, error.reason) == (400, "CSeq method does not match request method")


@pytest.mark.parametrize("method", ["INV<ITE", 'INV"ITE', "INVITE:", "ÉCRIRE"])
def test_method_must_be_a_token(method: str) -> None:
    error = parse_error(make_request(method))
    assert (error.status, error.reason) == (400, "Bad method")


@pytest.mark.parametrize("version", ["SIP/3.0", "SIP/1.0", "SIP/2.1", "SIP/7.0", "SIP/20.0"])
def test_other_sip_versions_are_505(version: str) -> None:
    error = parse_error(make_request(version=version))
    assert (error.status, error.reason) == (505, "Version Not Supported")
    assert isinstance(error.partial, Request)  # so the 505 can be sent (§8.2.6)
    assert error.partial.method == "INVITE"


def test_version_is_case_insensitive() -> None:
    """§7.1: the SIP-Version string is case-insensitive (we always send upper-case)."""
    request = parse_request(make_request(version="sip/2.0"))
    assert request.start_line() == "INVITE sip:bob@example.test SIP/2.0\r\n"


@pytest.mark.parametrize("version", ["HTTP/1.1", "SIP/2", "SIP/2.0.1", "SIP/x.0", "SIP/" + "9" * 5000 + ".0"])
def test_malformed_versions_are_400(version: str) -> None:
    error = parse_error(make_request(version=version))
    assert (error.status, error.reason) == (400, "Bad SIP version")


@pytest.mark.parametrize(
    "first",
    [
        "INVITE  sip:bob@example.test SIP/2.0",  # RFC 4475 lwsstart
        "INVITE sip:bob@example.test SIP/2.0  ",  # RFC 4475 trws
        "INVITE sip:bob@example.test; lr SIP/2.0",  # RFC 4475 lwsruri
        "INVITE sip:bob@example.test",
        "INVITE\tsip:bob@example.test\tSIP/2.0",
        "INVITE",
    ],
)
def test_malformed_request_lines_are_400_and_answerable(first: str) -> None:
    data = make_request().replace(b"INVITE sip:bob@example.test SIP/2.0", first.encode(), 1)
    error = parse_error(data)
    assert (error.status, error.reason) == (400, "Bad request line")
    assert error.partial is not None and error.partial.method == "INVITE"
    response = make_response(error.partial, error.status, error.reason)
    assert response.get("call-id") == "3848276298220188511@client.example.test"


@pytest.mark.parametrize(
    "uri",
    [
        "<sip:bob@example.test>",
        "sip:",
        "sip:bob@",
        "bob@example.test",
        "sip:bob@bad_host",
        "sip:bob@example.test:99999",
    ],
)
def test_bad_request_uri_is_400(uri: str) -> None:
    error = parse_error(make_request(uri=uri))  # RFC 4475 ltgtruri is the first one
    assert (error.status, error.reason) == (400, "Bad Request-URI")
    assert error.partial is not None


def test_headers_in_request_uri_are_400() -> None:
    """§19.1.1: headers are not allowed in a Request-URI (RFC 4475 escruri)."""
    error = parse_error(make_request(uri="sip:bob@example.test?Route=%3Csip:example.test%3E"))
    assert error.status == 400
    assert error.reason.startswith("Bad Request-URI")
    assert error.partial is not None


def test_request_uri_of_another_scheme_is_carried_for_the_proxy_to_refuse() -> None:
    """§16.3 step 2: 416 is the proxy's answer; the parser hands over an AbsoluteURI."""
    request = parse_request(make_request(uri="tel:+1-201-555-0123"))
    assert request.uri == AbsoluteURI("tel", "tel:+1-201-555-0123")


@pytest.mark.parametrize("status", [100, 180, 183, 199, 200, 202, 302, 404, 486, 500, 503, 603, 699])
def test_status_codes_100_to_699(status: int) -> None:
    response = parse_message(make_response_bytes(status, "Whatever"))
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (status, "Whatever")


@pytest.mark.parametrize("code", ["099", "700", "999", "1000", "20", "2OO", "+20", "²00", "4294967301"])
def test_bad_status_codes(code: str) -> None:
    error = parse_error(make_response_bytes().replace(b"SIP/2.0 200", b"SIP/2.0 " + code.encode(), 1))
    assert (error.status, error.reason) == (400, "Bad status code")
    assert error.partial is None  # a bad response is dropped, never answered


def test_reason_phrase_is_utf8_and_may_contain_spaces() -> None:
    reason = "= 2**3 * 5**2 но сто девяносто девять - простое"  # RFC 4475 unreason
    response = parse_message(make_response_bytes(200, reason))
    assert isinstance(response, Response)
    assert response.reason == reason
    assert response.to_bytes().startswith(f"SIP/2.0 200 {reason}\r\n".encode())


def test_empty_reason_phrase() -> None:
    """RFC 4475 noreason: the SP after the code is required, the phrase may be empty."""
    response = parse_message(make_response_bytes(100, ""))
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (100, "")
    assert response.start_line() == "SIP/2.0 100 \r\n"


def test_missing_space_after_status_code_is_tolerated() -> None:
    data = make_response_bytes(100, "").replace(b"SIP/2.0 100 \r\n", b"SIP/2.0 100\r\n")
    response = parse_message(data)
    assert isinstance(response, Response) and (response.status, response.reason) == (100, "")


def test_response_with_other_version_is_dropped() -> None:
    error = parse_error(make_response_bytes().replace(b"SIP/2.0 200", b"SIP/3.0 200", 1))
    assert error.status == 400 and error.partial is None


def test_lower_case_response_version_is_a_response() -> None:
    assert isinstance(parse_message(make_response_bytes().replace(b"SIP/2.0 200", b"sip/2.0 200", 1)), Response)


# -- header names, LWS, folding -------------------------------------------------------


@pytest.mark.parametrize("spelling", ["Via", "VIA", "via", "vIa", "v", "V"])
def test_header_names_are_case_insensitive_and_compact(spelling: str) -> None:
    data = make_request(via=None, extra=(f"{spelling}: SIP/2.0/UDP host.example.test;branch=z9hG4bKx",))
    request = parse_request(data)
    assert (
        request.get("Via") == request.get("v") == request.get("VIA") == "SIP/2.0/UDP host.example.test;branch=z9hG4bKx"
    )
    assert request.top_via.host == "host.example.test"
    assert request.headers[-2].name == spelling  # kept as written


COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "f": "From",
    "t": "To",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "y": "Identity",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
}


@pytest.mark.parametrize(("letter", "long"), sorted(COMPACT.items()))
def test_compact_forms(letter: str, long: str) -> None:
    assert canonical_key(letter) == canonical_key(letter.upper()) == long.lower()
    values = {
        "Call-ID": "compact@example.test",
        "Contact": "<sip:alice@192.0.2.7>",
        "From": "<sip:alice@example.test>;tag=1",
        "To": "<sip:bob@example.test>",
        "Via": "SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKc",
        "Content-Length": "0",
    }
    value = values.get(long, "some-value")
    data = make_request(**{long.replace("-", "_"): None}, content_length=None, extra=(f"{letter}: {value}",))
    if long != "Content-Length":
        data = data.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n")
    request = parse_request(data)
    assert request.get(long) == request.get(letter) == value
    assert request.has(long) and request.count(letter) == 1


def test_a_message_written_entirely_in_compact_form() -> None:
    data = (
        b"OPTIONS sip:bob@example.test SIP/2.0\r\n"
        b"v: SIP/2.0/TCP 192.0.2.7;branch=z9hG4bKcompact\r\n"
        b"f: <sip:alice@example.test>;tag=1\r\n"
        b"t: <sip:bob@example.test>\r\n"
        b"i: all-compact@192.0.2.7\r\n"
        b"CSeq: 7 OPTIONS\r\n"
        b"m: <sip:alice@192.0.2.7;transport=tcp>\r\n"
        b"k: path\r\n"
        b"l: 0\r\n\r\n"
    )
    request = parse_request(data)
    assert request.top_via.transport == "TCP"
    assert request.from_.tag == "1" and request.to.tag is None
    assert request.call_id == "all-compact@192.0.2.7"
    assert request.option_tags("supported") == ["path"]
    assert request.content_length == 0
    assert request.to_bytes() == data


def test_whitespace_around_the_colon() -> None:
    request = parse_request(make_request(extra=("Subject   :   lunch?  ", "X-Tight:tight", "X-Tab:\tx\t")))
    assert request.get("subject") == "lunch?"
    assert request.get("x-tight") == "tight"
    assert request.get("x-tab") == "x"
    assert [h.name for h in request.headers if h.key.startswith("x-")] == ["X-Tight", "X-Tab"]


def test_empty_header_value() -> None:
    request = parse_request(make_request(extra=("Subject:", "Organization: ")))
    assert request.get("subject") == "" and request.get("organization") == ""


def test_folding_joins_lines_with_one_space() -> None:
    """§7.3.1: a line starting with SP or HT continues the one before; the fold counts as one SP."""
    data = make_request(
        subject=None,
        extra=(
            "Subject: first",
            "  second",
            "\tthird  ",
            "NewFangledHeader:   newfangled value",
            " continued newfangled value",
        ),
    )
    request = parse_request(data)
    assert request.get("subject") == "first second third"
    assert request.get("newfangledheader") == "newfangled value continued newfangled value"
    assert request.to_bytes() == data  # folded lines are forwarded as written


def test_folding_in_typed_headers() -> None:
    data = make_request(
        via=None,
        cseq=None,
        to=None,
        extra=(
            "Via  : SIP  /   2.0",
            " /UDP",
            "    192.0.2.2;rport;branch=390skdjuw",
            "cseq: 0009",
            "  INVITE",
            "TO :",
            " sip:vivekg@chair-dnrc.example.test ;   tag    = 1918181833n",
        ),
    )
    request = parse_request(data)
    assert (request.top_via.transport, request.top_via.host, request.top_via.branch) == (
        "UDP",
        "192.0.2.2",
        "390skdjuw",
    )
    assert request.cseq == CSeq(9, "INVITE")
    assert request.to.tag == "1918181833n" and request.to.uri == parse_uri("sip:vivekg@chair-dnrc.example.test")


def test_whitespace_only_continuation_line_adds_nothing() -> None:
    request = parse_request(make_request(extra=("Subject: a", " ")))
    assert request.get("subject") == "a"


def test_continuation_before_any_header_is_400() -> None:
    data = make_request().replace(b"SIP/2.0\r\n", b"SIP/2.0\r\n folded\r\n", 1)
    assert parse_error(data).reason == "Continuation line before any header"


@pytest.mark.parametrize("line", ["NoColonHere", "Bad Name: x", 'Bad"Name: x', ": no name", "Ünïcode: x", "X-A\x00: y"])
def test_malformed_header_lines_are_400(line: str) -> None:
    error = parse_error(make_request(extra=(line,)))
    assert (error.status, error.reason) == (400, "Bad header line")


def test_stray_cr_is_400() -> None:
    assert parse_error(make_request(extra=("Subject: a\rb",))).reason == "Stray CR in headers"


def test_bare_lf_line_ends_are_tolerated_and_written_as_crlf() -> None:
    data = make_request(body=b"v=0\r\n", content_type="application/sdp")
    request = parse_request(data.replace(b"\r\n", b"\n").replace(b"\nv=0\n", b"\nv=0\r\n"))
    assert request.body == b"v=0\r\n"
    assert request.to_bytes() == data


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n", b"\r\n" * 5])
def test_crlfs_before_the_start_line_are_ignored(prefix: bytes) -> None:
    """§7.5."""
    data = make_request(body=b"v=0\r\n")
    request = parse_request(prefix + data)
    assert request.method == "INVITE" and request.body == b"v=0\r\n"
    assert request.to_bytes() == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "Empty message"),
        (b"\r\n\r\n", "Empty message"),
        (b"INVITE sip:bob@example.test SIP/2.0", "Missing blank line after headers"),
        (
            b"INVITE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1",
            "Missing blank line after headers",
        ),
    ],
)
def test_truncated_messages(data: bytes, reason: str) -> None:
    assert parse_error(data).reason == reason


def test_headers_without_final_blank_line_still_parse() -> None:
    """A datagram ending right after the last header line (no empty line) has no body."""
    data = make_request().removesuffix(b"\r\n")
    request = parse_request(data)
    assert request.body == b"" and request.content_length == 0


def test_too_many_headers() -> None:
    extra = tuple(f"X-H{i}: {i}" for i in range(MAX_HEADERS))
    error = parse_error(make_request(extra=extra))
    assert (error.status, error.reason) == (400, "Too many headers")


# -- list headers and the comma rule ---------------------------------------------------


def test_comma_separated_and_separate_lines_are_the_same_list() -> None:
    """§7.3.1."""
    one = parse_request(make_request(extra=("Route: <sip:p1.example.test;lr>, <sip:p2.example.test;lr>",)))
    two = parse_request(make_request(extra=("Route: <sip:p1.example.test;lr>", "Route: <sip:p2.example.test;lr>")))
    assert one.get_all("route") == two.get_all("route") == ["<sip:p1.example.test;lr>", "<sip:p2.example.test;lr>"]
    assert [a.uri for a in one.addresses("route")] == [a.uri for a in two.addresses("route")]


def test_non_list_headers_are_not_split() -> None:
    request = parse_request(
        make_request(
            extra=("Subject: lunch, then coffee", 'Authorization: Digest username="bob", realm="example.test"')
        )
    )
    assert request.get_all("subject") == ["lunch, then coffee"]
    assert request.get_all("authorization") == ['Digest username="bob", realm="example.test"']


def test_header_order_and_unknown_headers_are_preserved() -> None:
    extra = (
        "X-First: 1",
        "Subject: hello",
        "x-first: 2",
        "P-Asserted-Identity: <sip:alice@example.test>",
        "X-Weird: ;;,,;;,;",
    )
    data = make_request(extra=extra)
    request = parse_request(data)
    assert wire_lines(data)[1:] == [f"{n}: {v}".encode() for n, v in request]
    assert request.get_all("x-first") == ["1", "2"]
    assert request.get("X-WEIRD") == ";;,,;;,;"
    assert request.to_bytes() == data


# -- typed values ------------------------------------------------------------------------


def test_typed_values_of_a_request() -> None:
    request = parse_request(make_request())
    assert str(request.top_via) == "SIP/2.0/UDP client.example.test:5060;branch=z9hG4bK74bf9"
    assert request.from_.display == "Alice" and request.from_.tag == "9fxced76sl"
    assert request.to.display == "Bob" and request.to.tag is None
    assert request.call_id == "3848276298220188511@client.example.test"
    assert request.cseq == CSeq(1, "INVITE")
    assert request.max_forwards == 70
    assert request.content_length == 0
    assert request.expires is None


def test_several_vias_in_order() -> None:
    data = make_request(
        via="SIP/2.0/UDP p2.example.test;branch=z9hG4bK2, SIP/2.0/TCP p1.example.test;branch=z9hG4bK1",
        extra=("v: SIP/2.0/TLS client.example.test;branch=z9hG4bK0",),
    )
    request = parse_request(data)
    assert [(v.transport, v.host) for v in request.vias] == [
        ("UDP", "p2.example.test"),
        ("TCP", "p1.example.test"),
        ("TLS", "client.example.test"),
    ]
    assert request.top_via is request.vias[0]


def test_a_bad_lower_via_is_still_400() -> None:
    """Every Via must parse: responses are routed by them (§18.2.2)."""
    error = parse_error(make_request(extra=("Via: SIP/2.0/UDP bad_host;branch=z9hG4bK9",)))
    assert (error.status, error.reason) == (400, "Bad Via sent-by")


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("from", "Bell, Alexander <sip:a.g.bell@example.test>;tag=43", "Bad From: bad display name"),
        ("to", '"Mr. J. User <sip:j.user@example.test>', "Bad To: unterminated quoted string"),
        ("to", "< sip:t.watson@example.test >", "Bad To: spaces inside <> in address"),
        ("via", "SIP/2.0/UDP 192.0.2.15;;,;,,", "Bad Via: empty parameter"),
        ("cseq", "1", "Bad CSeq"),
        ("cseq", "-1 INVITE", "Bad CSeq number"),
        ("cseq", "2147483648 INVITE", "Bad CSeq number"),
        ("cseq", "³ INVITE", "Bad CSeq number"),
        ("call_id", "has space@example.test", "Bad Call-ID"),
        ("max_forwards", "256", "Bad Max-Forwards"),
        ("max_forwards", "-1", "Bad Max-Forwards"),
        ("max_forwards", "²", "Bad Max-Forwards"),
    ],
)
def test_bad_core_headers_are_400_naming_the_header(name: str, value: str, reason: str) -> None:
    error = parse_error(make_request(**{name: value}))
    assert (error.status, error.reason) == (400, reason)
    assert error.partial is not None  # every mandatory header is there: a 400 can be built
    assert make_response(error.partial, error.status, error.reason).status == 400


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header_is_400(name: str) -> None:
    """§8.1.1: To, From, CSeq, Call-ID, Max-Forwards and Via; Max-Forwards may lack (RFC 2543 peers)."""
    error = parse_error(make_request(**{name.replace("-", "_"): None}))
    assert (error.status, error.reason) == (400, f"Missing {name}")
    assert error.partial is None  # without it no response can be built
    response_error = parse_error(make_response_bytes(**{name.replace("-", "_"): None}))
    assert response_error.reason == f"Missing {name}"


def test_missing_max_forwards_is_allowed() -> None:
    assert parse_request(make_request(max_forwards=None)).max_forwards is None


@pytest.mark.parametrize("name", ["From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length"])
def test_single_valued_headers_given_twice_are_400(name: str) -> None:
    values = {
        "From": "<sip:carol@example.test>;tag=2",
        "To": "<sip:dave@example.test>",
        "Call-ID": "other@example.test",
        "CSeq": "2 INVITE",
        "Max-Forwards": "69",
        "Content-Length": "0",
    }
    error = parse_error(make_request(body=b"x", extra=(f"{name}: {values[name]}",)))
    assert (error.status, error.reason) == (400, f"Multiple {name} headers")


def test_repeated_identical_single_valued_header_is_tolerated() -> None:
    request = parse_request(make_request(extra=("Max-Forwards: 70",)))
    assert request.max_forwards == 70


@pytest.mark.parametrize(("value", "seq"), [("0009 INVITE", 9), ("2147483647 INVITE", 2**31 - 1), ("1 \t INVITE", 1)])
def test_cseq(value: str, seq: int) -> None:
    assert parse_request(make_request(cseq=value)).cseq == CSeq(seq, "INVITE")


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("0068", 68), ("255", 255)])
def test_max_forwards(value: str, expected: int) -> None:
    assert parse_request(make_request(max_forwards=value)).max_forwards == expected


def test_expires_is_read_when_asked() -> None:
    assert parse_request(make_request("REGISTER", expires="3600")).expires == 3600
    assert parse_request(make_request("REGISTER", expires=str(2**32 - 1))).expires == 2**32 - 1
    request = parse_request(make_request("REGISTER", expires="1" + "0" * 90))  # RFC 4475 scalarlg
    with pytest.raises(ParseError, match="Bad Expires"):
        request.expires  # noqa: B018


def test_contacts_and_wildcard() -> None:
    request = parse_request(
        make_request(
            "REGISTER",
            contact='<sip:alice@192.0.2.7>;expires=60;q=0.7, "A" <sip:alice@192.0.2.8>',
            extra=("m: <sip:alice@192.0.2.9>",),
        )
    )
    contacts = request.contacts
    assert contacts != "*"
    assert [str(c.uri) for c in contacts] == ["sip:alice@192.0.2.7", "sip:alice@192.0.2.8", "sip:alice@192.0.2.9"]
    assert (contacts[0].expires, contacts[0].q) == (60, 0.7)
    assert (contacts[1].expires, contacts[1].q, contacts[1].display) == (None, None, "A")

    assert parse_request(make_request("REGISTER", contact="*", expires="0")).contacts == "*"
    mixed = parse_request(make_request("REGISTER", contact="*, <sip:alice@192.0.2.7>"))
    with pytest.raises(ParseError, match="Wildcard"):
        mixed.contacts  # noqa: B018


def test_bad_contact_is_found_when_read() -> None:
    """Contacts are the registrar's to read (RFC 4475 regbadct): the parser lets them through."""
    request = parse_request(make_request("REGISTER", contact="sip:user@example.test?Route=%3Csip:sip.example.test%3E"))
    with pytest.raises(ParseError) as info:
        request.contacts  # noqa: B018
    assert info.value.reason.startswith("Bad Contact: ")


def test_option_tags() -> None:
    request = parse_request(
        make_request(
            require="100rel, Timer",
            proxy_require="foo",
            supported="path,outbound",
            extra=("k: gruu", "Unsupported: bar", "Proxy-Require: BAZ"),
        )
    )
    assert request.option_tags("require") == ["100rel", "timer"]
    assert request.option_tags("Proxy-Require") == ["foo", "baz"]
    assert request.option_tags("supported") == ["path", "outbound", "gruu"]
    assert request.option_tags("unsupported") == ["bar"]
    assert request.option_tags("require") == request.option_tags("REQUIRE")


@pytest.mark.parametrize("name", ["Route", "Record-Route", "Path"])
def test_route_lists(name: str) -> None:
    request = parse_request(
        make_request(
            extra=(
                f"{name}: <sip:p1.example.test;lr>, <sip:[2001:db8::1]:5070;lr;transport=tcp>",
                f'{name}: "Edge" <sip:192.0.2.10;lr>;x=1',
            )
        )
    )
    addresses = request.addresses(name)
    assert [a.uri.host for a in addresses] == ["p1.example.test", "[2001:db8::1]", "192.0.2.10"]  # type: ignore[union-attr]
    assert all(isinstance(a.uri, SipURI) and a.uri.lr for a in addresses)
    assert addresses[2].display == "Edge" and addresses[2].params == {"x": "1"}


# -- bodies and Content-Length -----------------------------------------------------------------


def test_body_is_read_up_to_content_length() -> None:
    request = parse_request(make_request(body=b"v=0\r\n", content_type="application/sdp"))
    assert request.body == b"v=0\r\n" and request.content_length == 5


def test_bytes_after_content_length_are_discarded() -> None:
    """§18.3: in a datagram, octets past Content-Length are not part of the message."""
    request = parse_request(make_request(body=b"v=0\r\ngarbage", content_length=5))
    assert request.body == b"v=0\r\n"


def test_content_length_longer_than_datagram_is_400() -> None:
    error = parse_error(make_request(body=b"v=0\r\n", content_length=9999))  # RFC 4475 clerr
    assert (error.status, error.reason) == (400, "Bad Content-Length")
    assert error.partial is not None


@pytest.mark.parametrize("value", ["-999", "five", "1 2", "²", "99999999999"])
def test_malformed_content_length_is_400(value: str) -> None:
    assert parse_error(make_request(content_length=value)).reason == "Bad Content-Length"


def test_without_content_length_the_body_is_the_rest_of_the_datagram() -> None:
    request = parse_request(make_request(body=b"v=0\r\n", content_length=None))
    assert request.body == b"v=0\r\n" and request.content_length is None
    assert request.to_bytes().endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")


@pytest.mark.parametrize("new_body", [b"", b"x", b"a longer body than before\r\n", "ünïcödé".encode()])
def test_content_length_always_matches_the_body(new_body: bytes) -> None:
    request = parse_request(make_request(body=b"v=0\r\n"))
    request.body = new_body
    data = request.to_bytes()
    assert f"\r\nContent-Length: {len(new_body)}\r\n\r\n".encode() in data
    assert data.count(b"Content-Length") == 1
    again = parse_request(data)
    assert again.body == new_body and again.content_length == len(new_body)


def test_compact_content_length_keeps_its_spelling() -> None:
    data = make_request(content_length=None, extra=("l: 0",))
    request = parse_request(data)
    request.body = b"hello"
    assert request.to_bytes().endswith(b"\r\nl: 5\r\n\r\nhello")


def test_binary_body_is_kept_byte_exact() -> None:
    body = bytes(range(256)) + b"\r\n\r\n\x00"
    request = parse_request(make_request("MESSAGE", body=body, content_type="application/octet-stream"))
    assert request.body == body
    assert parse_request(request.to_bytes()).body == body


# -- forwarding: only what was changed changes --------------------------------------------------

FORWARDED = make_request(
    "INVITE",
    "sip:bob@proxy.example.test",
    via="SIP/2.0/UDP client.example.test:5060;branch=z9hG4bK74bf9;rport",
    body=b"v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\n",
    extra=(
        "Route: <sip:proxy.example.test;lr>",
        "Route: <sip:edge.example.test;lr>",
        "Contact: <sip:alice@192.0.2.7>",
        "Supported: replaces",
        "X-Unknown:   spaced   value  ",
        "Content-Type: application/sdp",
        "Subject: folded",
        " over two lines",
    ),
)


def test_untouched_message_is_written_back_byte_for_byte() -> None:
    assert parse_request(FORWARDED).to_bytes() == FORWARDED


def test_proxy_changes_touch_only_their_own_lines() -> None:
    request = parse_request(FORWARDED)
    request.add("Via", "SIP/2.0/UDP proxy.example.test;branch=z9hG4bKproxy1", first=True)
    assert request.pop_first("route") == "<sip:proxy.example.test;lr>"
    assert request.max_forwards is not None
    request.set("Max-Forwards", str(request.max_forwards - 1))
    request.uri = parse_uri("sip:bob@192.0.2.20:5062")
    request.add("Record-Route", "<sip:proxy.example.test;lr>", first=True)
    out = request.to_bytes()

    before, after = set(wire_lines(FORWARDED)), set(wire_lines(out))
    assert after - before == {
        b"INVITE sip:bob@192.0.2.20:5062 SIP/2.0",
        b"Via: SIP/2.0/UDP proxy.example.test;branch=z9hG4bKproxy1",
        b"Max-Forwards: 69",
        b"Record-Route: <sip:proxy.example.test;lr>",
    }
    assert before - after == {
        b"INVITE sip:bob@proxy.example.test SIP/2.0",
        b"Max-Forwards: 70",
        b"Route: <sip:proxy.example.test;lr>",
    }
    assert out.endswith(b"\r\n\r\nv=0\r\no=- 1 1 IN IP4 192.0.2.7\r\n")

    again = parse_request(out)
    assert [v.host for v in again.vias] == ["proxy.example.test", "client.example.test"]
    assert again.max_forwards == 69
    assert [str(a.uri) for a in again.addresses("route")] == ["sip:edge.example.test;lr"]
    assert again.uri == parse_uri("sip:bob@192.0.2.20:5062")


def test_new_via_goes_above_a_comma_list_and_record_route_on_top() -> None:
    request = parse_request(
        make_request(
            via="SIP/2.0/UDP p1.example.test;branch=z9hG4bK1, SIP/2.0/UDP client.example.test;branch=z9hG4bK0",
            extra=("Record-Route: <sip:p1.example.test;lr>",),
        )
    )
    request.add("Via", "SIP/2.0/TCP p2.example.test;branch=z9hG4bK2", first=True)
    request.add("Record-Route", "<sip:p2.example.test;lr>", first=True)
    assert [v.host for v in request.vias] == ["p2.example.test", "p1.example.test", "client.example.test"]
    assert request.get_all("record-route") == ["<sip:p2.example.test;lr>", "<sip:p1.example.test;lr>"]


def test_pop_first_from_a_comma_list_rewrites_only_that_line() -> None:
    data = make_request(extra=("Route: <sip:p1.example.test;lr>,<sip:p2.example.test;lr>", "X-After: kept"))
    request = parse_request(data)
    assert request.pop_first("Route") == "<sip:p1.example.test;lr>"
    out = request.to_bytes()
    assert set(wire_lines(data)) - set(wire_lines(out)) == {b"Route: <sip:p1.example.test;lr>,<sip:p2.example.test;lr>"}
    assert set(wire_lines(out)) - set(wire_lines(data)) == {b"Route: <sip:p2.example.test;lr>"}
    assert request.pop_first("Route") == "<sip:p2.example.test;lr>"
    assert request.pop_first("Route") is None
    assert not request.has("route")


def test_response_forwarding_pops_our_via_only() -> None:
    data = make_response_bytes(
        180,
        "Ringing",
        via="SIP/2.0/UDP proxy.example.test;branch=z9hG4bKproxy1",
        to="Bob <sip:bob@example.test>;tag=8321234356",
        extra=(
            "Via: SIP/2.0/UDP client.example.test:5060;branch=z9hG4bK74bf9;received=192.0.2.7",
            "Contact: <sip:bob@192.0.2.20>",
        ),
    )
    response = parse_message(data)
    assert isinstance(response, Response)
    response.pop_first("via")
    assert response.top_via.host == "client.example.test"
    assert set(wire_lines(data)) - set(wire_lines(response.to_bytes())) == {
        b"Via: SIP/2.0/UDP proxy.example.test;branch=z9hG4bKproxy1"
    }


def test_typed_cache_follows_changes() -> None:
    request = parse_request(make_request())
    assert request.max_forwards == 70
    request.set("max-forwards", "5")
    request.set("to", "<sip:carol@example.test>;tag=x")
    assert request.max_forwards == 5 and request.to.tag == "x"
    request.remove("max-forwards")
    assert request.max_forwards is None


def test_changing_one_header_keeps_the_others_parsed_values() -> None:
    request = parse_request(FORWARDED)
    vias, to = request.vias, request.to
    request.add("Contact", "<sip:alice@192.0.2.4>")
    request.set("Max-Forwards", "9")
    assert request.vias is vias and request.to is to  # nothing parsed twice on the REGISTER hot path
    request.add("v", "SIP/2.0/UDP p.example.test;branch=z9hG4bKc", first=True)
    assert request.vias is not vias
    assert [v.host for v in request.vias] == ["p.example.test"] + [v.host for v in vias]
    request.add("Contact", "<sip:bob@192.0.2.5>")
    assert [str(c.uri) for c in request.addresses("contact")][-1] == "sip:bob@192.0.2.5"


def test_vias_kept_parsed_through_copy_pop_and_add_are_those_of_the_text() -> None:
    original = parse_request(FORWARDED)
    original.vias  # noqa: B018 - parsed, as the transaction layer does
    clone = original.copy()
    clone.add("Via", "SIP/2.0/TCP p.example.test:5070;branch=z9hG4bKc, SIP/2.0/UDP q.example.test", first=True)
    clone.top_via.params["received"] = "192.0.2.99"
    assert original.top_via.received is None  # the copy's Vias are its own
    clone.replace_top_via(clone.top_via)
    clone.pop_first("via")
    assert clone.vias == parse_request(clone.to_bytes()).vias
    assert [v.host for v in clone.vias] == ["q.example.test"] + [v.host for v in original.vias]
    clone.pop_first("via")
    assert clone.vias == parse_request(clone.to_bytes()).vias == original.vias


def test_popping_the_top_route_keeps_the_rest_of_the_route_set_parsed() -> None:
    request = parse_request(
        make_request(
            extra=("Route: <sip:p1.example.test;lr>, <sip:p2.example.test;lr>", "Route: <sip:p3.example.test;lr>")
        )
    )
    routes = request.addresses("route")
    assert request.pop_first("route") == "<sip:p1.example.test;lr>"
    assert request.addresses("route") == routes[1:] == parse_request(request.to_bytes()).addresses("route")
    assert request.addresses("route")[0] is routes[1]  # kept, not parsed again


def test_copy_is_independent() -> None:
    original = parse_request(FORWARDED)
    clone = original.copy()
    clone.set("Max-Forwards", "1")
    clone.add("Via", "SIP/2.0/UDP p.example.test;branch=z9hG4bKc", first=True)
    assert original.to_bytes() == FORWARDED
    assert clone.uri == original.uri and clone.body == original.body


def test_build_a_request_from_values() -> None:
    request = Request.build(
        "OPTIONS",
        parse_uri("sip:bob@example.test"),
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb"),
            ("f", "<sip:a@example.test>;tag=1"),
            ("To", "<sip:bob@example.test>"),
        ],
    )
    request.add("Call-ID", "built@example.test")
    request.add("CSeq", "1 OPTIONS")
    data = request.to_bytes()
    assert b"\r\nFrom: <sip:a@example.test>;tag=1\r\n" in data  # compact names are written long
    assert parse_request(data).cseq == CSeq(1, "OPTIONS")


# -- responses built from requests (§8.2.6) -------------------------------------------------------


def test_make_response_copies_the_transaction_headers() -> None:
    request = parse_request(FORWARDED)
    response = make_response(request, 486, to_tag="t1")
    assert (response.status, response.reason) == (486, "Busy Here")
    copied = [h.line() for h in request.headers if h.key in ("via", "from", "to", "call-id", "cseq")]
    assert [h.line() for h in response.headers if h.key != "to"] == [
        line for line in copied if not line.startswith("To")
    ]
    assert response.to.tag == "t1"
    assert response.from_ == request.from_ and response.call_id == request.call_id and response.cseq == request.cseq
    assert response.body == b"" and b"\r\nContent-Length: 0\r\n" in response.to_bytes()
    assert make_response(request, 100, to_tag="t1").to.tag is None  # never a tag on 100 Trying
    assert make_response(request, 499).reason == ""


def test_make_response_keeps_an_existing_to_tag() -> None:
    request = parse_request(make_request("BYE", to="<sip:bob@example.test>;tag=abc"))
    assert make_response(request, 200, to_tag="new").to.tag == "abc"


# -- the error object ------------------------------------------------------------------------------


def test_parse_error_carries_the_reply() -> None:
    error = ParseError("Bad Via sent-by")
    assert (error.status, error.reason, error.partial) == (400, "Bad Via sent-by", None)
    assert str(error) == "400 Bad Via sent-by"
    assert isinstance(error, ValueError)
    assert str(ParseError("Empty parameter").in_header("Via")) == "400 Bad Via: empty parameter"
    assert ParseError("Bad Via ttl").in_header("Via").reason == "Bad Via ttl"
    assert ParseError("URI trouble").in_header("To").reason == "Bad To: URI trouble"


def test_response_to_a_request_with_a_repeated_to_has_one_tagged_to() -> None:
    """A tolerated duplicate To must not turn into two different To lines in our response."""
    from sipproxy.message import make_response, parse_message

    request = parse_request(make_request(extra=("To: Bob <sip:bob@example.test>",)))
    assert request.count("to") == 2
    response = make_response(request, 486, to_tag="t1")
    reparsed = parse_message(response.to_bytes())
    assert reparsed.count("to") == 1
    assert reparsed.to.tag == "t1"


def test_a_first_header_without_namesake_goes_to_the_top() -> None:
    """A proxy's first Record-Route lands early in the header, not after Content-Length."""
    request = parse_request(make_request())
    request.add("Record-Route", "<sip:proxy.example.test;lr>", first=True)
    names = [h.name for h in request.headers]
    assert names[0] == "Record-Route"
    assert names[-1] != "Record-Route"
