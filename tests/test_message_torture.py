"""RFC 4475 torture messages against the parser.

The fixtures in ``tests/data/torture/`` are the RFC's messages (§3.1.1 valid,
§3.1.2 invalid, §3.3 application-layer), stored as wire bytes: CRLF line ends,
raw control characters and UTF-8 where the RFC has them, a binary body in
mpart01.  Each one is listed below with what the RFC expects of a parser --
or, where the RFC's answer belongs to a later layer (416 for an unknown
scheme, 420, 483, the registrar's 400), with what the parser hands that layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sipproxy.message import (
    KEEPALIVE,
    AbsoluteURI,
    CSeq,
    Message,
    ParseError,
    Request,
    Response,
    SipURI,
    StreamFramer,
    make_response,
    parse_message,
    parse_uri,
)

#: Each test runs with the C accelerator in front and with the Python parser alone.
pytestmark = pytest.mark.usefixtures("both_parsers")

TORTURE = Path(__file__).parent / "data" / "torture"


def load(name: str) -> bytes:
    return (TORTURE / f"{name}.sip").read_bytes()


def request(name: str) -> Request:
    message = parse_message(load(name))
    assert isinstance(message, Request)
    return message


def summary(message: Message) -> tuple[str, list[tuple[str, str]], bytes]:
    """What must survive a round trip: start line, header values in order, body.

    Content-Length is left out: writing a message makes it match the body (and
    adds it when absent), which the round-trip test checks on its own.
    """
    headers = [(h.key, h.value) for h in message.headers if h.key != "content-length"]
    return message.start_line(), headers, message.body


# -- well-formed messages ----------------------------------------------------------------------

CHECKS: dict[str, Callable[[Request | Response], None]] = {}


def check(name: str) -> Callable[[Callable[[Request], None]], Callable[[Request], None]]:
    def register(function: Callable[[Request], None]) -> Callable[[Request], None]:
        CHECKS[name] = function  # type: ignore[assignment]
        return function

    return register


@check("wsinv")
def _wsinv(m: Request) -> None:
    """§3.1.1.1: folding, LWS, escaped quotes, empty Subject, compact/long mix, unknown headers."""
    assert m.method == "INVITE"
    assert isinstance(m.uri, SipURI) and m.uri.params == {"unknownparam": None}
    assert m.to.display is None and m.to.tag == "1918181833n"
    assert m.to.uri == parse_uri("sip:vivekg@chair-dnrc.example.com")
    assert m.from_.display == 'J Rosenberg \\"' and m.from_.tag == "98asjd8"
    assert (m.max_forwards, m.cseq, m.content_length) == (68, CSeq(9, "INVITE"), 150)
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.vias[0].wants_rport and not m.vias[0].rfc3261
    assert m.get("subject") == ""
    assert m.get("newfangledheader") == "newfangled value continued newfangled value"
    assert m.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (route,) = m.addresses("route")
    assert isinstance(route.uri, SipURI) and route.uri.lr
    assert route.uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    (contact,) = m.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"} and contact.q == 0.33
    assert len(m.body) == 150 and m.get("content-type") == "application/sdp"


@check("intmeth")
def _intmeth(m: Request) -> None:
    """§3.1.1.2: every token character in method, branch, tags; quoted NUL; a UTF-8 header."""
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.method == method and m.cseq == CSeq(139122385, method)
    assert isinstance(m.uri, SipURI)
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)" and m.uri.host == "example.com"
    assert m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.params == {"fromparam''~+*_!.-%": '"работающий"', "tag": "_token~1'+`*%!-."}
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.max_forwards == 255
    assert m.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


@check("esc01")
def _esc01(m: Request) -> None:
    """§3.1.1.3: % escapes in user parts and URI parameters are the characters they encode."""
    assert isinstance(m.uri, SipURI) and m.uri.user == "sips%3Auser%40example.com" and m.uri.host == "example.net"
    assert m.to.uri == parse_uri("sip:user@example.com")
    assert m.from_.uri == parse_uri("sip:I%20have%20spaces@example.net")
    (contact,) = m.contacts
    assert isinstance(contact.uri, SipURI) and contact.uri.lr
    assert contact.uri == parse_uri("sip:caller@host5.example.net;lr;name=value%2541")
    assert contact.uri != parse_uri("sip:caller@host5.example.net;lr;name=valueA")  # never unescaped twice


@check("escnull")
def _escnull(m: Request) -> None:
    """§3.1.1.4: %00 in user parts; two different contacts."""
    assert m.to.uri == m.from_.uri == parse_uri("sip:null-%00-null@example.com")
    first, second = m.contacts
    assert first.uri != second.uri
    assert isinstance(first.uri, SipURI) and str(first.uri.aor()) == "sip:%00@host5.example.com"


@check("esc02")
def _esc02(m: Request) -> None:
    """§3.1.1.5: % is not an escape in a method, a header name or a quoted string."""
    assert m.method == "RE%47IST%45R"  # an unknown method, not REGISTER
    assert m.cseq == CSeq(29344, "RE%47IST%45R")
    assert m.to.display == "%Z%45" and m.from_.display == "%Z%45"
    assert m.top_via.branch == "z9hG4bK209%fzsnel234"
    assert [str(c.uri) for c in m.contacts] == ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"]
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"  # an unknown header


@check("lwsdisp")
def _lwsdisp(m: Request) -> None:
    """§3.1.1.6: no LWS between display name and <."""
    assert m.from_.display == "caller" and m.from_.tag == "323"


@check("longreq")
def _longreq(m: Request) -> None:
    """§3.1.1.7: long values everywhere, 33 Vias in three spellings."""
    assert len(m.vias) == 33
    assert [v.host for v in m.vias[:2]] == ["sip33.example.com", "sip32.example.com"]
    assert all(v.transport == "TCP" for v in m.vias)
    assert m.to.display is not None and len(m.to.display) > 280
    assert isinstance(m.to.uri, SipURI) and m.to.uri.port == 6000 and len(m.to.uri.params) == 3
    assert m.from_.tag is not None and len(m.from_.params) == 3
    assert len(m.call_id) > 360
    assert m.content_length == 150 == len(m.body)


@check("dblreq")
def _dblreq(m: Request) -> None:
    """§3.1.1.8: in a datagram, what follows Content-Length (a whole INVITE) is not part of the REGISTER."""
    assert m.method == "REGISTER" and m.body == b""
    assert m.addresses("contact")[0].uri == parse_uri("sip:j.user@host.example.com")


@check("semiuri")
def _semiuri(m: Request) -> None:
    """§3.1.1.9: ";" in the user part of the Request-URI."""
    assert isinstance(m.uri, SipURI)
    assert (m.uri.user, m.uri.host, m.uri.params) == ("user;par=u%40example.net", "example.com", {})
    assert m.get_all("accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


@check("transports")
def _transports(m: Request) -> None:
    """§3.1.1.10: known and unknown transports."""
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


@check("mpart01")
def _mpart01(m: Request) -> None:
    """§3.1.1.11: a multipart body with binary parts, CRLFs and NULs inside."""
    assert m.content_length == len(m.body) > 553
    assert b"\x00" in m.body and b"\r\n\r\n" in m.body
    assert m.body.startswith(b"--7a9cbec02ceef655\r\n") and m.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert m.get("content-type") == "multipart/mixed;boundary=7a9cbec02ceef655"


@check("unreason")
def _unreason(m: Request | Response) -> None:
    """§3.1.1.12: a UTF-8 reason phrase with reserved characters."""
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (200, "= 2**3 * 5**2 но сто девяносто девять - простое")


@check("noreason")
def _noreason(m: Request | Response) -> None:
    """§3.1.1.13: an empty reason phrase."""
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (100, "")


@check("baddate")
def _baddate(m: Request) -> None:
    """§3.1.2.12: a proxy forwards the bad Date as is; only an endpoint might care."""
    assert m.get("date") == "Fri, 01 Jan 2010 16:00:00 EST"


@check("regbadct")
def _regbadct(m: Request) -> None:
    """§3.1.2.13: the unbracketed Contact with headers is the registrar's 400, found when it reads Contacts."""
    with pytest.raises(ParseError) as info:
        m.contacts  # noqa: B018
    assert info.value.status == 400 and info.value.reason.startswith("Bad Contact: ")


