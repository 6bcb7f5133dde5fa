"""Server RSS after rounds of TCP connections that send most of a large message and close (issue 19, item 2).

    python3 bench/tcp_memory.py [--tree DIR] [--rounds 4] [--connections 1024] [--size 1048576]

Each round opens ``connections`` connections from 64-connection groups of
loopback addresses (127.2.x.y), sends a header block announcing ``size``
bytes of body and then ``size`` bytes less 1 KiB of it, closes them all, and
reads the server's VmRSS once an OPTIONS on a fresh connection is answered.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=1024)
    parser.add_argument("--size", type=int, default=1 << 20)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.tree) / "tests" / "integration"))
    from harness import LOOPBACK, Server, sip_options

    def sync(port: int, n: int) -> None:
        with socket.create_connection((LOOPBACK, port), timeout=30) as s:
            s.sendall(sip_options(port, transport="tcp", call_id=f"sync{n}"))
            while b"\r\n\r\n" not in s.recv(65535):
                pass

    with tempfile.TemporaryDirectory() as workdir:
        server = Server(Path(workdir), [])
        server.start()
        assert server.proc is not None
        try:
            print(f"{args.tree}: idle {rss_mb(server.proc.pid):.0f} MB")
            head = (
                f"MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/TCP {LOOPBACK}:9;branch=z9hG4bK-b\r\n"
                "From: <sip:a@example.test>;tag=m\r\nTo: <sip:bob@example.test>\r\nCall-ID: b@test\r\n"
                f"CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: {args.size}\r\n\r\n"
            ).encode()
            data = head + b"x" * (args.size - 1024)
            for round_ in range(args.rounds):
                sockets = []
                for n in range(args.connections):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.bind((f"127.2.{n // 64 // 250}.{n // 64 % 250 + 1}", 0))
                    s.settimeout(30)
                    s.connect((LOOPBACK, server.sip_port))
                    try:
                        s.sendall(data)
                    except OSError:
                        pass  # the server closed it (513 past --max-message-size)
                    sockets.append(s)
                sync(server.sip_port, 2 * round_)
                for s in sockets:
                    s.close()
                sync(server.sip_port, 2 * round_ + 1)
                print(f"  after round {round_ + 1}: {rss_mb(server.proc.pid):.0f} MB")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
