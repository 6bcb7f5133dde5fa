"""The whole stack under mutated input: nothing escapes, no bug is logged, no binding is lost.

Each example builds a server in memory the way ``service.build_service`` does
(TransportLayer, TransactionLayer, SipStack, Registrar, Proxy, LocationStore,
Security; see ``security_fakes.FakeServer``) with authentication on, registers
three users through the real digest exchange, then sends it a few mutated
messages -- byte flips, truncation, duplicated headers, random header values,
inserted and deleted lines -- through the UDP entry point
(``SipDatagramProtocol.datagramReceived``) and the TCP one (a
``SipStreamProtocol`` from ``SipStreamFactory`` on a ``StringTransport``,
fed in random pieces), with the clock moving in between.

Invariants:

* no exception escapes the entry points or the clock's timers;
* no log event carries ``log_failure`` (nothing was logged as a "Bug");
* the location store had no failing subscriber;
* every binding registered before the fuzzing is still there: without the
  password (the seeds hold only spent credentials for REGISTER) no mutation
  may remove or replace one.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, capturedLogs

try:
    from tests import security_fakes
    from tests.security_fakes import ALICE_ADDR, BOB_ADDR, FakeServer, authorization, register, request
    from tests.security_fakes import settings as security_settings
except ImportError:  # pragma: no cover
    import security_fakes  # type: ignore[no-redef]
    from security_fakes import ALICE_ADDR, BOB_ADDR, FakeServer, authorization, register, request  # type: ignore[no-redef]
    from security_fakes import settings as security_settings  # type: ignore[no-redef]

from sipproxy.transport import SipStreamFactory, SipStreamProtocol

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

CAROL_ADDR = ("192.0.2.9", 5062)
STRANGER = ("198.51.100.77", 5060)
ADDRESSES = [ALICE_ADDR, BOB_ADDR, CAROL_ADDR, STRANGER]

HEADER_NAMES = [
    b"Via",
    b"v",
    b"From",
    b"f",
    b"To",
    b"t",
    b"Call-ID",
    b"i",
    b"CSeq",
    b"Contact",
    b"m",
    b"Max-Forwards",
    b"Route",
    b"Record-Route",
    b"Content-Length",
    b"l",
    b"Expires",
    b"Authorization",
    b"Proxy-Authorization",
    b"Require",
    b"Proxy-Require",
    b"Supported",
    b"Path",
    b"Content-Type",
    b"X-Fuzz",
]

INTERESTING_VALUES = [
    b"",
    b" ",
    b"*",
    b"0",
    b"-1",
    b"4294967296",
    b"99999999999999999999",
    b"<>",
    b"<sip:>",
    b"sip:@",
    b"<sip:%00@x>",
    b"Digest",
    b'Digest username="alice"',
    b'Digest realm="example.test", nonce="x", response="y", username=""',
    b"SIP/2.0/UDP",
    b"SIP/2.0/TCP [::1]:5060;branch=z9hG4bK;rport",
    b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx",
    b"<sip:192.0.2.1:5060;lr>",
    b"<sip:192.0.2.1;lr>, <sip:198.51.100.1;lr>",
    b"1 REGISTER",
    b"1 INVITE",
    b"2147483648 INVITE",
    b"<sip:alice@example.test>;tag=x",
    b"<sip:bob@example.test>;expires=0",
    b"path, gruu",
    b"\xff\xfe",
    "\u00e9\u4e2d".encode(),
    b"a" * 300,
    b",,,,",
    b";;;;",
    b"<sip:bob@example.test>;q=2",
]


def _seeds(server: FakeServer) -> list[bytes]:
    """Messages the server would meet, some carrying credentials (spent ones for REGISTER, a fresh one for INVITE)."""
    challenge = server.final(register("alice", cseq=10))
    spent = authorization(challenge, "alice", "alice-pw", "REGISTER", "sip:example.test")
    assert server.final(register("alice", cseq=11, authorization=spent)).status == 200
    invite_challenge = server.final(request(call_id="fuzz-invite"))
    fresh = authorization(
        invite_challenge, "alice", "alice-pw", "INVITE", "sip:bob@example.test", header="proxy-authenticate"
    )
    route = "Route: <sip:192.0.2.1:5060;lr>"
    server.clock.advance(33)  # the setup's transactions are over (Timer J/H): limits start from zero
    return [
        register("alice", cseq=12, authorization=spent),
        register("bob", cseq=50, authorization=spent.replace('username="alice"', 'username="bob"')),
        register("bob", addr=BOB_ADDR, cseq=99),
        register("bob", addr=BOB_ADDR, cseq=100)
        .replace(b"Contact: <sip:bob@192.0.2.20:5060>", b"Contact: *")
        .replace(b"Expires: 3600", b"Expires: 0"),
        request(call_id="fuzz-invite", cseq=2, headers=(f"Proxy-Authorization: {fresh}",)),
        request("INVITE", from_="sip:carlos@elsewhere.test"),
        request("ACK", "sip:bob@192.0.2.20:5060", to_tag="b1", headers=(route,)),
        request("BYE", "sip:bob@192.0.2.20:5060", to_tag="b1", headers=(route,)),
        request("CANCEL", call_id="fuzz-invite", cseq=2),
        request("OPTIONS", "sip:example.test", to="sip:example.test"),
        request("MESSAGE", "sip:x@third.test", to="sip:x@third.test"),
        request("SUBSCRIBE", "sip:bob@example.test", headers=("Event: presence", "Expires: 0")),
        (
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-nothing\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa\r\nFrom: <sip:alice@example.test>;tag=a\r\n"
            b"To: <sip:bob@example.test>;tag=b\r\nCall-ID: fuzz-invite\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n"
        ),
        b"\r\n\r\n",
    ]


_ANYWHERE = st.integers(0, 2**20)
"""Positions are drawn independently of the message and taken modulo its length, so that what is drawn
never depends on the seeds' contents (their nonces differ from run to run)."""


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, 4))):
        head, sep, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        op = draw(st.sampled_from(["flip", "truncate", "duplicate", "value", "insert", "delete", "body"]))
        at, to = draw(_ANYWHERE), draw(_ANYWHERE)
        if op == "flip":
            byte = draw(st.integers(0, 255))
            if data:
                at %= len(data)
                data = data[:at] + bytes([byte]) + data[at + 1 :]
            continue
        if op == "truncate":
            data = data[: at % (len(data) + 1)]
            continue
        if op == "body":
            body = draw(st.binary(max_size=200))
        elif op == "duplicate":
            if len(lines) > 1:
                lines.insert(1 + to % len(lines), lines[1 + at % (len(lines) - 1)])
        elif op == "value":
            value = _value(draw)
            if len(lines) > 1:
                at = 1 + at % (len(lines) - 1)
                lines[at] = lines[at].partition(b":")[0] + b": " + value
        elif op == "insert":
            line = draw(st.sampled_from(HEADER_NAMES)) + b": " + _value(draw)
            lines.insert(1 + at % max(1, len(lines)), line)
        elif op == "delete" and len(lines) > 1:
            del lines[1 + at % (len(lines) - 1)]
        data = b"\r\n".join(lines) + (sep or b"\r\n\r\n") + body
    return data