@check("badbranch")
def _badbranch(m: Request) -> None:
    """§3.2.1: a branch that is only the magic cookie is still a branch."""
    assert m.top_via.branch == "z9hG4bK" and m.top_via.rfc3261


@check("unkscm")
def _unkscm(m: Request) -> None:
    """§3.3.1: unknown Request-URI scheme: the proxy answers 416."""
    assert m.uri == AbsoluteURI("nobodyknowsthisscheme", "nobodyKnowsThisScheme:totallyopaquecontent")


@check("novelsc")
def _novelsc(m: Request) -> None:
    """§3.3.2: known but atypical scheme: still not ours to route (416)."""
    assert isinstance(m.uri, AbsoluteURI) and m.uri.scheme == "soap.beep"


@check("unksm2")
def _unksm2(m: Request) -> None:
    """§3.3.3: unknown schemes in To, From and Contact: the registrar refuses them."""
    assert m.to.uri == AbsoluteURI("isbn", "isbn:2983792873")
    assert m.from_.uri == AbsoluteURI("http", "http://www.example.com") and m.from_.tag == "3234233"
    assert [c.uri for c in m.contacts] == [AbsoluteURI("name", "name:John_Smith")]


@check("bext01")
def _bext01(m: Request) -> None:
    """§3.3.4: unknown Require/Proxy-Require: 420 from whoever does not support them."""
    assert m.option_tags("require") == ["nothingsupportsthis", "nothingsupportsthiseither"]
    assert m.option_tags("proxy-require") == ["noproxiessupportthis", "nordoanyproxiessupportthis"]


