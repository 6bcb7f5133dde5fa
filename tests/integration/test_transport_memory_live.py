"""TCP connections that sent most of a large message and closed leave nothing behind in the real server.

The server runs full garbage collections only every 10 minutes
(``sipproxy.gctune``), so whatever a closed connection leaves in a
reference cycle stays that long: four rounds of 1,024 connections sending
1 MiB each took the server from 978 MB to 3.7 GB (issue 19, item 2).  Here
each round opens 192 connections from three loopback addresses (64 per
address is the limit), sends 56 KB of a 60 KB message on each (under
``--max-message-size``, so they are buffered), closes them, and the
server's resident memory must not grow from round to round.
"""

from __future__ import annotations

import socket
from pathlib import Path

from harness import LOOPBACK, sip_options

from sipproxy.message import parse_message

ROUNDS = 4
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PER_ADDRESS = 64
BODY = 60_000
SENT = 56_000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def partial_message(port: int, n: int) -> bytes:
    head = (
        f"MESSAGE sip:bob@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {LOOPBACK}:9;branch=z9hG4bK-mem{n}\r\n"
        "From: <sip:alice@example.test>;tag=m\r\nTo: <sip:bob@example.test>\r\n"
        f"Call-ID: mem{n}@test\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {BODY}\r\n\r\n"
    ).encode()
    return head + b"x" * (SENT - len(head))


def round_trip(port: int, n: int) -> None:
    """An OPTIONS answered on a fresh connection: the server has read what was sent before it."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as s:
        s.sendall(sip_options(port, transport="tcp", call_id=f"sync{n}"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, "the server closed the connection without answering"
            data += chunk
    assert parse_message(data).status == 200  # type: ignore[union-attr]


def test_closed_tcp_connections_with_partial_messages_do_not_grow_the_server(server) -> None:  # type: ignore[no-untyped-def]
    assert server.proc is not None
    pid = server.proc.pid
    after: list[int] = []
    for round_ in range(ROUNDS):
        sockets = []
        for address in ADDRESSES:
            for _ in range(PER_ADDRESS):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((address, 0))
                s.connect((LOOPBACK, server.sip_port))
                s.sendall(partial_message(server.sip_port, round_ * 1000 + len(sockets)))
                sockets.append(s)
        round_trip(server.sip_port, 2 * round_)
        for s in sockets:
            s.close()
        round_trip(server.sip_port, 2 * round_ + 1)
        after.append(rss_kib(pid))
    growth = after[-1] - after[0]
    # One round buffers about 192 x 56 KB = 10.5 MB: kept, three more rounds would add 30 MB.
    assert growth < 6 * 1024, f"RSS after each round (KiB): {after}"
    assert server.alive()
