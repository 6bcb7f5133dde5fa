"""The bindings page in process for the web tests: a real store on a fake clock, StubTreq, raw HTTP over StringTransport."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site

from sipproxy.location import Binding, LocationStore
from sipproxy.metrics import Metrics
from sipproxy.web import BindingsPage, make_environment

REPO = Path(__file__).resolve().parent.parent
ALICE = "sip:alice@example.test"
BOB = "sip:bob@example.test"
START = 1_714_566_896.0  # 2024-05-01T12:34:56Z
BASE = "http://127.0.0.1:8080"
JSON_KEYS = {
    "aor", "contact", "expires_in", "q", "call_id", "cseq", "user_agent", "source", "transport",
    "source_host", "source_port", "path", "instance", "reg_id", "registered_at", "refreshed_at",
}  # fmt: skip


def make_binding(
    aor: str = ALICE, contact: str = "sip:alice@192.0.2.7:5062", *, ttl: float = 3600, **fields: Any
) -> Binding:
    values: dict[str, Any] = {
        "call_id": "a84b4c76e66710@pc33.example.test",
        "cseq": 1,
        "expires_at": START + ttl,
        "user_agent": "Linphone/5.2",
        "source_host": "192.0.2.7",
        "source_port": 5062,
        "registered_at": START,
        "refreshed_at": START,
    }
    values.update(fields)
    return Binding(aor=aor, contact=contact, **values)


class Turns(Clock):
    """A ``Clock`` that can also run one reactor turn: the calls due now, not those they schedule for now.

    ``Clock.advance(0)`` runs calls scheduled during it as well; a real
    reactor runs those in its next iteration, after reading its sockets.
    """

    def turn(self) -> None:
        for call in [c for c in self.calls if c.getTime() <= self.seconds()]:
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


class Web:
    """One page over a real in-memory store, driven through StubTreq on a fake clock."""

    def __init__(
        self,
        *,
        password: str | None = None,
        public: bool = False,
        persistence: Any = None,
        debug: bool = False,
        **page_options: Any,
    ) -> None:
        self.clock = Turns()
        self.clock.advance(START)
        self.store = LocationStore(self.clock, persistence)
        self.metrics = Metrics()
        self.metrics.watch(self.metrics.bindings, self.store.count)
        self.healthy = True
        self.page = BindingsPage(
            self.store,
            self.clock,
            self.metrics,
            make_environment(),
            lambda: self.healthy,
            password=password,
            public=public,
            debug=debug,
            **page_options,
        )
        self.resource = self.page.resource()
        self.stub = StubTreq(self.resource)

    def put(self, *bindings: Binding) -> None:
        for binding in bindings:
            self.store.update(binding.aor, put=[binding])

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        """(response, body) of one request; the page answers synchronously."""
        response = result(self.stub.request(method, BASE + path, **kwargs))
        return response, result(response.content())

    def snapshots_out(self) -> None:
        """Run the reactor turns that send the open streams' snapshots (a slice per turn)."""
        for _ in range(10_000):
            self.stub.flush()
            if not any(s.snapshot is not None for s in self.page.streams if not s.paused):
                return
            self.clock.advance(0)
        raise AssertionError("the snapshots never finished")

    def raw(self, data: bytes, peer: str = "127.0.0.1", transport: StringTransport | None = None) -> RawConnection:
        """One HTTP connection from ``peer`` to a real ``Site`` over a ``StringTransport``, ``data`` sent on it."""
        connection = RawConnection(self, peer, transport)
        connection.send(data)
        return connection

    def get_json(self, path: str) -> Any:
        response, body = self.request("GET", path)
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
        return json.loads(body)


def result(deferred: Any) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the deferred did not fire synchronously"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def basic(user: str, password: str) -> dict[str, list[str]]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": [f"Basic {token}"]}


class Stream:
    """An open ``/api/events`` response, its body chunks as they arrive."""

    def __init__(self, web: Web) -> None:
        self.web = web
        self.chunks: list[bytes] = []
        self.response = result(web.stub.get(BASE + "/api/events"))
        treq.collect(self.response, self.chunks.append)
        web.stub.flush()
        web.snapshots_out()

    def events(self) -> list[tuple[str, Any]]:
        self.web.stub.flush()
        found = []
        for message in b"".join(self.chunks).decode().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in message.splitlines() if line.startswith(("event:", "data:")))
            if "event" in lines:
                found.append((lines["event"], json.loads(lines["data"])))
        return found

    def close(self) -> None:
        for stream in list(self.web.page.streams):
            stream.request.transport.loseConnection()  # type: ignore[attr-defined]
            stream.request.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.web.stub.flush()


class RawConnection:
    """A real ``HTTPChannel`` of a ``Site`` serving the page, its transport a ``StringTransport``."""

    def __init__(self, web: Web, peer: str, transport: StringTransport | None = None) -> None:
        site = Site(web.resource, reactor=web.clock)
        self.channel = site.buildProtocol(IPv4Address("TCP", peer, 40000))
        assert self.channel is not None
        self.transport = transport or StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def received(self) -> bytes:
        """Everything the server wrote so far."""
        return bytes(self.transport.value())

    def status(self) -> int:
        return int(self.received().split(b" ", 2)[1])

    def body(self) -> bytes:
        """The response body as far as it arrived (de-chunked)."""
        head, _, body = self.received().partition(b"\r\n\r\n")
        return dechunk(body) if b"\r\ntransfer-encoding: chunked" in head.lower() else body


def get(path: str, host: str | None = "127.0.0.1:8080", *headers: str) -> bytes:
    """A raw HTTP/1.1 GET (``host=None``: without a Host header)."""
    lines = [f"GET {path} HTTP/1.1", *([f"Host: {host}"] if host is not None else []), *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class SlowClient(StringTransport):
    """A transport whose client reads only when told: like a TCP socket, it pauses its producer when full.

    Twisted's ``FileDescriptor`` pauses the registered producer once more than
    ``bufferSize`` bytes wait to be sent and resumes it when the buffer has
    drained; here the client "reads" with :meth:`read`.
    """

    def __init__(self, buffer_size: int = 65536) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.buffer_size = buffer_size
        self.unread = 0
        self.full = False
        self.most_unread = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unread += len(data)
        self.most_unread = max(self.most_unread, self.unread)
        if self.unread > self.buffer_size and not self.full and self.producer is not None:
            self.full = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def read(self) -> None:
        """The client reads everything sent so far."""
        self.unread = 0
        if self.full and self.producer is not None:
            self.full = False
            self.producer.resumeProducing()

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body as far as it arrived."""
    out = []
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(out)


def sse_events(data: bytes) -> list[tuple[str, Any]]:
    """The complete Server-Sent Events in ``data``: (event name, parsed data)."""
    found = []
    for message in data.decode().split("\n\n")[:-1]:
        lines = dict(line.split(": ", 1) for line in message.splitlines() if line.startswith(("event:", "data:")))
        if "event" in lines:
            found.append((lines["event"], json.loads(lines["data"])))
    return found