def _value(draw: st.DrawFn) -> bytes:
    return draw(
        st.one_of(
            st.sampled_from(INTERESTING_VALUES),
            st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
        )
    )


class Stream:
    """A TCP connection from one address, on a StringTransport; reopened when the server closed it."""

    def __init__(self, server: FakeServer, addr: tuple[str, int]) -> None:
        self.server = server
        self.addr = addr
        self.factory = SipStreamFactory(server.transport, server.clock)
        self.proto: SipStreamProtocol | None = None

    def feed(self, data: bytes, cuts: list[int]) -> None:
        if self.proto is None or not self.proto.alive:
            peer = IPv4Address("TCP", *self.addr)
            proto = self.factory.buildProtocol(peer)
            if proto is None:
                return
            proto.makeConnection(StringTransport(peerAddress=peer))
            self.proto = proto
        start = 0
        for cut in sorted(set(cuts)) + [len(data)]:
            if cut <= start:
                continue
            self.proto.dataReceived(data[start:cut])
            start = cut
            if not self.proto.alive:
                return


def fuzz_server(**kw: Any) -> tuple[FakeServer, set[tuple[str, str]]]:
    security_fakes._branches = iter(range(1, 10**9))  # the same branches every example
    server = FakeServer(random_bytes=lambda n: b"\x5a" * n, **kw)  # and the same nonces
    server.registrar._log = Logger(namespace="sipproxy.registrar")  # the real logger, so that bugs show
    server.stack.proxy.log = Logger(namespace="sipproxy.proxy")  # type: ignore[union-attr]
    assert server.register("alice", ALICE_ADDR).status == 200
    server.clock.advance(33)
    assert server.register("bob", BOB_ADDR).status == 200
    server.clock.advance(33)
    challenge = server.final(register("carol", addr=CAROL_ADDR), CAROL_ADDR)
    auth = authorization(challenge, "carol", "carol-pw", "REGISTER", "sip:example.test", algorithm="MD5")
    assert server.final(register("carol", addr=CAROL_ADDR, cseq=2, authorization=auth), CAROL_ADDR).status == 200
    server.clock.advance(33)
    before = {(b.aor, b.contact) for b in server.store.all_bindings()}
    assert len(before) == 3
    return server, before


def _run(data: st.DataObject, server: FakeServer) -> None:
    seeds = _seeds(server)
    streams = {addr: Stream(server, addr) for addr in ADDRESSES}
    for _ in range(data.draw(st.integers(1, 5), label="messages")):
        message = data.draw(mutated(seeds), label="message")
        addr = data.draw(st.sampled_from(ADDRESSES), label="from")
        if data.draw(st.booleans(), label="tcp"):
            cuts = data.draw(st.lists(_ANYWHERE, max_size=4), label="cuts")
            streams[addr].feed(message, [cut % (len(message) + 1) for cut in cuts])
        else:
            server.protocol.datagramReceived(message, addr)
        server.clock.advance(data.draw(st.sampled_from([0, 0.1, 0.5, 4, 32]), label="wait"))
    server.clock.advance(64)  # let every transaction time out


def _check(events: list[dict[str, Any]], server: FakeServer, before: set[tuple[str, str]]) -> None:
    bugs = [e for e in events if "log_failure" in e]
    assert not bugs, [(e.get("log_format"), e["log_failure"].getTraceback()) for e in bugs]
    assert not server.store.callback_errors
    for aor, contact in before:
        assert server.store.get(aor, contact) is not None, (aor, contact)


@FUZZ
@given(st.data())
def test_mutated_messages_over_udp_and_tcp_keep_the_stack_and_the_bindings_intact(data: st.DataObject) -> None:
    server, before = fuzz_server(security_settings=security_settings(rate=50, max_failures=3))
    with capturedLogs() as events:
        _run(data, server)
    _check(events, server, before)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_mutated_messages_with_tight_limits(data: st.DataObject) -> None:
    """Rate, size and transaction limits all tripping: still no bug and no lost binding."""
    tight = security_settings(rate=2, burst=6, max_failures=1, max_message_size=700, max_transactions=3)
    server, before = fuzz_server(security_settings=tight)
    with capturedLogs() as events:
        _run(data, server)
    _check(events, server, before)
