"""Log lines written by ``twistd -n sipproxy`` for 10 s of junk datagrams (issue 19, item 8).

    python3 bench/log_flood.py [--tree DIR] [--rate 5000] [--seconds 10] [--sources 1000]

Starts the server of ``DIR`` (default: this tree) on loopback through its
``tests/integration/harness.py``, sends ``rate`` unparseable datagrams a
second for ``seconds`` from ``sources`` loopback addresses (127.0.x.y),
waits for the summary window to close, and prints how many log lines and
bytes the junk cost.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--sources", type=int, default=1000)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.tree) / "tests" / "integration"))
    from harness import LOOPBACK, Server

    with tempfile.TemporaryDirectory() as workdir:
        server = Server(Path(workdir), [])
        server.start()
        try:
            before = server.log_path.stat().st_size
            lines_before = len(server.log_text().splitlines())
            senders = []
            for n in range(args.sources):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((f"127.1.{n // 250}.{n % 250 + 1}", 0))
                senders.append(s)
            sent = 0
            start = time.monotonic()
            while sent < args.rate * args.seconds:
                due = int((time.monotonic() - start) * args.rate)
                while sent < min(due, args.rate * args.seconds):
                    senders[sent % len(senders)].sendto(
                        b"\x16\x03\x01 junk %d\r\n\r\n" % sent, (LOOPBACK, server.sip_port)
                    )
                    sent += 1
                time.sleep(0.001)
            time.sleep(12)  # the last summary window closes
            lines = server.log_text().splitlines()[lines_before:]
            size = server.log_path.stat().st_size - before
            print(
                f"{args.tree}: {sent} junk datagrams in {args.seconds} s from {args.sources} sources: "
                f"{len(lines)} log lines, {size} bytes"
            )
            for line in lines[-3:]:
                print("  " + line[:200])
        finally:
            server.stop()


if __name__ == "__main__":
    main()
