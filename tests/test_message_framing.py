"""Cutting messages out of a TCP/TLS byte stream (RFC 3261 §18.3, RFC 5626 §3.5.1 keep-alives)."""

from __future__ import annotations

import pytest

from sipproxy.message import KEEPALIVE, FramingError, ParseError, StreamFramer, parse_message

try:
    from tests.messages import make_request
except ImportError:  # pragma: no cover
    from messages import make_request  # type: ignore[no-redef]


def message(n: int, body: bytes = b"", *, length_header: str = "Content-Length") -> bytes:
    """The ``n``-th OPTIONS on a TCP connection, its body's length under ``length_header`` (``l`` is compact)."""
    return make_request(
        "OPTIONS",
        via=f"SIP/2.0/TCP client.example.test;branch=z9hG4bK{n}",
        from_=f"<sip:alice@example.test>;tag={n}",
        to="<sip:bob@example.test>",
        call_id=f"stream-{n}@client.example.test",
        cseq=f"{n} OPTIONS",
        extra=(f"{length_header}: {len(body)}",),
        content_length=None,
        body=body,
    )


ONE = message(1)
TWO = message(2, b"v=0\r\n\r\n\r\nbody with blank lines\r\n\r\n")


def feed_each_byte(framer: StreamFramer, data: bytes) -> list[object]:
    out: list[object] = []
    for i in range(len(data)):
        out.extend(framer.feed(data[i : i + 1]))
    return out


def test_one_message() -> None:
    assert StreamFramer().feed(ONE) == [ONE]


def test_two_messages_in_one_chunk() -> None:
    assert StreamFramer().feed(ONE + TWO) == [ONE, TWO]


def test_byte_at_a_time() -> None:
    framer = StreamFramer()
    assert feed_each_byte(framer, ONE + TWO + ONE) == [ONE, TWO, ONE]
    assert framer.buffered == 0


def test_split_inside_the_empty_line_and_the_body() -> None:
    framer = StreamFramer()
    data = ONE + TWO
    cut = TWO.index(b"\r\n\r\n") + len(ONE) + 2
    assert framer.feed(data[:cut]) == [ONE]
    assert framer.feed(data[cut : cut + 5]) == []
    assert framer.feed(data[cut + 5 :]) == [TWO]


def test_body_containing_what_looks_like_a_message() -> None:
    inner = message(9)
    outer = message(3, inner)
    assert StreamFramer().feed(outer + ONE) == [outer, ONE]


def test_keepalives_between_messages() -> None:
    """RFC 5626 §3.5.1: CRLFCRLF is a ping, a single CRLF a pong; neither is a message."""
    data = b"\r\n\r\n" + ONE + b"\r\n\r\n\r\n\r\n" + TWO + b"\r\n" + ONE
    assert StreamFramer().feed(data) == [KEEPALIVE, ONE, KEEPALIVE, KEEPALIVE, TWO, ONE]
    assert feed_each_byte(StreamFramer(), data) == [KEEPALIVE, ONE, KEEPALIVE, KEEPALIVE, TWO, ONE]


def test_half_a_keepalive_waits() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [KEEPALIVE]
    assert framer.feed(b"\r\n") == []
    assert framer.feed(ONE) == [ONE]  # that CRLF was a pong


def test_keepalive_repr() -> None:
    assert repr(KEEPALIVE) == "KEEPALIVE"


@pytest.mark.parametrize(
    "spelling", ["Content-Length", "content-length", "CONTENT-LENGTH", "l", "L", "Content-Length  "]
)
def test_content_length_spellings(spelling: str) -> None:
    data = message(4, b"hello", length_header=spelling)
    assert StreamFramer().feed(data + ONE) == [data, ONE]


def test_folded_content_length() -> None:
    data = message(5, b"abc").replace(b"Content-Length: 3", b"Content-Length:\r\n 3")
    assert StreamFramer().feed(data + ONE) == [data, ONE]
    assert parse_message(data).content_length == 3


def test_framed_messages_parse() -> None:
    for item in StreamFramer().feed(ONE + b"\r\n\r\n" + TWO):
        if item is not KEEPALIVE:
            assert isinstance(item, bytes)
            parse_message(item)


def test_missing_content_length_closes_the_stream() -> None:
    """§18.3: on a stream Content-Length is mandatory; the head is kept to answer 400."""
    data = ONE.replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(FramingError) as info:
        StreamFramer().feed(data)
    assert info.value.reason == "Missing Content-Length"
    assert info.value.head == data[: data.index(b"\r\n\r\n")]
    assert isinstance(info.value, ParseError) and info.value.status == 400


@pytest.mark.parametrize("value", [b"-1", b"abc", b"1 2", b"", b"12345678901", b"\xc2\xb2"])
def test_bad_content_length_closes_the_stream(value: bytes) -> None:
    data = ONE.replace(b"Content-Length: 0", b"Content-Length: " + value)
    with pytest.raises(FramingError, match="Bad Content-Length"):
        StreamFramer().feed(data)


def test_header_block_is_bounded() -> None:
    framer = StreamFramer(max_head=1024)
    framer.feed(b"OPTIONS sip:bob@example.test SIP/2.0\r\n")
    with pytest.raises(FramingError, match="Message header too large"):
        for _ in range(100):
            framer.feed(b"X-Endless: " + b"a" * 50 + b"\r\n")
    assert framer.buffered <= 1024 + 64


def test_header_block_that_ends_too_late_is_refused() -> None:
    data = b"OPTIONS sip:bob@example.test SIP/2.0\r\nX-Big: " + b"a" * 2000 + b"\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(FramingError, match="Message header too large"):
        StreamFramer(max_head=1024).feed(data)


def test_body_is_bounded() -> None:
    data = message(6).replace(b"Content-Length: 0", b"Content-Length: 2000000")
    with pytest.raises(FramingError, match="Message body too large"):
        StreamFramer(max_body=1 << 20).feed(data)


def test_one_chunk_of_many_messages() -> None:
    framer = StreamFramer()
    assert len(framer.feed(ONE * 2000)) == 2000
    assert framer.buffered == 0
