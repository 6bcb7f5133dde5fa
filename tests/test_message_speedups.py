"""The C accelerator against the Python parser it stands in for.

``_speedups.parse`` either builds exactly the objects ``parse_python`` builds
-- the same classes, field by field, dict order and value types included --
or hands the message back (``None``).  It must never accept what the Python
parser rejects, and it must take the everyday messages, or it is no faster.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_message_fuzz import SEEDS, mutated, name_addr_text, sip_uri_text
from test_plugin import c_compiler_available

from sipproxy.message import ParseError, _accel, parse_message, parse_name_addr, parse_uri
from sipproxy.message.parser import parse_python

if _accel.parse is None and (os.environ.get("SIPPROXY_NO_EXTENSIONS") or not c_compiler_available()):
    # switched off, or no C compiler to build it: the Python parser runs (tests/test_plugin.py checks that path)
    pytest.skip(
        "the C accelerator is switched off (SIPPROXY_NO_EXTENSIONS) or unbuildable here", allow_module_level=True
    )

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BENCH = Path(__file__).parent.parent / "bench"


def snapshot(value: object) -> object:
    """Every field of a parsed message, recursively, with the type of each value."""
    if isinstance(value, dict):
        return ("dict", tuple((k, snapshot(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(snapshot(v) for v in value))
    if value is None or type(value) in (str, bytes, int):
        return (type(value).__name__, value)
    slots = [name for cls in type(value).__mro__ for name in getattr(cls, "__slots__", ())]
    assert slots, f"unexpected value {value!r}"
    return (type(value).__name__, tuple((name, snapshot(getattr(value, name, "<unset>"))) for name in sorted(slots)))


def python_result(parse: object, given: object) -> object:
    """What the Python code alone makes of ``given``: no name-addr or URI from C either."""
    saved = _accel.name_addr, _accel.sip_uri
    _accel.name_addr = _accel.sip_uri = None
    try:
        return snapshot(parse(given))  # type: ignore[operator]
    except ParseError as exc:
        return ("ParseError", exc.status, exc.reason)
    finally:
        _accel.name_addr, _accel.sip_uri = saved


def check(data: bytes) -> bool:
    """The accelerator agrees with the Python parser on ``data``; whether it took the message."""
    fast = _accel.parse(data)
    if fast is None:
        return False
    assert snapshot(fast) == python_result(parse_python, data)
    return True


def test_the_accelerator_is_built_where_a_compiler_is() -> None:
    """A machine with a C compiler builds it (setup.py); without it the server runs the Python parser."""
    assert _accel.parse is not None, "sipproxy/message/_speedups.c was not built although a C compiler is here"


def message(*headers: str, start: str = "INVITE sip:bob@example.test SIP/2.0", body: bytes = b"") -> bytes:
    return (start + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + body


BASE = (
    "Via: SIP/2.0/UDP pc33.example.test:5060;branch=z9hG4bK776asdhds;rport",
    "Max-Forwards: 70",
    "To: Bob <sip:bob@example.test>",
    'From: "Alice" <sip:alice@example.test>;tag=1928301774',
    "Call-ID: a84b4c76e66710@pc33.example.test",
    "CSeq: 314159 INVITE",
)

#: Everyday messages: the accelerator must take each one, and build what the Python parser builds.
EVERYDAY = [
    message(*BASE),
    message(*BASE, "Content-Length: 0"),
    message(*BASE, "Content-Type: application/sdp", "Content-Length: 4", body=b"v=0\r\n"),  # body cut at 4
    message(*BASE, "X-Custom-Header: anything ; at=all", "User-Agent: Phone/1.0 (x; y)"),
    message(*BASE, "Call-Id: mixed-case-name@x", start="INVITE sip:bob@example.test SIP/2.0").replace(
        b"Call-ID: a84b4c76e66710@pc33.example.test\r\n", b""
    ),
    message(
        "v: SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bK1;received=192.0.2.9",
        "VIA: SIP/2.0/udp host-a.example.test.;branch=z9hG4bK2;ttl=16;maddr=239.1.1.1",
        "t: sip:bob@example.test",
        "f: Alice Liddell <sip:alice;x=y@example.test:5061;transport=TCP;lr>;TAG=ab;Expires=3",
        "i: 1@2",
        "CSeq: 2147483647 REGISTER",
        "l: 0",
        start="REGISTER sip:example.test;transport=udp SIP/2.0",
    ),
    message(*BASE[:1], *BASE[2:], start="SIP/2.0 200 OK"),
    message(*BASE[:1], *BASE[2:], start="SIP/2.0 180"),
    message(*BASE[:1], *BASE[2:], start="SIP/2.0 603 Decline, with a , comma"),
    message(*BASE[:1], *BASE[2:], "Max-Forwards: banana", start="SIP/2.0 100 Trying"),  # responses: not read
    message(*BASE, "Max-Forwards: 70"),  # a repeated single header with the same value
    message(*BASE, "User-Agent: Téléphone/1.0 ☎").replace(b'"Alice"', '"Alïce Ünïcode"'.encode()),  # UTF-8
    message(*BASE[:1], *BASE[2:], start="SIP/2.0 486 Besetzt – später"),
    message(*BASE).replace(b"To: Bob <sip:bob@example.test>", 'To: "Bób" <sip:bob@example.test>;x="ü;v"'.encode()),
]


@pytest.mark.parametrize("data", EVERYDAY, ids=range(len(EVERYDAY)))
def test_takes_the_everyday_message(data: bytes) -> None:
    assert check(data), "handed back a message it should take"


def test_takes_the_benchmark_messages() -> None:
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        from parse_bench import INVITE, REGISTER
    finally:
        sys.path.remove(str(BENCH))
    assert check(INVITE)
    assert check(REGISTER)


#: What the accelerator hands back; the Python parser answers each (with a message or a ParseError).
HANDED_BACK = [
    message(*BASE).replace(b"\r\n", b"\n"),  # bare LF line ends
    message(*BASE, "Subject: folded", " across lines"),
    message(*BASE).replace(b'"Alice"', b'"Al\xffce"'),  # not UTF-8: the Python parser keeps the byte
    message(*BASE).replace(b'"Alice"', "Jösé".encode()),  # a display name of tokens is ASCII
    message(*BASE, "Via: SIP/2.0/UDP x.test;branch=z9hG4bK\u00a03"),  # NBSP is whitespace to Python's \s
    message(*BASE).replace(b'"Alice"', b'"A\\"lice"'),  # an escape in a quoted string
    message(*BASE, start="INVITE sips:bob@example.test SIP/2.0"),
    message(*BASE, start="INVITE tel:+15551234 SIP/2.0"),
    message(*BASE, start="INVITE sip:bob@[2001:db8::1] SIP/2.0"),
    message(*BASE, start="INVITE sip:b%40b@example.test SIP/2.0"),  # an escape in the user
    message(*BASE, start="INVITE sip:bob@example.test?Subject=x SIP/2.0"),  # headers: a 400
    message(*BASE, start="INVITE  sip:bob@example.test SIP/2.0"),
    message(*BASE, start="INVITE sip:bob@example.test SIP/3.0"),  # 505
    message(*BASE, start="SIP/2.0 099 Odd"),
    message(*BASE, start="SIP/2.0 20 OK"),
    message(*BASE, "Via : SIP/2.0/UDP x.test;branch=z9hG4bK3"),  # space before the colon
    message(*BASE, "Via: SIP/2.0/UDP a.test;branch=z9hG4bK3, SIP/2.0/UDP b.test;branch=z9hG4bK4"),
    message(*BASE, "Via: SIP/2.0/UDP x.test;branch"),  # branch needs a value: a 400
    message(*BASE, "Via: SIP/2.0/UDP x.test;branch=z9hG4bK3;rport=65536"),
    message(*BASE, "Via: SIP/2.0/UDP x.test:65536;branch=z9hG4bK3"),
    message(*BASE, "Via: SIP/2.0/UDP -x.test;branch=z9hG4bK3"),
    message(*BASE, "Via: SIP/2.0/UDP x..test;branch=z9hG4bK3"),
    message(*BASE, "Via: SIP / 2.0 / UDP x.test;branch=z9hG4bK3"),
    message(*BASE, "Call-ID: another@example.test"),  # two different Call-IDs: a 400
    message(*BASE, "Content-Length: 10"),  # longer than the body: a 400
    message(*BASE, "Content-Length: 1e3"),
    message(*BASE, "CSeq: 1 INVITE"),  # two different CSeqs: a 400
    message(*BASE).replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"),  # method mismatch: a 400
    message(*BASE).replace(b"CSeq: 314159 INVITE", b"CSeq: 2147483648 INVITE"),
    message(*BASE).replace(b"Max-Forwards: 70", b"Max-Forwards: 256"),
    message(*BASE).replace(b"Call-ID: a84b4c76e66710@pc33.example.test", b"Call-ID: a b"),
    message(*BASE).replace(b"To: Bob <sip:bob@example.test>", b"To: Bob  <sip:bob@example.test>"),
    message(*BASE).replace(b"To: Bob <sip:bob@example.test>", b"To: <sip:bob@example.test> ;tag=1"),
    message(*BASE).replace(b"Via: ", b"X-Via: "),  # no Via at all: a 400
    message(*BASE, *(f"X-H{i}: {i}" for i in range(251))),  # 257 headers: too many
    b"\r\n" + message(*BASE),  # a leading CRLF
]


@pytest.mark.parametrize("data", HANDED_BACK, ids=range(len(HANDED_BACK)))
def test_hands_back_what_is_not_everyday(data: bytes) -> None:
    assert _accel.parse(data) is None
    try:
        parse_message(data)
    except ParseError:
        pass


def test_takes_up_to_the_header_limit() -> None:
    assert check(message(*BASE, *(f"X-H{i}: {i}" for i in range(250))))  # 256 headers


def test_seeds_agree() -> None:
    """The fuzz seeds and every RFC 4475 message: taken and equal, or handed back."""
    for data in SEEDS:
        check(data)


@FUZZ
@given(mutated())
def test_mutated_messages_agree(data: bytes) -> None:
    check(data)


_KINDS = ["plain"] * 16 + ["odd"] * 3 + ["random"]
_ALPHABET = "aB9-._!~*'()&=+$,;?/:@<>\"\\% \t[]%"


def _part(draw: st.DrawFn, plain: str, *odd: str) -> str:
    """Mostly the plain form (or the whole message would be broken), now and then an odd one."""
    kind = draw(st.sampled_from(_KINDS))
    if kind == "plain" or not odd:
        return plain
    if kind == "odd":
        return draw(st.sampled_from(odd))
    return draw(st.text(alphabet=_ALPHABET, max_size=12))


def _uri_parts(draw: st.DrawFn) -> tuple[str, str, str]:
    """A SIP URI, the host and port in it, each part plain or odd."""

    def text(plain: str, *odd: str) -> str:
        return _part(draw, plain, *odd)

    host = text("example.test", "192.0.2.1", "a-b.example.test.", "x", "-x", "x-", "a..b", "[::1]", "EXAMPLE.Test")
    port = text("", ":5060", ":65535", ":65536", ":0", ":123456", ":", ":5x")
    uparams = text("", ";lr", ";transport=TCP", ";maddr=239.0.0.1;ttl=5", ";x=", ";=y", ";a=b=c", ";LR;Lr")
    user = text("", "bob@", "b;x=1@", "@", "a@b@", "%41@", "a b@")
    return text("sip:", "sips:", "SIP:", "tel:") + user + host + port + uparams, host, port


@st.composite
def plain_uri(draw: st.DrawFn) -> str:
    return _uri_parts(draw)[0]


@st.composite
def plain_name_addr(draw: st.DrawFn) -> str:
    """A From/To/Contact/Route value: ``display <uri>;params`` or ``uri;params``, plain or odd."""
    uri = _uri_parts(draw)[0]
    hparams = _part(
        draw,
        "",
        ";tag=1",
        ";TAG=x;expires=3",
        ";tag",
        ";tag=",
        ';tag="q"',
        ";a=b=c",
        " ;tag=1",
        ";q=0.5",
        ';+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1',
        ';x="a;b, c"',
        ';x=""',
        ';x="a\\"b"',
        ';x="open',
        ';x="a"b',
        ';x="a" ;y',
        ';x= "a"',
    )
    if draw(st.booleans()):
        return uri + hparams  # addr-spec
    display = _part(draw, "", "Bob ", "Bob", '"Bob" ', '""', '"B\\"ob" ', "Bob  ", "A B C ", "<", '"Bób" ')
    return f"{display}<{uri}>{hparams}"


@st.composite
def everyday(draw: st.DrawFn) -> bytes:
    """Messages built near the lines the accelerator draws: each part plain, odd, or broken."""

    def text(plain: str, *odd: str) -> str:
        return _part(draw, plain, *odd)

    uri, host, port = _uri_parts(draw)
    display = text("", "Bob ", "Bob", '"Bob" ', '""', '"B\\"ob" ', "Bob  ", "A B C ", "<", '"Jösé" ', "Jösé ")
    hparams = text("", ";tag=1", ";TAG=x;expires=3", ";tag", ";tag=", ';tag="q"', ";a=b=c", " ;tag=1")
    vparams = text("", ";branch=z9hG4bK1", ";branch", ";rport", ";rport=1", ";rport=70000", ";ttl=256", ";TTL=1")
    transport = text("UDP", "tcp", "Tls", "", "U1")
    via = "SIP/2.0/" + transport + " " + host + port + vparams
    method = text("INVITE", "REGISTER", "X-MINE", "")
    cseq = text("1", "2147483647", "2147483648", "01", "") + text(" ", "  ", "\t") + method
    name = draw(st.sampled_from(["Via", "via", "VIA", "v", "vIa", "Via "]))
    headers = [
        f"{name}: {via}",
        f"{draw(st.sampled_from(['To', 't', 'TO']))}: {display}<{uri}>{hparams}",
        f"From: {text('Alice <sip:alice@example.test>;tag=1')}",
        f"{draw(st.sampled_from(['Call-ID', 'i', 'call-id', 'Call-Id']))}: {text('abc@host', 'a b', '')}",
        f"CSeq: {cseq}",
    ]
    if draw(st.booleans()):
        headers.append(f"Max-Forwards: {text('70', '255', '256', '007')}")
    body = draw(st.sampled_from([b"", b"hello", b"\xff\x00"]))
    if draw(st.booleans()):
        headers.append(f"Content-Length: {text(str(len(body)), '0', '2', '99')}")
    extra = ["X-A: 1", "Subject: hi", "Contact: *", "k: path", "User-Agent: Tél ☎", "Subject: \u00a0x\u2028y"]
    headers.extend(draw(st.lists(st.sampled_from(extra), max_size=3)))
    headers = draw(st.permutations(headers))
    if draw(st.booleans()):
        start = f"SIP/2.0 {text('200', '100', '699', '700', '2000')} {text('OK', '')}"
    else:
        start = f"{method} {uri} SIP/2.0"
    return message(*headers, start=start, body=body)


@FUZZ
@given(everyday())
@example(message(*BASE))
def test_built_messages_agree(data: bytes) -> None:
    check(data)


# -- name_addr() and sip_uri(): the same plain forms, one value at a time (Contact, Route, bindings) --


def check_value(fast: object, parse: object, text: str) -> bool:
    result = fast(text)  # type: ignore[operator]
    if result is None:
        return False
    assert snapshot(result) == python_result(parse, text)
    return True


@pytest.mark.parametrize(
    "text",
    [
        "<sip:bob@192.0.2.4:5060;transport=udp>;expires=7200",
        '"Bob" <sip:bob@example.test>;tag=1;q=0.5',
        "Bob Smith <sip:bob@example.test;lr>",
        "sip:bob@example.test;tag=x",
        "<sip:proxy.example.test;lr>",
        '<sip:bob@192.0.2.4;ob>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1',
        'sip:bob@192.0.2.4;+sip.instance="<urn:uuid:1>";x="a;b, c"',
    ],
)
def test_name_addr_takes_the_plain_forms(text: str) -> None:
    assert check_value(_accel.name_addr, parse_name_addr, text)


@pytest.mark.parametrize(
    "text", ["sip:bob@example.test", "sip:192.0.2.4:5060;transport=UDP", "sip:u;x=1@h-1.example.test.:1;lr"]
)
def test_sip_uri_takes_the_plain_forms(text: str) -> None:
    assert check_value(_accel.sip_uri, parse_uri, text)


@pytest.mark.parametrize(
    "text",
    [
        "sips:bob@example.test",
        "tel:+15551234",
        "sip:bob@[2001:db8::1]",
        "sip:b%41b@example.test",
        "sip:bob@example.test?Subject=x",
        "sip:bob@example.test:65536",
        " sip:bob@example.test",
        "sip:bob@exämple.test",
    ],
)
def test_sip_uri_hands_back(text: str) -> None:
    assert _accel.sip_uri(text) is None


@FUZZ
@given(name_addr_text() | plain_name_addr())
@example('sip:a@b;+sip.instance="<urn:x>"')
@example('"a\r\nb" <sip:a@b>')
def test_name_addrs_agree(text: str) -> None:
    check_value(_accel.name_addr, parse_name_addr, text)


@FUZZ
@given(sip_uri_text() | plain_uri())
def test_sip_uris_agree(text: str) -> None:
    check_value(_accel.sip_uri, parse_uri, text)
