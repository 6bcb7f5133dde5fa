"""``--workers N``: the options each worker gets, its Via, the shared port, tags the same in every process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from twisted.python.usage import UsageError

from sipproxy.locality import LocalAddress, Locality
from sipproxy.message import Request, parse_message, parse_via
from sipproxy.proxy.routing import preprocess_routing, record_route_values
from sipproxy.tap import Options
from sipproxy.transport.listen import bound_socket
from sipproxy.workers import free_ports, worker_arguments


def test_each_worker_gets_worker_0s_options_without_its_web_page_but_with_its_websocket_ports() -> None:
    argv = ["--sip-port", "5070", "--web", "tcp:8080", "--ws=tcp:8088", "--workers", "2", "--store", "redis://r/0"]
    assert worker_arguments(argv, 1, [40001, 40002]) == [
        "--sip-port",
        "5070",
        "--ws=tcp:8088",
        "--store",
        "redis://r/0",
        "--web",
        "tcp:0:interface=127.0.0.1",
        "--worker",
        "1",
        "--worker-ports",
        "40001,40002",
    ]


def test_more_than_one_worker_needs_the_shared_store() -> None:
    with pytest.raises(UsageError, match="--workers above 1 needs --store redis://"):
        Options().parseOptions(["--workers", "2"])
    options = Options()
    options.parseOptions(["--workers", "2", "--store", "redis://127.0.0.1/0"])
    assert options["workers"] == 2 and options["worker"] == 0


def test_a_worker_puts_its_own_port_in_its_via_and_every_workers_via_is_ours() -> None:
    local = LocalAddress("192.0.2.1", 5060, 5061, via_port=40001, worker_ports=frozenset({40001, 40002}))
    assert local.via_hostport_for("UDP") == "192.0.2.1:40001"
    assert local.via_hostport_for("TCP") == "192.0.2.1:40001"
    assert local.via_hostport_for("TLS") == "192.0.2.1:5061"  # TLS stays on its port
    assert local.hostport_for("UDP") == "192.0.2.1:5060"  # what phones are told to send to: the shared port
    locality = Locality(local, {"example.test"})
    assert locality.is_our_via(parse_via("SIP/2.0/UDP 192.0.2.1:40002;branch=z9hG4bKw2"))  # loop detection
    assert not locality.is_our_via(parse_via("SIP/2.0/UDP 192.0.2.1:40003;branch=z9hG4bKw3"))


def test_a_workers_record_route_names_its_own_port_and_another_worker_forwards_to_it() -> None:
    # The worker holding a phone's connection record-routes with its own port (the flow token in it is
    # usable only there); another worker that gets the in-dialog request pops its own Route and the
    # shared port's, and leaves the first worker's for the request to be forwarded to it.
    local = LocalAddress("192.0.2.1", 5060, via_port=40001, worker_ports=frozenset({40001, 40002}))
    [udp] = record_route_values(local, "UDP", "UDP", None)
    assert udp == "<sip:192.0.2.1:40001;lr>"
    tcp, _ = record_route_values(local, "UDP", "TCP", None, flow_out="tok")
    assert tcp.startswith("<sip:192.0.2.1:40001;transport=tcp;ft=tok")
    request = parse_message(
        b"BYE sip:phone@192.0.2.9:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.8;branch=z9hG4bKb\r\n"
        b"Route: <sip:192.0.2.1:40001;lr>, <sip:192.0.2.1;lr>, <sip:192.0.2.1:40002;transport=tcp;lr;ft=tok>\r\n"
        b"Call-ID: c\r\nCSeq: 2 BYE\r\nFrom: <sip:a@example.test>;tag=1\r\nTo: <sip:phone@example.test>;tag=2\r\n"
        b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(request, Request)
    popped = preprocess_routing(request, Locality(local, {"example.test"}))
    assert [u.port for u in popped] == [40001, None]
    assert request.get_all("route") == ["<sip:192.0.2.1:40002;transport=tcp;lr;ft=tok>"]  # worker 2's: to it


def test_workers_bind_the_same_port_with_so_reuseport_and_nobody_else_can() -> None:
    [port] = free_ports(1, "127.0.0.1")
    first = bound_socket(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", port, reuse_port=True)
    second = bound_socket(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", port, reuse_port=True)
    try:
        with pytest.raises(OSError):
            bound_socket(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", port).close()
    finally:
        first.close()
        second.close()


def test_stable_tag_is_the_same_in_processes_with_different_hash_seeds() -> None:
    code = (
        "from sipproxy.randomness import set_tag_key, stable_tag\n"
        "from sipproxy.message import parse_message\n"
        "set_tag_key(b'k' * 32)\n"
        "r = parse_message(b'OPTIONS sip:x SIP/2.0\\r\\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\\r\\n"
        "Call-ID: abc\\r\\nCSeq: 1 OPTIONS\\r\\nFrom: <sip:a@b>;tag=1\\r\\nTo: <sip:x>\\r\\n\\r\\n')\n"
        "print(stable_tag(r))\n"
    )
    tags = {
        subprocess.run(
            [sys.executable, "-c", code],
            env=dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=os.getcwd()),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(tags) == 1 and len(tags.pop()) == 16
