"""What a refused call costs the whole server, in-process (issue 17): the stack as ``twistd sipproxy`` builds it.

Run from the repository root (build the C accelerator first)::

    python bench/refusal_path.py

``bench/shed_cost.py`` times the guard alone; this one feeds datagrams to
the UDP protocol of a server built by ``service.build_service`` with its
default options (the recent calls' capture on, RFC 7339 feedback on), its
overload control held refusing 98 % of new requests, a fake socket under
it (no ``sendto``, no ``recvmsg``: add about 2.5 us per datagram read and 4 us
per datagram sent on this machine).  Each figure is microseconds per
datagram: ``refused`` and ``481`` the best of 3 runs of 20 000, ``again``
the better of two rounds over the last 20 000 refused, ``dropped`` the third:

- ``refused``: a new INVITE from sipp's ``uac.xml`` refused with ``503``
  (read, parsed, Via stamped, decided, the 503 built, serialized and
  written, remembered for its retransmissions);
- ``again``: a copy of a refused INVITE answered with the same 503 before
  any parse, and ``dropped``: a copy past ``REPEATS_ANSWERED``;
- ``481``: a BYE in the dialog of one of our refusals (sipp sends one for a
  call it gave up on).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from twisted.internet import reactor

from sipproxy.message import _accel
from sipproxy.security.congestion import FLOOR
from sipproxy.service import build_service
from sipproxy.tap import Options
from sipproxy.transport.udp import SipDatagramProtocol

CALLER = ("127.0.0.1", 5192)
SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def invite(n: int) -> bytes:
    """The INVITE of the shared harness's uac.xml, call ``n``."""
    return (
        "INVITE sip:c000001@bench.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5192;rport;branch=z9hG4bK-{n}-1-0\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:caller@bench.test>;tag={n}c1\r\n"
        "To: <sip:c000001@bench.test>\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:caller@127.0.0.1:5192;transport=UDP>\r\n"
        "Subject: bench\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


def bye(n: int) -> bytes:
    """The BYE sipp sends for call ``n`` it gave up on, in the dialog of our 503 (its ``sg.`` To tag)."""
    return (
        "BYE sip:c000001@bench.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5192;rport;branch=z9hG4bK-{n}-9-0\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:caller@bench.test>;tag={n}c1\r\n"
        f"To: <sip:c000001@bench.test>;tag=sg.{n:08x}\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\n"
        "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Port:
    """The UDP port under the protocol: counts what would be sent."""

    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes, addr: object) -> None:
        self.sent += 1


def main() -> None:
    work = tempfile.mkdtemp(prefix="refusal-path-")
    options = Options()
    options.parseOptions(["--sip-interface", "127.0.0.1", "--domain", "bench.test", "--db", f"{work}/b.sqlite"])
    layer = build_service(options, reactor).core.transport
    port = Port()
    protocol = SipDatagramProtocol(layer, 4)
    protocol.transport = port  # type: ignore[assignment]
    layer.udp[4] = port  # type: ignore[assignment]
    guard = layer.sink
    congestion = guard.congestion  # type: ignore[attr-defined]
    congestion.shedding, congestion.admitted = True, FLOOR
    congestion.interval = float("inf")  # the share held where it is
    waited = guard.datagram_waited  # type: ignore[attr-defined]

    def feed(datagram: bytes) -> None:  # what SipDatagramProtocol.read does with each datagram read
        if waited(datagram, 0.3):
            protocol.datagramReceived(datagram, CALLER)

    first = 0

    def timed(make: Callable[[int], bytes], again: bool = False, n: int = 20000) -> float:
        nonlocal first
        best = float("inf")
        for _ in range(3):
            if not again:
                first += n
            datagrams = [make(first + i) for i in range(n)]
            start = time.perf_counter()
            for datagram in datagrams:
                feed(datagram)
            best = min(best, (time.perf_counter() - start) / n * 1e6)
        return best

    print(f"parser: {'C accelerator' if _accel.parse is not None else 'pure Python'}")
    refused = timed(invite)
    # the last 20 000 INVITEs refused (all remembered: REFUSED_KEPT) again, three times: answered twice
    # (REPEATS_ANSWERED), then dropped
    copies = [invite(n) for n in range(first - 20000, first)]

    def round_of_copies() -> float:
        start = time.perf_counter()
        for datagram in copies:
            feed(datagram)
        return (time.perf_counter() - start) / len(copies) * 1e6

    again = min(round_of_copies(), round_of_copies())
    dropped = round_of_copies()
    answered = timed(bye)
    print(f"refused={refused:.1f}us again={again:.1f}us dropped={dropped:.1f}us 481={answered:.1f}us")


if __name__ == "__main__":
    main()
