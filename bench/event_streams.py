"""SIP latency while the bindings page's event streams are open (issue 19, item 6).

Starts the real ``twistd -n sipproxy`` of a source tree (``--tree``, default
this checkout) on loopback with ``--db :memory:``, registers ``--bindings``
AORs over UDP, then measures the REGISTER round trip (one refresh at a time
from one UDP socket, ``--samples`` of them) three ways:

- no event stream open;
- ``--streams`` streams opened at once by clients that never read
  (each wants the whole snapshot; the server must not block on them);
- ``--streams`` streams whose clients read everything.

Prints p50, p99 and the worst round trip of each, and the server's RSS.
Run: ``python3 bench/event_streams.py [--tree /path/to/other/checkout]``.
Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((LOOPBACK, 0))
        return int(udp.getsockname()[1])


def register(user: str, contact_port: int, call_id: str, cseq: int, sip_port: int) -> bytes:
    branch = f"z9hG4bK-{call_id}-{cseq}"
    return (
        f"REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{contact_port};branch={branch};rport\r\n"
        f"From: <sip:{user}@example.test>;tag=b{cseq}\r\n"
        f"To: <sip:{user}@example.test>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{LOOPBACK}:{contact_port}>\r\n"
        "Expires: 3600\r\nMax-Forwards: 70\r\nUser-Agent: bench/event_streams Linphone-like/5.2.5 (belle-sip/5.2.0)\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def populate(sip_port: int, count: int) -> None:
    """``count`` AORs, 300 REGISTERs in flight at a time."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
        s.settimeout(5)
        sent = answered = 0
        while answered < count:
            while sent < count and sent - answered < 300:
                s.sendto(register(f"user{sent}", port, f"pop-{sent}", 1, sip_port), (LOOPBACK, sip_port))
                sent += 1
            data = s.recv(65535)
            if data.startswith(b"SIP/2.0 200"):
                answered += 1


def round_trips(sip_port: int, samples: int) -> list[float]:
    """REGISTER refreshes one at a time; each round trip in seconds (a lost one counts as 2 s)."""
    times = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
        s.settimeout(2)
        for i in range(samples):
            message = register("probe", port, "probe-call", i + 1, sip_port)
            start = time.perf_counter()
            s.sendto(message, (LOOPBACK, sip_port))
            wanted = f"CSeq: {i + 1} REGISTER".encode()
            try:
                while True:  # a late answer to an earlier probe is not this one's
                    data = s.recv(65535)
                    if data.startswith(b"SIP/2.0 200") and wanted in data:
                        break
                times.append(time.perf_counter() - start)
            except TimeoutError:
                times.append(2.0)
            time.sleep(0.004)
    return times


STREAMS_CLIENT = """
import selectors, socket, sys
port, count, read = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "read"
sockets = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.sendall(b"GET /api/events HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
    sockets.append(s)
print("open", flush=True)
selector = selectors.DefaultSelector()
for s in sockets:
    selector.register(s, selectors.EVENT_READ)
while True:
    if not read:
        sys.stdin.read()
        break
    for key, _ in selector.select(timeout=1):
        if not key.fileobj.recv(1 << 20):
            selector.unregister(key.fileobj)
"""


def open_streams(web_port: int, count: int, read: bool) -> subprocess.Popen[str]:
    """A separate process (so that reading costs the measuring one nothing) holding ``count`` event streams."""
    client = subprocess.Popen(
        [sys.executable, "-c", STREAMS_CLIENT, str(web_port), str(count), "read" if read else "idle"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert client.stdout is not None
    client.stdout.readline()
    return client


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=HERE)
    parser.add_argument("--bindings", type=int, default=13000)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--samples", type=int, default=1500)
    args = parser.parse_args()

    sip_port, web_port = free_port(), free_port()
    twistd = Path(sys.executable).parent / "twistd"
    workdir = Path(tempfile.mkdtemp(prefix="bench-events-"))
    knows_limit = "max-event-streams" in (args.tree / "sipproxy" / "tap.py").read_text()
    extra = ["--max-event-streams", str(args.streams + 50)] if knows_limit else []
    env = dict(os.environ, PYTHONPATH=str(args.tree))
    server = subprocess.Popen(
        [str(twistd), "--nodaemon", "--pidfile=", f"--logfile={workdir / 'twistd.log'}", "sipproxy",
         "--sip-interface", LOOPBACK, "--sip-port", str(sip_port), "--web", f"tcp:{web_port}:interface={LOOPBACK}",
         "--db", ":memory:", "--domain", "example.test", "--max-contacts", "10", *extra],
        cwd=workdir, env=env,
    )  # fmt: skip
    try:
        log = workdir / "twistd.log"
        deadline = time.monotonic() + 30
        while not (log.exists() and "sipproxy ready" in log.read_text(errors="replace")):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.1)
        populate(sip_port, args.bindings)
        open_streams(web_port, 1, True).kill()  # the first request imports and compiles what the page needs
        round_trips(sip_port, 50)
        time.sleep(1)
        print(f"tree {args.tree}: {args.bindings} bindings, RSS {rss_mb(server.pid):.0f} MB")
        for label, streams, read in [("no stream", 0, False), (f"{args.streams} streams, never read", args.streams, False),
                                     (f"{args.streams} streams, read", args.streams, True)]:  # fmt: skip
            client = open_streams(web_port, streams, read) if streams else None
            times = round_trips(sip_port, args.samples)
            lost = sum(1 for t in times if t >= 2.0)
            print(
                f"{label:32s} p50 {percentile(times, 0.5) * 1000:7.2f} ms  p99 {percentile(times, 0.99) * 1000:8.2f} ms"
                f"  max {max(times) * 1000:8.1f} ms  unanswered {lost}  RSS {rss_mb(server.pid):.0f} MB"
            )
            if client is not None:
                client.kill()
                client.wait()
            time.sleep(1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)


if __name__ == "__main__":
    main()
