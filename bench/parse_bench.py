"""Parser throughput: sipproxy.message against twisted.protocols.sip on the same bytes.

Run from the repository root::

    python bench/parse_bench.py            # about 10 s
    python bench/parse_bench.py --quick    # a smoke run
    SIPPROXY_NO_EXTENSIONS=1 python bench/parse_bench.py   # the pure-Python parser alone

Each side does what a proxy needs before it can route a message: parse the
datagram, then read the top Via, To and From as typed values.  For sipproxy
that is ``parse_message`` (which already validates the start line, every Via,
From, To, Call-ID, CSeq, Max-Forwards and Content-Length) plus ``top_via``,
``to`` and ``from_``; for Twisted it is ``MessagesParser`` (``dataReceived`` then
``dataDone``, as ``sip.Base.datagramReceived`` does) plus ``parseViaHeader`` on
the top Via and ``parseAddress`` on To and From.

The figure is messages per second, best of several repeats
(``time.perf_counter``).  The last line is ``ratio_vs_twisted=N.NN`` for the
INVITE, for scripts to pick up.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from sipproxy.message import _accel, parse_message

_SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=sendrecv\r\n"
)

#: An INVITE as the second proxy on the path sees it: three Vias, Record-Route, SDP.
INVITE = (
    "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP proxy2.example.net:5060;branch=z9hG4bK721e418c4.1;received=192.0.2.3\r\n"
    "Via: SIP/2.0/UDP proxy1.example.com:5060;branch=z9hG4bK2d4790.1;received=192.0.2.2\r\n"
    "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKnashds8;received=192.0.2.101;rport=5060\r\n"
    "Max-Forwards: 68\r\n"
    "Record-Route: <sip:proxy2.example.net;lr>, <sip:proxy1.example.com;lr>\r\n"
    "To: Bob <sip:bob@biloxi.example.com>\r\n"
    'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:alice@pc33.atlanta.example.com;transport=udp>\r\n"
    "Supported: replaces, timer\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(_SDP)}\r\n"
    "\r\n"
).encode() + _SDP

#: A REGISTER straight from a UA (RFC 3261 §10.2 with RFC 5626 parameters).
REGISTER = (
    b"REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Bob <sip:bob@biloxi.example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b'Contact: <sip:bob@192.0.2.4:5060;transport=udp>;expires=7200;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1\r\n'
    b"Supported: path, outbound\r\n"
    b"User-Agent: ExamplePhone/1.2.3\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def sipproxy_parse(data: bytes) -> object:
    message = parse_message(data)
    return message.top_via, message.to, message.from_


def make_twisted_parse() -> Callable[[bytes], object] | None:
    try:
        from twisted.protocols import sip
    except ImportError:
        return None

    def twisted_parse(data: bytes) -> object:
        messages: list[sip.Message] = []
        parser = sip.MessagesParser(messages.append)
        parser.dataReceived(data)
        parser.dataDone()
        (message,) = messages
        headers = message.headers
        return (
            sip.parseViaHeader(headers["via"][0]),
            sip.parseAddress(headers["to"][0]),
            sip.parseAddress(headers["from"][0]),
        )

    return twisted_parse


def seconds(parse: Callable[[bytes], object], data: bytes, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        parse(data)
    return time.perf_counter() - start


def rates(parsers: list[Callable[[bytes], object]], data: bytes, number: int, repeat: int) -> list[float]:
    """Messages per second for each parser, best of ``repeat`` runs of ``number`` parses.

    The parsers take turns within each repeat, so a busy machine slows them alike.
    """
    best = [float("inf")] * len(parsers)
    for _ in range(repeat):
        for i, parse in enumerate(parsers):
            best[i] = min(best[i], seconds(parse, data, number))
    return [number / b for b in best]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations, for a smoke test")
    parser.add_argument("--number", type=int, default=None, help="parses per repeat")
    parser.add_argument("--repeat", type=int, default=7, help="repeats (the best one counts)")
    args = parser.parse_args(argv)
    number = args.number or (300 if args.quick else 5000)
    repeat = 2 if args.quick else args.repeat

    twisted_parse = make_twisted_parse()
    print(f"python {platform.python_version()} ({platform.python_implementation()}), {platform.machine()}")
    print(f"number={number} repeat={repeat}")
    print(f"sipproxy parser: {'C accelerator (_speedups.c)' if _accel.parse else 'pure Python'}")
    ratio = None
    parsers: list[Callable[[bytes], object]] = [sipproxy_parse]
    if twisted_parse is not None:
        parsers.append(twisted_parse)
    for label, data in (("INVITE", INVITE), ("REGISTER", REGISTER)):
        measured = rates(parsers, data, number, repeat)
        line = f"{label:<8} {len(data):4d} bytes  sipproxy {measured[0]:9.0f} msg/s"
        if twisted_parse is not None:
            line += f"  twisted {measured[1]:9.0f} msg/s  ratio {measured[0] / measured[1]:5.2f}"
            if label == "INVITE":
                ratio = measured[0] / measured[1]
        print(line)
    if ratio is None:
        print("twisted not installed: no ratio")
        return 1
    print(f"ratio_vs_twisted={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
