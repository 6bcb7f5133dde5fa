"""Two real ``twistd -n sipproxy`` nodes sharing one real ``redis-server`` (``--store redis://``), on loopback.

Issue 16, "A shared store on Redis": a phone registered at node A is
called through node B; ``kill -9`` of A leaves its UDP bindings callable
through B; a restarted node loads 100,000 bindings; Redis restarted with
``appendfsync always`` loses no binding that got a 200; with Redis stopped
REGISTERs get 503 + Retry-After, calls to known phones still connect and
``/healthz`` says why, and REGISTERs succeed again once it is back.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, Server, register_query, sipp, udp_final, users_file
from test_proxy_sipp import Peers, succeeded

from sipproxy.location.binding import Binding
from sipproxy.location.redis_codec import encode
from sipproxy.message import Request, Response, make_response, parse_message
from tests.redis_helpers import RedisServer


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, appendfsync="always")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def node(tmp_path: Path, redis: RedisServer) -> Iterator[object]:
    """``node("a")``: a sipproxy node on Redis, in its own directory, stopped at teardown."""
    started: list[Server] = []

    def make(name: str) -> Server:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        server = Server(workdir, ["--store", redis.url, "--node-id", name])
        server.start()
        wait_healthy(server)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def healthz(server: Server) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{server.web_port}/healthz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_healthy(server: Server, healthy: bool = True, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = healthz(server)
        if (status == 200) == healthy:
            return body
        time.sleep(0.05)
    raise AssertionError(f"/healthz did not become {'200' if healthy else '503'}: {body}\n{server.log_text()[-3000:]}")


def register(server: Server, user: str, *, tag: str = "1") -> Response:
    data = (
        f"REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:9;branch=z9hG4bK-r{user}{tag}{time.monotonic_ns()};rport\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:{user}@example.test>\r\nFrom: <sip:{user}@example.test>;tag=r\r\n"
        f"Call-ID: redis-{user}-{tag}@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:5999>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    return udp_final(server.sip_port, data)


def test_a_udp_phone_registered_at_node_a_is_called_through_node_b(node) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    at_a, at_b = Peers(a), Peers(b)
    try:
        bob = at_a.uas("uas_answer.xml", user="bob")
        uac = at_b.call("call_uac.xml", keys={"callee": "bob"})
        succeeded(uac)
        assert bob.requests("INVITE"), bob.report()
        assert f"{LOOPBACK}:{b.sip_port}" in bob.requests("INVITE")[0].get_all("record-route")[0]
    finally:
        at_a.stop()
        at_b.stop()
    assert "Registered sip:bob@example.test" in a.log_text()
    assert "Registered sip:bob@example.test" not in b.log_text(), "one log line per change: the registering node's"


class TcpPhone:
    """An RFC 5626 phone on one TCP connection to a node: registers over it, answers what comes back on it."""

    def __init__(self, server: Server, user: str) -> None:
        self.user = user
        self.sock = socket.create_connection((LOOPBACK, server.sip_port), timeout=20)
        self.port = self.sock.getsockname()[1]
        self.buffer = b""
        self.received: list[Request] = []

    def read(self) -> Request | Response:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._chunk()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        match = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        while len(rest) < length:
            rest += self._chunk()
        self.buffer = rest[length:]
        return parse_message(head + b"\r\n\r\n" + rest[:length])

    def _chunk(self) -> bytes:
        data = self.sock.recv(65535)
        if not data:
            raise ConnectionError("the node closed the connection")
        return data

    def register(self) -> Response:
        user, port = self.user, self.port
        self.sock.sendall(
            (
                f"REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/TCP {LOOPBACK}:{port};branch=z9hG4bK-t{port};rport\r\n"
                f"Max-Forwards: 70\r\nTo: <sip:{user}@example.test>\r\nFrom: <sip:{user}@example.test>;tag=t\r\n"
                f"Call-ID: tcp-{user}@127.0.0.1\r\nCSeq: 1 REGISTER\r\nSupported: outbound, path\r\n"
                f'Contact: <sip:{user}@{LOOPBACK}:{port};transport=tcp;ob>;+sip.instance="<urn:uuid:{user}>";reg-id=1\r\n'
                "Expires: 3600\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        response = self.read()
        assert isinstance(response, Response)
        return response

    def answer(self, count: int) -> None:
        """Answer ``count`` requests (INVITE: 200 with a To tag and our Contact; BYE: 200; ACK: nothing)."""
        answered = 0
        while answered < count:
            request = self.read()
            if not isinstance(request, Request):
                continue
            self.received.append(request)
            if request.method == "ACK":
                answered += 1
                continue
            response = make_response(request, 200, to_tag="phone")
            for value in request.get_all("record-route"):
                response.add("Record-Route", value)
            response.add("Contact", f"<sip:{self.user}@{LOOPBACK}:{self.port};transport=tcp;ob>")
            self.sock.sendall(response.to_bytes())
            answered += 1


def test_a_tcp_phone_registered_at_node_a_is_reached_from_node_b_through_a(node) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    phone = TcpPhone(a, "dave")
    try:
        assert phone.register().status == 200
        answering = threading.Thread(target=phone.answer, args=(3,), daemon=True)  # INVITE, ACK, BYE
        answering.start()
        at_b = Peers(b)
        try:
            uac = at_b.call("call_uac.xml", keys={"callee": "dave"})
            succeeded(uac)
        finally:
            at_b.stop()
        answering.join(20)
        methods = [r.method for r in phone.received]
        assert methods == ["INVITE", "ACK", "BYE"], methods
        vias = phone.received[0].get_all("via")
        assert f"{LOOPBACK}:{a.sip_port}" in vias[0] and f"{LOOPBACK}:{b.sip_port}" in vias[1], vias
    finally:
        phone.sock.close()


def test_after_kill_9_of_node_a_its_udp_phones_are_called_through_node_b(node) -> None:  # type: ignore[no-untyped-def]
    a, b = node("a"), node("b")
    at_a, at_b = Peers(a), Peers(b)
    try:
        bob = at_a.uas("uas_answer.xml", user="bob")
        a.kill9()
        uac = at_b.call("call_uac.xml", keys={"callee": "bob"})
        succeeded(uac)
        assert bob.requests("INVITE"), bob.report()
    finally:
        at_a.stop()
        at_b.stop()


def fill(redis: RedisServer, count: int, directory: Path) -> None:
    """``count`` bindings written straight into Redis as nodes write them (through ``redis-cli --pipe``)."""
    expires = time.time() + 3600
    path = directory / "bindings.resp"
    with open(path, "wb") as out:
        for n in range(count):
            aor = f"sip:p{n}@example.test"
            b = Binding(aor=aor, contact=f"sip:p{n}@127.0.0.1:5999", call_id=f"c{n}", cseq=1, expires_at=expires)
            key = f"sipproxy:aor:{aor}"
            for args in (
                ["HSET", key, "", str(n + 1), b.contact, encode(b, "a")],
                ["ZADD", "sipproxy:expiries", repr(expires), key],
            ):
                out.write(
                    f"*{len(args)}\r\n".encode()
                    + b"".join(b"$%d\r\n%s\r\n" % (len(x.encode()), x.encode()) for x in args)
                )
        args = ["SET", "sipproxy:seq", str(count)]
        out.write(
            f"*{len(args)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(x.encode()), x.encode()) for x in args)
        )
    with open(path, "rb") as data:
        done = subprocess.run(
            ["redis-cli", "-p", str(redis.port), "--pipe"], stdin=data, capture_output=True, timeout=120
        )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_node_restarted_loads_100000_bindings(node, redis: RedisServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    before = int(re.search(r"used_memory:(\d+)", redis.cli("INFO", "memory")).group(1))  # type: ignore[union-attr]
    fill(redis, 100_000, tmp_path)
    after = int(re.search(r"used_memory:(\d+)", redis.cli("INFO", "memory")).group(1))  # type: ignore[union-attr]
    a = node("a")
    a.stop()
    a.start()
    wait_healthy(a)
    loads = re.findall(r"Loaded (\d+) bindings from Redis .* in ([\d.]+) s", a.log_text())
    assert loads[-1][0] == "100000", a.log_text()[-2000:]
    # the figures bench/README.md quotes (measured, not asserted: the machine is shared)
    print(f"\nloaded 100000 bindings in {loads[-1][1]} s; Redis memory {(after - before) / 100_000:.0f} bytes/binding")
    [contact] = register_query(a.sip_port, "p99999")
    assert contact.startswith("<sip:p99999@127.0.0.1:5999>;expires=")


def test_redis_restarted_with_appendfsync_always_loses_no_binding_that_got_a_200(  # type: ignore[no-untyped-def]
    node, redis: RedisServer
) -> None:
    a = node("a")
    users = [f"r{i:03d}" for i in range(200)]
    result = sipp(
        "reg_contact.xml",
        a.sip_port,
        workdir=a.workdir,
        calls=len(users),
        rate=200,
        inf=users_file(a.workdir, users),
        keys={"domain": "example.test", "contact_port": "5999", "expires": "3600", "tp": "udp"},
    )
    assert result.returncode == 0, result.stdout[-3000:]  # every REGISTER got its 200
    redis.kill9()
    wait_healthy(a, healthy=False)
    redis.start()
    wait_healthy(a)
    keys = redis.cli("--scan", "--pattern", "sipproxy:aor:*").split()
    assert len(keys) == len(users)
    for user in (users[0], users[-1]):
        assert register_query(a.sip_port, user)


def test_with_redis_stopped_registers_get_503_calls_still_connect_and_it_recovers(  # type: ignore[no-untyped-def]
    node, redis: RedisServer
) -> None:
    a = node("a")
    at_a = Peers(a)
    try:
        bob = at_a.uas("uas_answer.xml", user="bob")
        redis.stop()
        body = wait_healthy(a, healthy=False)
        assert "Redis at redis://127.0.0.1" in body and "unreachable" in body, body
        refused = register(a, "carol")
        assert refused.status == 503, refused
        assert refused.get("retry-after") is not None
        uac = at_a.call("call_uac.xml", keys={"callee": "bob"})
        succeeded(uac)
        assert bob.requests("INVITE"), bob.report()
        redis.start()
        wait_healthy(a)
        assert register(a, "carol", tag="2").status == 200
        assert register_query(a.sip_port, "carol")
    finally:
        at_a.stop()
    assert "Traceback" not in a.log_text(), a.log_text()[-3000:]
    assert not os.path.exists(a.db), "with --store redis:// the SQLite file is not made"


def test_a_restarted_node_drops_only_its_own_connection_bindings_once_loaded(  # type: ignore[no-untyped-def]
    node, redis: RedisServer
) -> None:
    # RFC 5626 §5.3: a TCP phone's binding at node A cannot survive A's restart (its connection is gone);
    # node B's TCP phone and A's UDP phone stay.  The drop waits for the restarted node's first load.
    a, b = node("a"), node("b")
    at_a, at_b = TcpPhone(a, "erin"), TcpPhone(b, "finn")
    try:
        assert at_a.register().status == 200 and at_b.register().status == 200
        assert register(a, "gus").status == 200
        a.stop()
        at_a.sock.close()
        a.start()
        wait_healthy(a)
        deadline = time.monotonic() + 20
        while "Dropped 1 restored binding on connections closed by the restart" not in a.log_text():
            assert time.monotonic() < deadline, a.log_text()[-3000:]
            time.sleep(0.05)
        users = {key.rsplit(":", 1)[-1] for key in redis.cli("--scan", "--pattern", "sipproxy:aor:*").split()}
        assert {"finn@example.test", "gus@example.test"} <= users and "erin@example.test" not in users, users
    finally:
        at_a.sock.close()
        at_b.sock.close()
