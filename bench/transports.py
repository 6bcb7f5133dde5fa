"""REGISTER and call cost over UDP, TCP, TLS, WS and WSS, and memory per idle TLS/WS connection (issue 14, Figures).

    python3 bench/transports.py [--tree DIR] [--seconds 10] [--phones 50] [--idle 5000]

sipp cannot speak TLS here (Debian's build has no OpenSSL) nor WebSocket, so
one Python client drives every transport the same way: ``phones`` phones,
each on its own socket or connection, each sending its next REGISTER as soon
as the 200 to the last one arrives, for ``seconds`` seconds per transport.
The client shares the machine's cores with the server, so REGISTER/s is what
this client reaches; the figure that does not depend on the client is the
server's CPU time per REGISTER (utime + stime of the ``twistd`` process,
from ``/proc``), which is what the comparison between transports rests on.

Calls the same way: ``phones`` callers on the transport under test, each
calling a UDP callee registered at the proxy back to back (INVITE, 200, ACK,
BYE, 200, no media), and the server's CPU time per call.

Then ``idle`` connections are opened over TLS, over WS and over WSS (TLS
handshake, WebSocket upgrade, nothing else), from 64-connection groups of
loopback addresses (127.3.x.y; the server allows 64 per address), with
``--max-connections`` above ``idle`` so that none is closed for a newcomer,
and the server's VmRSS growth divided by ``idle`` is the memory per idle
connection.
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

    def local(self) -> tuple[str, int]:
        return self.writer.get_extra_info("sockname")

    def close(self) -> None:
        self.writer.close()

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
    """A UDP phone's socket with the same ``send``/``response`` as :class:`Stream`."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, port: int) -> Udp:
        loop = asyncio.get_running_loop()
        _, udp = await loop.create_datagram_endpoint(cls, remote_addr=("127.0.0.1", port))
        return udp

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def response(self) -> bytes:
        return await asyncio.wait_for(self.queue.get(), 5)

    def local(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()


async def channel(transport: str, ports: dict[str, int], tls: ssl.SSLContext) -> Udp | Stream:
    if transport == "UDP":
        return await Udp.open(ports["UDP"])
    return await Stream.open(ports[transport], tls=tls if transport in ("TLS", "WSS") else None, ws="WS" in transport)


def ok(response: bytes, what: str) -> None:
    if not response.startswith(b"SIP/2.0 200 "):
        raise RuntimeError(f"{what} not answered 200: {response.splitlines()[0]!r}")


async def phone(transport: str, n: int, ports: dict[str, int], tls: ssl.SSLContext, until: float) -> int:
    """A phone refreshing its registration back to back until ``until``; returns the 200s."""
    user, done = f"{transport.lower()}{n}", 0
    chan = await channel(transport, ports, tls)
    while time.monotonic() < until:
        chan.send(register(transport, user, chan.local(), done + 1, ports["UDP"]))
        ok(await chan.response(), "REGISTER")
        done += 1
    chan.close()
    return done


# -- calls: a caller on the transport under test, the callee a UDP UAS ------------------------------


def headers(message: bytes, *names: str) -> list[bytes]:
    wanted = {name.lower().encode() for name in names}
    return [line for line in message.split(b"\r\n") if line.split(b":", 1)[0].strip().lower() in wanted]


def value(line: bytes) -> bytes:
    return line.split(b":", 1)[1].strip()


class Callee(Udp):
    """The UAS every call reaches: 200 to INVITE (Record-Route copied, RFC 3261 §12.1.1) and to BYE."""

    def datagram_received(self, data: bytes, addr: object) -> None:
        if data.startswith((b"INVITE ", b"BYE ")):
            invite = data.startswith(b"INVITE ")
            lines = headers(data, "via", "v", "from", "f", "call-id", "i", "cseq")
            lines += [line + b";tag=uas" if invite else line for line in headers(data, "to", "t")]
            if invite:
                lines += headers(data, "record-route")
                lines.append(b"Contact: <sip:uas@%s:%d>" % (self.local()[0].encode(), self.local()[1]))
            assert self.transport is not None
            self.transport.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(lines) + b"\r\nContent-Length: 0\r\n\r\n", addr)
        elif data.startswith(b"SIP/2.0 "):
            self.queue.put_nowait(data)