@check("zeromf")
def _zeromf(m: Request) -> None:
    """§3.3.8: Max-Forwards 0: a proxy answers 483 (an OPTIONS may be answered)."""
    assert m.max_forwards == 0


@check("cparam01")
def _cparam01(m: Request) -> None:
    """§3.3.9: without <>, unknownparam is a Contact parameter."""
    (contact,) = m.contacts
    assert contact.params == {"unknownparam": None}
    assert isinstance(contact.uri, SipURI) and contact.uri.params == {}


@check("cparam02")
def _cparam02(m: Request) -> None:
    """§3.3.10: inside <>, unknownparam is a URI parameter."""
    (contact,) = m.contacts
    assert contact.params == {}
    assert isinstance(contact.uri, SipURI) and contact.uri.params == {"unknownparam": None}


@check("regescrt")
def _regescrt(m: Request) -> None:
    """§3.3.11: a bracketed Contact may carry escaped headers."""
    (contact,) = m.contacts
    assert isinstance(contact.uri, SipURI) and contact.uri.headers == "Route=%3Csip:sip.example.com%3E"


@check("inv2543")
def _inv2543(m: Request) -> None:
    """§3.4.1: an RFC 2543 INVITE: no branch, no Max-Forwards, no Content-Length."""
    assert not m.top_via.rfc3261 and m.top_via.branch is None
    assert m.max_forwards is None
    assert m.content_length in (None, len(m.body))  # None as received; written, it gets one
    assert m.body.startswith(b"v=0\r\n") and len(m.body) == 150
    assert m.to.params == {"user": "phone"}  # an addr-spec: user=phone belongs to the header here
    assert m.from_.uri == parse_uri("sip:+13035551111@ift.client.example.net;user=phone")


VALID = sorted(CHECKS)

