"""5,000 junk datagrams write a bounded number of log lines, then one summary with their counts (issue 19, item 8).

Every unparseable datagram used to write a warning: 5,000 junk datagrams a
second wrote 49,819 lines in 10 s.
"""

from __future__ import annotations

import re
import socket
import time

from harness import LOOPBACK, sip_options

from sipproxy.message import parse_message

SOURCES = [f"127.0.3.{n}" for n in range(1, 51)]


def test_5000_junk_datagrams_write_fewer_than_50_lines_and_a_summary(server) -> None:  # type: ignore[no-untyped-def]
    before = len(server.log_text().splitlines())
    senders = []
    for address in SOURCES:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((address, 0))
        senders.append(s)
    try:
        for n in range(5000):
            senders[n % len(senders)].sendto(b"\x16\x03\x01 not SIP %d\r\n\r\n" % n, (LOOPBACK, server.sip_port))
            if n % 200 == 199:
                time.sleep(0.01)  # pace the sender so the kernel's receive buffer drops nothing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # read in order: all junk was read before
            s.settimeout(5)
            s.sendto(sip_options(server.sip_port, call_id="after-junk"), (LOOPBACK, server.sip_port))
            assert parse_message(s.recvfrom(65535)[0]).status == 200  # type: ignore[union-attr]
    finally:
        for s in senders:
            s.close()
    summary = None
    deadline = time.monotonic() + 20  # the summary comes at the end of its 10 s window
    while summary is None and time.monotonic() < deadline:
        summary = re.search(
            r"Dropped (\d+) unparseable messages from (\d+) sources in the last 10 s", server.log_text()
        )
        time.sleep(0.2)
    lines = server.log_text().splitlines()[before:]
    assert summary is not None, "\n".join(lines[-20:])
    assert len(lines) < 50, "\n".join(lines)
    count, sources = int(summary.group(1)), int(summary.group(2))
    assert count > 4000 and sources == len(SOURCES)  # (some datagrams may have been lost by the kernel)