def request(method: str, uri: str, transport: str, local: tuple[str, int], call: str, cseq: int, extra: str) -> bytes:
    host = "df7jal23ls0d.invalid" if transport in ("WS", "WSS") else f"{local[0]}:{local[1]}"
    return (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {host};branch=z9hG4bK-{call}-{method};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:caller@example.test>;tag={call}\r\n{extra}"
        f"Call-ID: {call}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:caller@{host};transport={transport.lower()}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def final(chan: Udp | Stream, what: str) -> bytes:
    while True:
        response = await chan.response()
        if not response.startswith(b"SIP/2.0 1"):
            ok(response, what)
            return response


async def caller(transport: str, n: int, ports: dict[str, int], tls: ssl.SSLContext, until: float) -> int:
    """INVITE, 200, ACK, BYE, 200 back to back until ``until``; returns the calls completed."""
    chan, done = await channel(transport, ports, tls), 0
    while time.monotonic() < until:
        call, local = f"c{transport}{n}x{done}", chan.local()
        chan.send(
            request("INVITE", "sip:uas@example.test", transport, local, call, 1, "To: <sip:uas@example.test>\r\n")
        )
        answer = await final(chan, "INVITE")
        to = value(headers(answer, "to", "t")[0]).decode()
        target = value(headers(answer, "contact", "m")[0]).decode().strip("<>")
        routes = "".join(f"Route: {value(line).decode()}\r\n" for line in reversed(headers(answer, "record-route")))
        dialog = f"To: {to}\r\n{routes}"
        chan.send(request("ACK", target, transport, local, call, 1, dialog))
        chan.send(request("BYE", target, transport, local, call, 2, dialog))
        await final(chan, "BYE")
        done += 1
    chan.close()
    return done


async def load(
    transport: str, phones: int, seconds: float, ports: dict[str, int], tls: ssl.SSLContext, *, calls: bool = False
) -> int:
    until = time.monotonic() + seconds
    who = caller if calls else phone
    return sum(await asyncio.gather(*(who(transport, n, ports, tls, until) for n in range(phones))))


async def calls(transport: str, phones: int, seconds: float, ports: dict[str, int], tls: ssl.SSLContext) -> int:
    """Register the UDP callee, then ``phones`` callers on ``transport`` call it back to back."""
    loop = asyncio.get_running_loop()
    _, uas = await loop.create_datagram_endpoint(Callee, remote_addr=("127.0.0.1", ports["UDP"]))
    uas.send(
        register("UDP", "uas", uas.local(), 1, ports["UDP"]).replace(b"uas@bench", f"uas{transport}@bench".encode())
    )
    ok(await uas.response(), "the callee's REGISTER")
    try:
        return await load(transport, phones, seconds, ports, tls, calls=True)
    finally:
        uas.close()


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


def start_server(workdir: Path, connections: int) -> tuple[object, dict[str, int]]:
    from harness import Server, free_port

    server = Server(workdir, [])
    ports = {"TLS": free_port(), "WS": free_port(), "WSS": free_port(), "UDP": server.sip_port, "TCP": server.sip_port}
    server.extra = [
        "--tls-cert", f"{workdir}/cert.pem", "--tls-key", f"{workdir}/key.pem", "--tls-port", str(ports["TLS"]),
        "--ws", f"tcp:{ports['WS']}:interface=127.0.0.1", "--wss", f"tcp:{ports['WSS']}:interface=127.0.0.1",
        "--max-connections", str(connections),
    ]  # fmt: skip
    server.start()
    return server, ports


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def hold(transport: str, count: int, ports: dict[str, int], tls: ssl.SSLContext, pid: int) -> float:
    """Server RSS growth in MB with ``count`` idle connections open (checked: every one still open)."""
    rss, files = rss_mb(pid), open_files(pid)
    streams = await idle(transport, count, ports, tls, 0)
    await asyncio.sleep(2)
    grown, still = rss_mb(pid) - rss, open_files(pid) - files
    if still < count:
        raise RuntimeError(f"{transport}: only {still} of {count} connections still open at the server")
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
        server, ports = start_server(workdir, args.idle + args.phones + 16)
        try:
            pid = server.proc.pid  # type: ignore[attr-defined]
            for transport in args.transports.split(","):
                before, start = cpu_seconds(pid), time.monotonic()
                done = asyncio.run(load(transport, args.phones, args.seconds, ports, tls))
                cpu, wall = cpu_seconds(pid) - before, time.monotonic() - start
                print(
                    f"{transport:4} REGISTER/s={done / wall:7.0f}  server CPU per REGISTER={cpu / done * 1e6:6.0f} us"
                )
            for transport in args.transports.split(","):
                before, start = cpu_seconds(pid), time.monotonic()
                done = asyncio.run(calls(transport, args.phones, args.seconds, ports, tls))
                cpu, wall = cpu_seconds(pid) - before, time.monotonic() - start
                print(
                    f"{transport:4} calls/s={done / wall:7.0f}  server CPU per call={cpu / done * 1e6:6.0f} us (callee on UDP)"
                )
        finally:
            server.stop()  # type: ignore[attr-defined]
        for transport in ("TCP", "TLS", "WS", "WSS"):  # each in a fresh server: freed memory is reused
            server, ports = start_server(workdir, args.idle + args.phones + 16)
            try:
                grown = asyncio.run(hold(transport, args.idle, ports, tls, server.proc.pid))  # type: ignore[attr-defined]
                print(
                    f"{transport:4} idle connections={args.idle}  RSS +{grown:.1f} MB = {grown * 1024 / args.idle:.1f} KiB each"
                )
            finally:
                server.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
