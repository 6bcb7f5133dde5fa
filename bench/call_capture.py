"""What recording the call-flow ladder costs per call, and what the ring really holds in memory.

A call as the proxy's transport sees it: 12 messages (INVITE, 180, 200, ACK
and BYE in and out, our 100, the callee's 200 for the BYE), each parsed
by ``TransportLayer.received`` or serialized by ``send_request`` /
``send_response``, once with no tap and once with the recent calls'
``Capture``; the two take turns within each repeat, and the time spent
inside the Capture is timed on its own (the 2-core machine is shared, so
the difference of the two totals is mostly noise).  Then 60,000 calls
(a minute at 1,000 calls/s) go into a ring of the default bounds, and
tracemalloc says what the ring holds against its own byte count.

    python bench/call_capture.py            # ~20 s
    python bench/call_capture.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet.task import Clock

from sipproxy.calls import BranchRecord, CallRecord
from sipproxy.calls.capture import Capture
from sipproxy.calls.ring import RecentCalls
from sipproxy.message import make_response, parse_message
from sipproxy.net import Source, Target
from sipproxy.transport import DatagramSender, TransportLayer
from sipproxy.transport.sink import Tapped

SDP = "v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\n"


def invite(call_id: str) -> bytes:
    return (
        "INVITE sip:bob@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.7:5060;rport;branch=z9hG4bK{call_id}\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@example.test>;tag=a1\r\n'
        "To: <sip:bob@example.test>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:alice@192.0.2.7:5060>\r\n"
        "User-Agent: bench\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


class Null:
    def write(self, data: bytes, addr: object) -> None:
        pass


class Sink:
    def message_received(self, message: object, source: object, data: bytes) -> None:
        pass

    def unparseable(self, *args: object) -> bool:
        return False


CALLER = Source("UDP", "192.0.2.7", 5060)
CALLEE = Target("UDP", "192.0.2.20", 5062)


def layer(tap: Capture | None) -> TransportLayer:
    transport = TransportLayer(sink=Tapped(tap, Sink()) if tap is not None else Sink(), tap=tap)  # type: ignore[arg-type]
    transport.register(DatagramSender(transport))
    transport.udp[4] = Null()
    return transport


def one_call(transport: TransportLayer, n: int) -> None:
    call_id = f"bench-{n}@192.0.2.7"
    data = invite(call_id)
    transport.received(data, CALLER)
    request = parse_message(data)
    transport.send_request(request, CALLEE, lambda reason: None)  # type: ignore[arg-type]
    for status in (100, 180, 200):
        response = make_response(request, status, to_tag="b1" if status > 100 else None)  # type: ignore[arg-type]
        if status > 100:
            transport.received(response.to_bytes(), Source("UDP", "192.0.2.20", 5062))
        transport.send_response(response, CALLER)
    for method, cseq in (("ACK", "1 ACK"), ("BYE", "2 BYE")):
        data = invite(call_id).replace(b"INVITE sip:bob@example.test", f"{method} sip:bob@192.0.2.20:5062".encode(), 1)
        data = data.replace(b"CSeq: 1 INVITE", f"CSeq: {cseq}".encode())
        transport.received(data, CALLER)
        transport.send_request(parse_message(data), CALLEE, lambda reason: None)  # type: ignore[arg-type]
    transport.received(make_response(request, 200, to_tag="b1").to_bytes(), Source("UDP", "192.0.2.20", 5062))  # type: ignore[arg-type]


class Timed:
    """A tap that times the tap it wraps: the time spent capturing, apart from the machine's noise around it."""

    def __init__(self, tap: Capture) -> None:
        self.tap = tap
        self.spent = 0.0

    def received(self, *args: Any) -> None:
        start = time.perf_counter()
        self.tap.received(*args)
        self.spent += time.perf_counter() - start

    def sent(self, *args: Any) -> None:
        start = time.perf_counter()
        self.tap.sent(*args)
        self.spent += time.perf_counter() - start


def timing(calls: int, repeats: int) -> tuple[float, float, float]:
    """Best of ``repeats``: seconds per call without a tap, with the Capture, and inside the Capture."""
    best_off = best_on = best_inside = float("inf")
    for _ in range(repeats):
        off = layer(None)
        start = time.perf_counter()
        for n in range(calls):
            one_call(off, n)
        best_off = min(best_off, (time.perf_counter() - start) / calls)
        timed = Timed(Capture(RecentCalls(), Clock()))
        on = layer(timed)  # type: ignore[arg-type]
        start = time.perf_counter()
        for n in range(calls):
            one_call(on, n)
        best_on = min(best_on, (time.perf_counter() - start) / calls)
        best_inside = min(best_inside, timed.spent / calls)
    return best_off, best_on, best_inside


def memory(calls: int) -> tuple[int, int, int]:
    tracemalloc.start()
    ring = RecentCalls()
    tap = Capture(ring, Clock())
    transport = layer(tap)
    before = tracemalloc.get_traced_memory()[0]
    branch = BranchRecord("sip:bob@192.0.2.20:5062", "sip:bob@example.test", "UDP", "192.0.2.20", 5062, 200, "OK")
    for n in range(calls):
        one_call(transport, n)
        call_id = f"bench-{n}@192.0.2.7"
        ring(CallRecord("INVITE", call_id, "sip:alice@example.test", "sip:bob@example.test", "UDP 192.0.2.7:5060",
                        n, n + 2.0, 200, "OK", branches=(branch,), answered_by=0))  # fmt: skip
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held, ring.size, len(ring)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    off, on, inside = timing(200 if quick else 3000, 2 if quick else 7)
    print(f"transport, per call of 12 messages, no tap:       {off * 1e6:8.1f} us")
    print(f"transport, per call of 12 messages, with Capture: {on * 1e6:8.1f} us")
    print(f"inside the Capture, per call:                     {inside * 1e6:8.1f} us")
    held, counted, kept = memory(2000 if quick else 60_000)
    print(f"ring after the calls: {kept} calls kept, {counted} bytes counted, {held} bytes held (tracemalloc)")


if __name__ == "__main__":
    main()
