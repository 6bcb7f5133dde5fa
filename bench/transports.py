"""REGISTER cost over UDP, TCP, TLS, WS and WSS, and memory per idle TLS/WS connection (issue 14, Figures).

    python3 bench/transports.py [--tree DIR] [--seconds 10] [--phones 50] [--idle 5000]

sipp cannot speak TLS here (Debian's build has no OpenSSL) nor WebSocket, so
one Python client drives every transport the same way: ``phones`` phones,
each on its own socket or connection, each sending its next REGISTER as soon
as the 200 to the last one arrives, for ``seconds`` seconds per transport.
The client shares the machine's cores with the server, so REGISTER/s is what
this client reaches; the figure that does not depend on the client is the
server's CPU time per REGISTER (utime + stime of the ``twistd`` process,
from ``/proc``), which is what the comparison between transports rests on.

Then ``idle`` connections are opened over TLS, over WS and over WSS (TLS
handshake, WebSocket upgrade, nothing else), from 64-connection groups of
loopback addresses (127.3.x.y), and the server's VmRSS growth divided by
``idle`` is the memory per idle connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

import trustme
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def register(transport: str, user: str, local: tuple[str, int], cseq: int, port: int) -> bytes:
    host = "df7jal23ls0d.invalid" if transport in ("WS", "WSS") else f"{local[0]}:{local[1]}"
    return (
        f"REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host};branch=z9hG4bK-{user}-{cseq};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@example.test>;tag={user}\r\nTo: <sip:{user}@example.test>\r\n"
        f"Call-ID: {user}@bench\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{host};transport={transport.lower()}>;expires=600\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Stream:
    """One phone's connection: TCP or TLS, optionally with WebSocket framing (RFC 7118)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: WSConnection | None):
        self.reader, self.writer, self.ws = reader, writer, ws
        self.buffer = b""

    @classmethod
    async def open(cls, port: int, *, tls: ssl.SSLContext | None, ws: bool, source: str = "127.0.0.1") -> Stream:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None, local_addr=(source, 0)
        )
        stream = cls(reader, writer, WSConnection(ConnectionType.CLIENT) if ws else None)
        if stream.ws is not None:
            writer.write(stream.ws.send(Request(host="localhost", target="/", subprotocols=["sip"])))
            while True:
                stream.ws.receive_data(await reader.read(65536))
                if any(isinstance(event, AcceptConnection) for event in stream.ws.events()):
                    break
        return stream

    def send(self, data: bytes) -> None:
        self.writer.write(self.ws.send(TextMessage(data=data.decode())) if self.ws else data)

    async def response(self) -> bytes:
        if self.ws is not None:
            while True:
                for event in self.ws.events():
                    if isinstance(event, TextMessage):
                        return event.data.encode()
                self.ws.receive_data(await self.reader.read(65536))
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return head


class Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


def ok(response: bytes) -> int:
    if not response.startswith(b"SIP/2.0 200 "):
        raise RuntimeError(f"REGISTER not accepted: {response.splitlines()[0]!r}")
    return 1


async def phone(transport: str, n: int, ports: dict[str, int], tls: ssl.SSLContext, until: float) -> int:
    user, done = f"{transport.lower()}{n}", 0
    if transport == "UDP":
        loop = asyncio.get_running_loop()
        sock, udp = await loop.create_datagram_endpoint(Udp, remote_addr=("127.0.0.1", ports["UDP"]))
        local = sock.get_extra_info("sockname")
        while time.monotonic() < until:
            sock.sendto(register("UDP", user, local, done + 1, ports["UDP"]))
            try:
                answer = await asyncio.wait_for(udp.queue.get(), 2)
            except TimeoutError:
                continue
            done += ok(answer)
        sock.close()
        return done
    stream = await Stream.open(ports[transport], tls=tls if transport in ("TLS", "WSS") else None, ws="WS" in transport)
    local = stream.writer.get_extra_info("sockname")
    while time.monotonic() < until:
        stream.send(register(transport, user, local, done + 1, ports["UDP"]))
        done += ok(await stream.response())
    stream.writer.close()
    return done


async def load(transport: str, phones: int, seconds: float, ports: dict[str, int], tls: ssl.SSLContext) -> int:
    until = time.monotonic() + seconds
    return sum(await asyncio.gather(*(phone(transport, n, ports, tls, until) for n in range(phones))))


async def idle(transport: str, count: int, ports: dict[str, int], tls: ssl.SSLContext, group: int) -> list[Stream]:
    streams = []
    for n in range(count):
        source = f"127.3.{group + n // 64 // 250}.{n // 64 % 250 + 1}"
        streams.append(
            await Stream.open(
                ports[transport], tls=tls if transport in ("TLS", "WSS") else None, ws="WS" in transport, source=source
            )
        )
    return streams


def start_server(workdir: Path) -> tuple[object, dict[str, int]]:
    from harness import Server, free_port

    server = Server(workdir, [])
    ports = {"TLS": free_port(), "WS": free_port(), "WSS": free_port(), "UDP": server.sip_port, "TCP": server.sip_port}
    server.extra = [
        "--tls-cert", f"{workdir}/cert.pem", "--tls-key", f"{workdir}/key.pem", "--tls-port", str(ports["TLS"]),
        "--ws", f"tcp:{ports['WS']}:interface=127.0.0.1", "--wss", f"tcp:{ports['WSS']}:interface=127.0.0.1",
    ]  # fmt: skip
    server.start()
    return server, ports


async def hold(transport: str, count: int, ports: dict[str, int], tls: ssl.SSLContext, pid: int) -> float:
    """Server RSS growth in MB with ``count`` idle connections open."""
    rss = rss_mb(pid)
    streams = await idle(transport, count, ports, tls, 0)
    await asyncio.sleep(2)
    grown = rss_mb(pid) - rss
    for stream in streams:
        stream.writer.close()
    return grown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--phones", type=int, default=50)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--transports", default="UDP,TCP,TLS,WS,WSS")
    args = parser.parse_args()
    sys.path[:0] = [args.tree, str(Path(args.tree) / "tests" / "integration")]

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(workdir / "key.pem")
        cert.cert_chain_pems[0].write_to_path(workdir / "cert.pem")
        tls = ssl.create_default_context()
        ca.configure_trust(tls)
        print(f"{args.tree}: {args.phones} phones, {args.seconds:g} s per transport")
        server, ports = start_server(workdir)
        try:
            pid = server.proc.pid  # type: ignore[attr-defined]
            for transport in args.transports.split(","):
                before, start = cpu_seconds(pid), time.monotonic()
                done = asyncio.run(load(transport, args.phones, args.seconds, ports, tls))
                cpu, wall = cpu_seconds(pid) - before, time.monotonic() - start
                print(
                    f"{transport:4} REGISTER/s={done / wall:7.0f}  server CPU per REGISTER={cpu / done * 1e6:6.0f} us"
                )
        finally:
            server.stop()  # type: ignore[attr-defined]
        for transport in ("TCP", "TLS", "WS", "WSS"):  # each in a fresh server: freed memory is reused
            server, ports = start_server(workdir)
            try:
                grown = asyncio.run(hold(transport, args.idle, ports, tls, server.proc.pid))  # type: ignore[attr-defined]
                print(
                    f"{transport:4} idle connections={args.idle}  RSS +{grown:.1f} MB = {grown * 1024 / args.idle:.1f} KiB each"
                )
            finally:
                server.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
