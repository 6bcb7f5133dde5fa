"""What shedding costs per request, in-process (issue 17): where the guard's time goes under overload.

Run from the repository root::

    python bench/shed_cost.py

Times, best of 7 repeats of 20 000 each (``time.perf_counter``), for the
INVITE of ``bench/parse_bench.py`` (907 bytes, SDP):

- ``parse``: ``parse_message`` alone (what a pre-parse test of the raw
  bytes could save at most);
- ``refuse``: parse, the guard's decision under overload, the 503 built
  and serialized (what a new INVITE costs while shedding, the ``sendto``
  aside);
- ``retransmission``: parse and the guard letting a retransmission of a
  request in progress through (the transaction layer then absorbs it);
- ``again``: a retransmission of a refused INVITE, the same 503 sent
  again before any parse (``Guard.datagram_waited``; the response's
  serialization included, the ``sendto`` aside);
- ``stale``: a datagram dropped unread (``Guard.datagram_waited``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from twisted.internet.task import Clock

from bench.parse_bench import INVITE
from sipproxy.message import _accel, parse_message
from sipproxy.metrics import Metrics
from sipproxy.net import Source
from sipproxy.security import Congestion, Guard, SecuritySettings

SOURCE = Source("UDP", "192.0.2.7", 5060)


def best(run: Callable[[], None], n: int = 20000, repeats: int = 7) -> float:
    """µs per call, best of ``repeats``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            run()
        times.append((time.perf_counter() - start) / n * 1e6)
    return min(times)


def main() -> None:
    clock = Clock()
    congestion = Congestion(clock, 0.5, dwell=0)
    congestion.datagram_waited(0.45)
    sent: list[bytes] = []
    guard = Guard(SecuritySettings(rate=None), clock, Metrics(), congestion=congestion)
    guard.reply = lambda response, source: sent.append(response.to_bytes())
    taken = Guard(SecuritySettings(rate=None), clock, Metrics(), congestion=congestion)
    taken.is_retransmission = lambda request: True

    def refuse() -> None:
        guard.admit(parse_message(INVITE), SOURCE, len(INVITE))
        sent.clear()

    print(f"parser: {'C accelerator' if _accel.parse is not None else 'pure Python'}")
    print(f"parse={best(lambda: parse_message(INVITE)):.1f}us")
    print(f"refuse={best(refuse):.1f}us")
    print(f"retransmission={best(lambda: taken.admit(parse_message(INVITE), SOURCE, len(INVITE))):.1f}us")
    guard.datagram_waited(INVITE, 0.45)
    guard.message_received(parse_message(INVITE), SOURCE, INVITE)
    assert guard.datagram_waited(INVITE, 0.45) is False  # remembered: answered again

    def again() -> None:
        guard.datagram_waited(INVITE, 0.45)
        sent.clear()

    print(f"again={best(again):.2f}us")
    print(f"stale={best(lambda: guard.datagram_waited(INVITE, 3.0)):.2f}us")


if __name__ == "__main__":
    main()