#: Invalid messages: (status, reason, whether a response can be built from ``partial``).
INVALID: dict[str, tuple[int, str, bool]] = {
    "badinv01": (400, "Bad Via: empty parameter", True),  # §3.1.2.1 extraneous separators
    "clerr": (400, "Bad Content-Length", True),  # §3.1.2.2 Content-Length larger than the message
    "scalar02": (400, "Bad Content-Length", True),  # §3.1.2.3 negative Content-Length
    "scalarlg": (400, "Bad CSeq number", True),  # §3.1.2.4 overlarge scalars in a request
    "scalar1": (400, "Bad CSeq number", False),  # §3.1.2.5 ...in a response: dropped
    "quotbl": (400, "Bad To: unterminated quoted string", True),  # §3.1.2.6
    "ltgtruri": (400, "Bad Request-URI", True),  # §3.1.2.7 <> around the Request-URI
    "lwsruri": (400, "Bad request line", True),  # §3.1.2.8 LWS inside the Request-URI
    "lwsstart": (400, "Bad request line", True),  # §3.1.2.9 several SPs in the request line
    "trws": (400, "Bad request line", True),  # §3.1.2.10 SPs at its end (we take the strict option)
    "escruri": (400, "Bad Request-URI (headers are not allowed)", True),  # §3.1.2.11
    "badaspec": (400, "Bad To: spaces inside <> in address", True),  # §3.1.2.14 (strict option)
    "baddn": (400, "Bad From: bad display name", True),  # §3.1.2.15 non-token display name
    "badvers": (505, "Version Not Supported", True),  # §3.1.2.16
    "mismatch01": (400, "CSeq method does not match request method", True),  # §3.1.2.17
    "mismatch02": (400, "CSeq method does not match request method", True),  # §3.1.2.18: 400, not 501
    "bigcode": (400, "Bad status code", False),  # §3.1.2.19 overlarge response code: dropped
    "insuf": (400, "Missing From", False),  # §3.3.5 no From, To, Call-ID: nothing to answer with
    "multi01": (400, "Multiple CSeq headers", True),  # §3.3.13 several values in single-value headers
    "mcl01": (400, "Multiple Content-Length headers", True),  # §3.3.14
}


def test_every_fixture_is_covered() -> None:
    on_disk = {p.stem for p in TORTURE.glob("*.sip")}
    assert on_disk == set(VALID) | set(INVALID)
    assert not set(VALID) & set(INVALID)


@pytest.mark.parametrize("name", sorted(set(VALID) | set(INVALID)))
def test_fixtures_use_crlf(name: str) -> None:
    data = load(name)
    head = data[: data.index(b"\r\n\r\n")]
    assert head.count(b"\n") == head.count(b"\r\n") == head.count(b"\r")


@pytest.mark.parametrize("name", VALID)
def test_valid_messages_parse(name: str) -> None:
    message = parse_message(load(name))
    CHECKS[name](message)


@pytest.mark.parametrize("name", VALID)
def test_valid_messages_survive_a_round_trip(name: str) -> None:
    message = parse_message(load(name))
    again = parse_message(message.to_bytes())
    assert summary(again) == summary(message)
    assert again.content_length == len(again.body)
    CHECKS[name](again)


@pytest.mark.parametrize("name", sorted(set(VALID) - {"dblreq", "inv2543"}))
def test_valid_messages_are_written_back_byte_for_byte(name: str) -> None:
    """dblreq loses the trailing INVITE and inv2543 gains a Content-Length; the rest is untouched."""
    assert parse_message(load(name)).to_bytes() == load(name)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_messages_are_refused(name: str) -> None:
    status, reason, answerable = INVALID[name]
    with pytest.raises(ParseError) as info:
        parse_message(load(name))
    error = info.value
    assert (error.status, error.reason) == (status, reason)
    if not answerable:
        assert error.partial is None
        return
    assert error.partial is not None
    response = make_response(error.partial, error.status, error.reason).to_bytes()
    assert response.startswith(f"SIP/2.0 {status} {reason}\r\n".encode())
    call_id = next(h.value for h in error.partial.headers if h.key == "call-id")
    assert f"Call-ID: {call_id}\r\n".encode() in response or f"i: {call_id}\r\n".encode() in response


def test_without_content_length_a_datagram_body_runs_to_the_end() -> None:
    m = request("inv2543")
    assert m.content_length is None and m.body == load("inv2543").partition(b"\r\n\r\n")[2]


def test_dblreq_on_a_stream_is_two_messages() -> None:
    """On TCP the same bytes frame as the REGISTER, then (after a stray CRLF) the INVITE."""
    items = StreamFramer().feed(load("dblreq"))
    assert len(items) == 2 and KEEPALIVE not in items
    register, invite = (parse_message(item) for item in items)  # type: ignore[arg-type]
    assert isinstance(register, Request) and register.method == "REGISTER"
    assert (
        isinstance(invite, Request) and invite.method == "INVITE" and invite.content_length == len(invite.body) == 150
    )
