"""Generative tests: junk only ever raises ParseError, what parses is stable, framing is exact.

Invariants (h11 ``fuzz/afl-server.py`` style):

* ``parse_message`` raises nothing but :class:`ParseError`, whatever the bytes;
* whatever parses writes out (``to_bytes``) to bytes that parse to the same
  start line, headers and body, and write out identically again;
* the short paths for everyday values (Via, name-addr, SIP URI, parameters,
  CSeq) give exactly what the general parsers give, errors included;
* ``StreamFramer`` returns exactly the messages and keep-alives that were sent,
  however the stream is cut, and refuses a header block that never ends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sipproxy.message import (
    KEEPALIVE,
    FramingError,
    Message,
    ParseError,
    Request,
    StreamFramer,
    make_response,
    parse_message,
    parse_uri,
    response_bytes,
)
from sipproxy.message.headers import _split_params, split_params
from sipproxy.message.parser import _split_crlf, _split_lines
from sipproxy.message.uri import _parse_sip
from sipproxy.message.values import _parse_cseq, _parse_name_addr, _parse_via, parse_cseq, parse_name_addr, parse_via

#: Each test runs with the C accelerator in front and with the Python parser alone.
pytestmark = pytest.mark.usefixtures("both_parsers")

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TORTURE = Path(__file__).parent / "data" / "torture"

_SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n"

#: Well-formed messages with a correct Content-Length: seeds for mutation and stream framing.
BUILT = [
    (
        b"INVITE sip:bob@example.test SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP p1.example.test;branch=z9hG4bK1;received=192.0.2.1, SIP/2.0/TCP [2001:db8::7]:5070;branch=z9hG4bK0;rport\r\n"
        b"Max-Forwards: 69\r\n"
        b"Record-Route: <sip:p1.example.test;lr>\r\n"
        b'From: "Alice \\"A\\"" <sip:alice@example.test>;tag=9fxced76sl\r\n'
        b"To: Bob <sip:bob@example.test>\r\n"
        b"Call-ID: 3848276298220188511@client.example.test\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:alice@192.0.2.7;transport=tcp>;expires=60\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: " + str(len(_SDP)).encode() + b"\r\n\r\n" + _SDP
    ),
    (
        b"REGISTER sip:example.test SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 192.0.2.4:5060;rport;branch=z9hG4bKnashds7\r\n"
        b"Max-Forwards: 70\r\n"
        b"t: Bob <sip:bob@example.test>\r\n"
        b"f: Bob <sip:bob@example.test>;tag=456248\r\n"
        b"i: 843817637684230@998sdasdh09\r\n"
        b"CSeq: 1826 REGISTER\r\n"
        b'm: <sip:bob@192.0.2.4>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1\r\n'
        b"Expires: 7200\r\n"
        b"l: 0\r\n\r\n"
    ),
    (
        b"SIP/2.0 180 Ringing\r\n"
        b"Via: SIP/2.0/UDP client.example.test:5060;branch=z9hG4bK74bf9;received=192.0.2.7\r\n"
        b"To: Bob <sip:bob@example.test>;tag=8321234356\r\n"
        b"From: Alice <sip:alice@example.test>;tag=9fxced76sl\r\n"
        b"Call-ID: 3848276298220188511@client.example.test\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Subject: folded\r\n"
        b"\tacross lines\r\n"
        b"Content-Length: 0\r\n\r\n"
    ),
]
TORTURE_MESSAGES = [p.read_bytes() for p in sorted(TORTURE.glob("*.sip"))]
SEEDS = BUILT + TORTURE_MESSAGES


def _frames_alone(data: bytes) -> bool:
    try:
        return StreamFramer().feed(data) == [data]
    except FramingError:
        return False


#: Messages a stream can carry: a Content-Length that covers exactly the body.
STREAMABLE = [m for m in SEEDS if _frames_alone(m)]

_INTERESTING = [
    b":",
    b";",
    b",",
    b"=",
    b" ",
    b"\t",
    b"\r\n",
    b"\r\n ",
    b"\n",
    b"\r",
    b'"',
    b"\\",
    b"<",
    b">",
    b"@",
    b"%",
    b"%0",
    b"[",
    b"]",
    b"?",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"SIP/2.0",
    b"9" * 12,
    b"\r\n\r\n",
    b"v: ",
    b"l: 5",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed message with a few byte flips, truncations, insertions, deletions or line duplications."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(["flip", "truncate", "insert", "delete", "dup_line", "drop_line", "swap_lines", "prefix"])
        )
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "prefix":
            data[0:0] = draw(st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b" ", b"\r"]))
        elif op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.sampled_from(_INTERESTING) | st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:
            lines = bytes(data).split(b"\r\n")
            j = draw(st.integers(0, len(lines) - 1))
            k = draw(st.integers(0, len(lines) - 1))
            if op == "dup_line":
                lines.insert(k, lines[j])
            elif op == "drop_line":
                del lines[j]
            else:
                lines[j], lines[k] = lines[k], lines[j]
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


_SIPPY_TEXT = st.text(alphabet='INVITE SIP/2.0sip:@<>;,"\\=%\r\n\t :VvfFtTiIlL0123456789-.abcxyz', max_size=400)


def parse_or_none(data: bytes) -> Message | None:
    """Parse, letting nothing but ParseError out."""
    try:
        return parse_message(data)
    except ParseError as exc:
        assert 400 <= exc.status <= 599 and exc.reason
        assert "\r" not in exc.reason and "\n" not in exc.reason
        if exc.partial is not None:
            exc.partial.copy()  # usable for make_response
        return None


def summary(message: Message) -> tuple[str, list[tuple[str, str]], bytes]:
    headers = [(h.key, h.value) for h in message.headers if h.key != "content-length"]
    return message.start_line(), headers, message.body


def assert_stable(message: Message) -> None:
    data = message.to_bytes()
    again = parse_message(data)  # must parse again
    assert summary(again) == summary(message)
    assert again.content_length == len(again.body)
    assert again.to_bytes() == data
    # the values the parser cached are those the accessors compute from scratch
    assert [repr(v) for v in again.vias] == [repr(v) for v in message.vias]
    assert (repr(again.from_), repr(again.to), again.cseq, again.call_id) == (
        repr(message.from_),
        repr(message.to),
        message.cseq,
        message.call_id,
    )


# -- parse_message --------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\r\n")
@example(b"SIP/2.0 200 OK\r\n\r\n")
@example(b"\x00\r\n\r\n")
@example(b"INVITE sip:a@b SIP/2.0\r\n\r\n")
def test_random_bytes_only_raise_parse_error(data: bytes) -> None:
    message = parse_or_none(data)
    if message is not None:
        assert_stable(message)


@FUZZ
@given(_SIPPY_TEXT.map(lambda s: s.encode("utf-8")))
def test_sip_looking_text_only_raises_parse_error(data: bytes) -> None:
    message = parse_or_none(data)
    if message is not None:
        assert_stable(message)


@FUZZ
@given(mutated())
def test_mutated_messages_only_raise_parse_error_and_round_trip(data: bytes) -> None:
    message = parse_or_none(data)
    if message is not None:
        assert_stable(message)


@QUICK
@given(st.sampled_from(SEEDS))
def test_seeds_parse_or_fail_cleanly(data: bytes) -> None:
    message = parse_or_none(data)
    if message is not None:
        assert_stable(message)


def test_all_built_seeds_parse() -> None:
    for data in BUILT:
        message = parse_message(data)
        assert message.to_bytes() == data
    assert len(STREAMABLE) >= 20


@FUZZ
@given(mutated(), st.sampled_from([(503, None), (100, None), (481, "Call Leg Gone"), (513, "")]))
def test_a_stateless_response_in_one_pass_is_byte_for_byte_the_built_one(data: bytes, answer: tuple) -> None:
    """``response_bytes`` (the overload refusals' 503) = ``make_response`` + ``add`` + ``to_bytes``, whatever came."""
    request = parse_or_none(data)
    if not isinstance(request, Request):
        return
    status, reason = answer
    try:
        built = make_response(request, status, reason, to_tag="sg.5eed")
    except ParseError:  # a request the transport answers with its 400 instead
        return
    built.add("Retry-After", "7")
    one_pass = response_bytes(request, status, reason, to_tag="sg.5eed", extra=(("Retry-After", "7"),))
    assert one_pass == built.to_bytes()


# -- short paths agree with the general parsers ---------------------------------------------------


@FUZZ
@given(mutated() | st.binary(max_size=300))
@example(b"\r\nOPTIONS sip:a SIP/2.0\r\n\r\n")
@example(b"OPTIONS sip:a SIP/2.0\nVia: x\r\n\r\n")
@example(b"OPTIONS sip:a SIP/2.0\r\nX: a\rb\r\n\r\n")
def test_head_split_short_path(data: bytes) -> None:
    fast = _split_crlf(data)
    if fast is not None:
        assert fast == _split_lines(data)


_TOKEN = st.text(alphabet="abcXYZ019-.!%*_+`'~", min_size=1, max_size=6)
_ODD = st.sampled_from(
    [
        "",
        " ",
        "\t",
        ";",
        ",",
        "=",
        '"',
        "\\",
        "<",
        ">",
        "@",
        ":",
        "%",
        "%4",
        "%41",
        "[",
        "]",
        "?",
        "&",
        "\x00",
        "é",
        "²",
    ]
)


def mostly(draw: st.DrawFn, good: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> str:
    """``good`` four times out of five, so that valid values (and so the short paths) are common."""
    return draw(bad) if draw(st.integers(0, 4)) == 0 else draw(good)


_GOOD_HOST = st.sampled_from(["example.test", "a-b.example.test", "192.0.2.1", "[2001:db8::1]", "h", "EXAMPLE.TEST."])
_BAD_HOST = st.sampled_from(["bad_host", "-x.test", "x-.test", "a..b", "2001:db8::1", "[2001:db8::1", ""])
_GOOD_PORT = st.sampled_from(["", "", ":5060", ":0", ":65535"])
_BAD_PORT = st.sampled_from([":65536", ":", ":99999", ":x", ": 5060", ":²"])
_VALUE = st.sampled_from(['"quoted;v"', "192.0.2.1", "[2001:db8::1]", "z9hG4bK1", "0.5", "256", "65536"])


@st.composite
def params_text(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = mostly(draw, _TOKEN, _ODD)
        if draw(st.booleans()):
            name += "=" + mostly(draw, _TOKEN | _VALUE, _ODD)
        if draw(st.integers(0, 4)) == 0:
            name = draw(st.sampled_from(["", " ", "  "])) + name + draw(st.sampled_from(["", " ", "\t"]))
        parts.append(name)
    return "".join(";" + p for p in parts)


def sprinkle(draw: st.DrawFn, text: str) -> str:
    """Now and then insert an odd character somewhere."""
    if text and draw(st.integers(0, 3)) == 0:
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(_ODD) + text[i:]
    return text


@st.composite
def sip_uri_text(draw: st.DrawFn) -> str:
    user = mostly(
        draw,
        st.sampled_from(["", "alice@", "al%41ce@", "a:pw@", "+1-201@", "user;par=u%40x@", "a?b@"]),
        st.sampled_from(["@", "a b@", "%zz@", ":@"]),
    )
    rest = f"{user}{mostly(draw, _GOOD_HOST, _BAD_HOST)}{mostly(draw, _GOOD_PORT, _BAD_PORT)}"
    rest += draw(params_text()).replace(" ", "").replace("\t", "")
    rest += mostly(draw, st.sampled_from(["", "", "?subject=x", "?a=1&b=%20"]), st.sampled_from(["?<", "?a b", "?"]))
    return f"{draw(st.sampled_from(['sip', 'sips', 'SIP']))}:{sprinkle(draw, rest)}"


@st.composite
def via_text(draw: st.DrawFn) -> str:
    proto = mostly(
        draw,
        st.sampled_from(["SIP/2.0/", "SIP / 2.0 / ", "sip/2.0/"]),
        st.sampled_from(["SIP/3.0/", "SIP/2.0", "SIP//"]),
    )
    transport = mostly(draw, st.sampled_from(["UDP", "tcp", "TLS", "X-1"]), st.sampled_from(["", "U D P"]))
    hostport = f"{mostly(draw, _GOOD_HOST, _BAD_HOST)}{mostly(draw, _GOOD_PORT, _BAD_PORT)}"
    return sprinkle(draw, f"{proto}{transport} {hostport}{draw(params_text())}")


@st.composite
def name_addr_text(draw: st.DrawFn) -> str:
    display = mostly(
        draw,
        st.sampled_from(["", "Bob ", "Bob", "A. Bell ", '"Alice" ', '"Al \\"x\\"" ', '"" ', "  "]),
        st.sampled_from(['"unterminated ', "Bell, A ", '"q"x ']),
    )
    uri = draw(sip_uri_text() | st.sampled_from(["tel:+1-201-555-0123", "http://www.example.com", "isbn:2983"]))
    text = f"{display}<{uri}>" if draw(st.booleans()) else uri
    return sprinkle(draw, text + draw(params_text()))


def outcome(parse: object, text: str) -> tuple[str, str]:
    try:
        return "ok", repr(parse(text))  # type: ignore[operator]
    except ParseError as exc:
        return "error", exc.reason


@QUICK
@given(sip_uri_text())
@example("sip:alice@example.test:65536")
@example("sip:a@b;lr;LR=x")
def test_sip_uri_short_path(text: str) -> None:
    scheme, _, rest = text.partition(":")
    assert outcome(parse_uri, text) == outcome(lambda t: _parse_sip(scheme.lower(), rest), text)


@QUICK
@given(via_text())
@example("SIP/2.0/UDP h;branch")
@example("SIP/2.0/UDP h:70000;branch=z9hG4bK1")
def test_via_short_path(text: str) -> None:
    assert outcome(parse_via, text) == outcome(_parse_via, text)


@QUICK
@given(name_addr_text())
@example('"A" <sip:a@b>;tag=1')
@example("Bob <sip:bob@example.test>")
def test_name_addr_short_path(text: str) -> None:
    assert outcome(parse_name_addr, text) == outcome(_parse_name_addr, text)


@QUICK
@given(params_text().map(lambda s: s[1:]))
def test_split_params_short_path(text: str) -> None:
    if text:
        assert outcome(split_params, text) == outcome(_split_params, text)


@QUICK
@given(st.from_regex(r"\A[ 0-9]{0,12}[ A-Za-z!%<]{0,9}\Z"))
@example("2147483648 INVITE")
def test_cseq_short_path(text: str) -> None:
    assert outcome(parse_cseq, text) == outcome(_parse_cseq, text)


# -- StreamFramer -------------------------------------------------------------------------------


@st.composite
def stream(draw: st.DrawFn) -> tuple[bytes, list[object]]:
    """Several messages with runs of CRLF between them; the items a framer must return."""
    data = b""
    expected: list[object] = []
    for message in draw(st.lists(st.sampled_from(STREAMABLE), min_size=1, max_size=6)):
        crlfs = draw(st.integers(0, 5))
        data += b"\r\n" * crlfs + message
        expected += [KEEPALIVE] * (crlfs // 2) + [message]  # CRLFCRLF is a ping; a lone CRLF a pong
    crlfs = draw(st.integers(0, 3))
    return data + b"\r\n" * crlfs, expected + [KEEPALIVE] * (crlfs // 2)


def feed_in_chunks(data: bytes, cuts: list[int]) -> list[object]:
    framer = StreamFramer()
    out: list[object] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out.extend(framer.feed(data[start:cut]))
        start = cut
    assert framer.buffered <= 2  # at most a lone CRLF left over
    return out


@QUICK
@given(stream(), st.data())
def test_framer_returns_exactly_what_was_sent(sent: tuple[bytes, list[object]], data: st.DataObject) -> None:
    stream_bytes, expected = sent
    cuts = data.draw(st.lists(st.integers(0, len(stream_bytes)), max_size=20))
    assert feed_in_chunks(stream_bytes, cuts) == expected
    assert feed_in_chunks(stream_bytes, []) == expected


@settings(max_examples=25, deadline=None)
@given(stream())
def test_framer_one_byte_at_a_time(sent: tuple[bytes, list[object]]) -> None:
    stream_bytes, expected = sent
    assert feed_in_chunks(stream_bytes, list(range(len(stream_bytes)))) == expected


@QUICK
@given(
    st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz:- ;=", max_size=80), min_size=1, max_size=10),
    st.integers(1, 500),
)
def test_never_ending_header_block_is_refused(lines: list[str], chunk: int) -> None:
    """A peer that never sends the empty line is cut off, not buffered without bound."""
    framer = StreamFramer(max_head=4096)
    block = "".join(f"X-{line}\r\n" for line in lines).encode()
    data = b"INVITE sip:bob@example.test SIP/2.0\r\n" + block * (4096 // len(block) + 2)
    try:
        for i in range(0, len(data), chunk):
            framer.feed(data[i : i + chunk])
            assert framer.buffered <= 4096 + chunk
    except FramingError as exc:
        assert exc.reason == "Message header too large"
    else:
        raise AssertionError("an endless header block was accepted")


@QUICK
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10))
def test_framer_on_junk_only_raises_framing_error(junk: bytes, cuts: list[int]) -> None:
    framer = StreamFramer(max_head=1024, max_body=1024)
    start = 0
    try:
        for cut in [*sorted({c for c in cuts if c <= len(junk)}), len(junk)]:
            for item in framer.feed(junk[start:cut]):
                assert item is KEEPALIVE or isinstance(item, bytes)
                if isinstance(item, bytes):
                    parse_or_none(item)
            start = cut
    except FramingError:
        pass
