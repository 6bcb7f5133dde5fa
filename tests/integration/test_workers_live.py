"""``--workers 2`` on one SIP port with the Redis store: the real ``twistd -n sipproxy``, sipp from many sockets.

Issue 16, "Several workers on one host": sipp sending each call from a
socket of its own (``-t un``) is spread over both workers by the kernel
(SO_REUSEPORT), every REGISTER and every call succeeds, and a call's
responses reach the worker that forwarded its INVITE (its own port, in its
Via) while the in-dialog ACK and BYE find their way through either.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import LOOPBACK, SCENARIOS, Server, free_port, require, users_file
from test_location_redis_live import TcpPhone, wait_healthy
from test_outbound_live import next_request, reply
from test_proxy_sipp import Peers
from test_websocket_live import WsPhone, ws_register

from tests.redis_helpers import RedisServer


@contextmanager
def two_workers(tmp_path: Path, *extra: str, ready: str = "sipproxy ready") -> Iterator[tuple[Server, RedisServer]]:
    """``--workers 2`` on a fresh redis-server, once both workers logged ``ready``; stopped after."""
    directory = tmp_path / "redis"
    directory.mkdir()
    redis = RedisServer(directory)
    redis.start()
    server = Server(tmp_path, ["--store", redis.url, "--workers", "2", *extra])
    server.start()
    try:
        deadline = time.monotonic() + 30
        while server.log_text().count("sipproxy ready") < 2 or server.log_text().count(ready) < 2:
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            time.sleep(0.05)
        wait_healthy(server)
        yield server, redis
    finally:
        server.stop()
        redis.stop()


@contextmanager
def closing_all(phones: list[WsPhone]) -> Iterator[None]:
    try:
        yield
    finally:
        for phone in phones:
            phone.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[Server, RedisServer]]:
    with two_workers(tmp_path) as running:
        yield running


def writers(redis: RedisServer, users: str) -> set[str]:
    """The nodes (workers) that wrote the bindings of the AORs ``sip:<users>``, from Redis."""
    found = set()
    for key in redis.cli("--scan", "--pattern", f"sipproxy:aor:sip:{users}").split():
        for value in redis.cli("HVALS", key).splitlines():
            if value.startswith("["):
                found.add(json.loads(value)[15])
    return found


def sipp_many_sockets(scenario: str, server: Server, calls: int, **keys: str) -> subprocess.CompletedProcess[str]:
    """A sipp UAC with a socket of its own for every call (``-t un``)."""
    args = [require("sipp"), f"{LOOPBACK}:{server.sip_port}", "-sf", str(SCENARIOS / scenario), "-i", LOOPBACK]
    args += ["-p", str(free_port()), "-t", "un", "-m", str(calls), "-r", "50", "-nostdin", "-timeout", "60s"]
    args += [
        "-timeout_error",
        "-max_socket",
        "500",
        "-trace_err",
        "-error_file",
        str(server.workdir / f"{scenario}.err"),
    ]
    for key, value in {"domain": "example.test", **keys}.items():
        args += ["-key", key, value]
    if scenario == "reg_contact.xml":
        args += ["-inf", str(users_file(server.workdir, [f"w{i:03d}" for i in range(calls)], "workers.csv"))]
    return subprocess.run(args, cwd=server.workdir, capture_output=True, text=True, timeout=120)


def test_two_workers_share_the_port_and_every_register_and_call_succeeds(workers) -> None:  # type: ignore[no-untyped-def]
    server, redis = workers
    registered = sipp_many_sockets("reg_contact.xml", server, 100, contact_port="5999", expires="3600", tp="udp")
    assert registered.returncode == 0, registered.stdout[-3000:]
    spread = writers(redis, "w*")
    assert len(spread) == 2, spread  # the kernel spread the REGISTERs over both workers

    peers = Peers(server)
    try:
        bob = peers.uas("uas_answer.xml", user="bob", calls=40)
        called = sipp_many_sockets("call_uac.xml", server, 40, callee="bob")
        assert called.returncode == 0, called.stdout[-3000:] + (server.workdir / "call_uac.xml.err").read_text()[-3000:]
        invites = bob.requests("INVITE")
        assert len({i.get_all("call-id")[0] for i in invites}) == 40
        via_ports = {int(re.search(r":(\d+)", i.get_all("via")[0]).group(1)) for i in invites}  # type: ignore[union-attr]
        assert len(via_ports) == 2 and server.sip_port not in via_ports, via_ports  # each worker's own port
        assert len(bob.requests("BYE")) == 40
    finally:
        peers.stop()
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


def test_a_tcp_phone_on_one_worker_is_called_from_every_worker_and_its_dialogs_follow_its_flow(workers) -> None:  # type: ignore[no-untyped-def]
    # The phone's connection is held by one worker; the calls land on both (sipp -t un); the INVITE, the
    # ACK and the BYE of each call must all reach the phone over its flow, whichever worker got them.
    server, _ = workers
    phone = TcpPhone(server, "carol")
    try:
        assert phone.register().status == 200
        answering = threading.Thread(target=phone.answer, args=(60,), daemon=True)  # 20 x (INVITE, ACK, BYE)
        answering.start()
        called = sipp_many_sockets("call_uac.xml", server, 20, callee="carol")
        answering.join(30)
        assert called.returncode == 0, called.stdout[-3000:] + (server.workdir / "call_uac.xml.err").read_text()[-3000:]
        methods = [r.method for r in phone.received]
        assert methods.count("INVITE") == 20 and methods.count("ACK") == 20 and methods.count("BYE") == 20, methods
        hops = [len(r.get_all("via")) for r in phone.received if r.method == "INVITE"]
        assert 2 in hops and 3 in hops, hops  # calls at the phone's worker, and calls through the other one
    finally:
        phone.sock.close()
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


def test_websocket_phones_connect_to_every_worker_and_are_called_over_their_flows(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # --ws on a port every worker listens on (SO_REUSEPORT): the kernel spreads the browser phones'
    # connections; a call from sipp reaches each phone over its WebSocket whichever worker got the INVITE,
    # and so do the ACK and BYE of its dialog.
    ws_port = free_port()
    phones: list[WsPhone] = []
    shared = ("--ws", f"tcp:{ws_port}:interface={LOOPBACK}")
    with two_workers(tmp_path, *shared, ready="SIP over WS on") as (server, redis), closing_all(phones):
        for n in range(12):
            phone = WsPhone(ws_port)
            phone.send(ws_register(f"ws{n}", "WS"))
            assert phone.final().status == 200
            phones.append(phone)
        spread = writers(redis, "ws*")
        assert len(spread) == 2, spread  # both workers accepted WebSocket phones

        for n, phone in enumerate(phones):
            done: list[subprocess.CompletedProcess[str]] = []
            caller = threading.Thread(
                target=lambda callee, into: into.append(sipp_many_sockets("call_uac.xml", server, 1, callee=callee)),
                args=(f"ws{n}", done),
            )
            caller.start()
            invite = next_request(phone, "INVITE")
            phone.send(reply(invite, 200, contact=True))
            assert next_request(phone, "ACK").method == "ACK"
            bye = next_request(phone, "BYE")
            phone.send(reply(bye, 200))
            caller.join(30)
            assert done and done[0].returncode == 0, done[0].stdout[-2000:] if done else "sipp did not finish"
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
