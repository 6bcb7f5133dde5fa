"""The proxy between real sipp callers and callees, through the real ``twistd -n sipproxy`` on loopback.

Every callee is a sipp UAS in the background, registered first: its
REGISTER is sent from the port the UAS then listens on, as a phone does (a
REGISTER from another address than its Contact counts as NATed, and the
proxy would send the call to that source instead).  Every caller is a sipp
UAC run to completion with the proxy as its remote address.  A sipp exit
code of 0 means every call followed its scenario; the UAS message traces
show what reached the callee (Via, Record-Route, Route, Request-URI).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from harness import LOOPBACK, SCENARIOS, Server, free_port, require

DOMAIN = "example.test"
UAS_TIMEOUT = 30
"""Seconds a background UAS lives at most (sipp ``-timeout``); the tests normally end it much sooner."""


# -- sipp message traces ------------------------------------------------------

_SEPARATOR = re.compile(r"^-{40,} (\d{4}-\d\d-\d\d [\d:.]+)$", re.M)
_DIRECTION = re.compile(r"^(UDP|TCP) message (received|sent)")
_SPLIT = {
    "via": re.compile(r",\s*(?=SIP/)"),
    "record-route": re.compile(r",\s*(?=<)"),
    "route": re.compile(r",\s*(?=<)"),
}


@dataclass
class Traced:
    """One SIP message from a sipp ``-trace_msg`` file."""

    transport: str
    direction: str
    start: str
    time: datetime
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def method(self) -> str | None:
        return None if self.start.startswith("SIP/2.0") else self.start.split()[0]

    @property
    def status(self) -> int | None:
        return int(self.start.split()[1]) if self.start.startswith("SIP/2.0") else None

    @property
    def uri(self) -> str:
        return self.start.split()[1]

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name``, comma lists split for Via, Record-Route and Route."""
        name = name.lower()
        out: list[str] = []
        for key, value in self.headers:
            if key == name:
                splitter = _SPLIT.get(name)
                out.extend(v.strip() for v in (splitter.split(value) if splitter else [value]))
        return out

    def __str__(self) -> str:
        return "\n".join([self.start, *(f"{k}: {v}" for k, v in self.headers)])


def read_trace(path: Path) -> list[Traced]:
    if not path.exists():
        return []
    messages = []
    parts = _SEPARATOR.split(path.read_text(errors="replace"))
    for stamp, chunk in zip(parts[1::2], parts[2::2]):
        lines = chunk.strip("\r\n").splitlines()
        if not lines:
            continue
        match = _DIRECTION.match(lines[0])
        if match is None:
            continue
        rest = [line.rstrip("\r") for line in lines[1:]]
        while rest and not rest[0].strip():
            rest.pop(0)
        if not rest:
            continue
        message = Traced(match.group(1), match.group(2), rest[0], datetime.fromisoformat(stamp))
        for line in rest[1:]:
            if not line.strip():
                break
            name, _, value = line.partition(":")
            message.headers.append((name.strip().lower(), value.strip()))
        messages.append(message)
    return messages


# -- sipp processes -------------------------------------------------------------


class Sipp:
    """One sipp process: a UAS in the background, or a UAC (``remote`` given) run to completion."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        scenario: str,
        *,
        port: int,
        transport: str = "udp",
        remote: int | None = None,
        calls: int = 1,
        keys: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
        timeout: int = UAS_TIMEOUT,
    ) -> None:
        self.name = name
        self.port = port
        self.transport = transport
        self.trace = workdir / f"{name}-messages.log"
        self.errors = workdir / f"{name}-errors.log"
        self.output = workdir / f"{name}.out"
        args = [require("sipp")]
        if remote is not None:
            args.append(f"{LOOPBACK}:{remote}")
        args += [
            "-sf", str(SCENARIOS / scenario),
            "-i", LOOPBACK,
            "-p", str(port),
            "-t", "u1" if transport == "udp" else "t1",
            "-m", str(calls),
            "-r", "10",
            "-nostdin",
            "-timeout", f"{timeout}s",
            "-timeout_error",
            "-trace_msg", "-message_file", str(self.trace),
            "-trace_err", "-error_file", str(self.errors),
            *extra,
        ]  # fmt: skip
        for key, value in (keys or {}).items():
            args += ["-key", key, value]
        self.args = args
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"sipp {self.name} still running after {timeout} s\n{self.report()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def messages(self, direction: str = "received") -> list[Traced]:
        return [m for m in read_trace(self.trace) if m.direction == direction]

    def requests(self, method: str) -> list[Traced]:
        return [m for m in self.messages() if m.method == method]

    def statuses(self, method: str | None = None) -> list[int]:
        """Status codes received, in order; only those of responses to ``method`` when given."""
        return [
            m.status
            for m in self.messages()
            if m.status is not None and (method is None or m.get_all("cseq")[0].split()[-1] == method)
        ]

    def report(self) -> str:
        def tail(path: Path, n: int) -> str:
            return path.read_text(errors="replace")[-n:] if path.exists() else ""

        return (
            f"--- sipp {self.name}: {' '.join(self.args)}\n{tail(self.errors, 3000)}\n"
            f"--- output\n{tail(self.output, 1500)}\n--- messages\n{tail(self.trace, 4000)}"
        )


def _bound(port: int, transport: str) -> bool:
    """Is something bound to ``port`` on loopback (UDP), or listening on it (TCP)? Read from /proc."""
    table = "/proc/net/udp" if transport == "udp" else "/proc/net/tcp"
    wanted = f"0100007F:{port:04X}"
    with open(table) as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[1] == wanted and (transport == "udp" or cols[3] == "0A"):
                return True
    return False


class Peers:
    """The sipp processes of one test, all stopped at teardown."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.workdir = server.workdir
        self.procs: list[Sipp] = []
        self._names: dict[str, int] = {}

    def _name(self, base: str) -> str:
        n = self._names[base] = self._names.get(base, 0) + 1
        return f"{base}{n}"

    def register(
        self, user: str, port: int, transport: str = "udp", *, q: str = "1.0", contact_port: int | None = None
    ) -> None:
        """REGISTER sip:user@example.test -> Contact sip:user@127.0.0.1:<port>, sent from that port."""
        reg = Sipp(
            self.workdir,
            self._name(f"reg-{user}-"),
            "uas_register.xml",
            port=port,
            transport=transport,
            remote=self.server.sip_port,
            keys={
                "user": user,
                "domain": DOMAIN,
                "contact_host": LOOPBACK,
                "contact_port": str(contact_port or port),
                "tp": transport,
                "q": q,
                "expires": "3600",
            },
            timeout=15,
        )
        self.procs.append(reg)
        assert reg.wait(30) == 0, reg.report()
        if transport == "tcp":  # the REGISTER's connection is closed: the call must not race its teardown
            tcp_connection_gone(self.server, port)

    def uas(
        self,
        scenario: str,
        *,
        user: str | None = None,
        transport: str = "udp",
        q: str = "1.0",
        calls: int = 1,
        hold_ms: int = 0,
        keys: dict[str, str] | None = None,
    ) -> Sipp:
        """A callee on a fresh port, registered as ``user`` first (when given), listening when this returns."""
        port = free_port()
        if user is not None:
            self.register(user, port, transport, q=q)
        uas = Sipp(
            self.workdir,
            self._name(f"uas-{user or 'x'}-"),
            scenario,
            port=port,
            transport=transport,
            calls=calls,
            keys=keys,
            extra=("-d", str(hold_ms)),
        )
        self.procs.append(uas)
        deadline = time.monotonic() + 10
        while not _bound(port, transport):
            if uas.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"UAS did not start listening\n{uas.report()}")
            time.sleep(0.02)
        return uas

    def call(
        self,
        scenario: str,
        *,
        transport: str = "udp",
        calls: int = 1,
        hold_ms: int = 100,
        keys: dict[str, str] | None = None,
        timeout: int = 30,
    ) -> Sipp:
        """A caller run to completion (the proxy is its remote address); check ``.proc.returncode``."""
        uac = Sipp(
            self.workdir,
            self._name("uac-"),
            scenario,
            port=free_port(),
            transport=transport,
            remote=self.server.sip_port,
            calls=calls,
            keys={"domain": DOMAIN, **(keys or {})},
            extra=("-d", str(hold_ms), "-recv_timeout", "15000"),
            timeout=timeout,
        )
        self.procs.append(uac)
        uac.wait(timeout + 15)
        return uac

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def tcp_connection_gone(server: Server, peer_port: int, timeout: float = 5) -> None:
    """Wait until the server has closed its side of the TCP connection from ``peer_port`` (read from /proc)."""
    ours, theirs = f"0100007F:{server.sip_port:04X}", f"0100007F:{peer_port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        if not any(r[1] == ours and r[2] == theirs and r[3] != "06" for r in rows):  # 06: TIME_WAIT
            return
        time.sleep(0.02)
    raise AssertionError(f"the server kept its connection from port {peer_port} open")


def assert_no_bugs(server: Server) -> None:
    log = server.log_text()
    assert "Traceback" not in log and "Bug " not in log, log[-4000:]


@pytest.fixture
def peers(server: Server) -> Iterator[Peers]:
    group = Peers(server)
    try:
        yield group
    finally:
        group.stop()
    assert_no_bugs(server)


def finished(uas: Sipp, timeout: float = 15) -> None:
    """The UAS ran all its calls to the end of its scenario."""
    assert uas.wait(timeout) == 0, uas.report()


def succeeded(uac: Sipp) -> None:
    assert uac.proc.returncode == 0, uac.report()


def our_via(server: Server, transport: str) -> re.Pattern[str]:
    return re.compile(rf"SIP/2\.0/{transport.upper()} {re.escape(LOOPBACK)}:{server.sip_port};branch=z9hG4bK\S+$")


def our_record_route(server: Server, transport: str) -> str:
    params = "" if transport == "udp" else f";transport={transport}"
    return f"<sip:{LOOPBACK}:{server.sip_port}{params};lr>"


def final_status(uac: Sipp) -> int:
    finals = [s for s in uac.statuses() if s >= 200]
    assert finals, uac.report()
    return finals[-1]


# -- (a) a basic record-routed call --------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_basic_call_is_record_routed_and_ack_and_bye_go_through_the_proxy(
    server: Server, peers: Peers, transport: str
) -> None:
    bob = peers.uas("uas_answer.xml", user="bob", transport=transport, calls=2)
    uac = peers.call("call_uac.xml", transport=transport, calls=2, keys={"callee": "bob"})
    succeeded(uac)
    finished(bob)

    via = our_via(server, transport)
    rr = our_record_route(server, transport)
    invites, acks, byes = bob.requests("INVITE"), bob.requests("ACK"), bob.requests("BYE")
    assert len(invites) == 2 and len(acks) == 2 and len(byes) == 2, bob.report()
    for invite in invites:
        assert invite.transport == transport.upper()
        assert invite.uri == f"sip:bob@{LOOPBACK}:{bob.port};transport={transport}"
        assert invite.get_all("record-route") == [rr], invite
        vias = invite.get_all("via")
        assert len(vias) == 2 and via.match(vias[0]), invite
        assert invite.get_all("max-forwards") == ["69"]
    for request in acks + byes:  # in-dialog requests along the route set: through us, our Route consumed
        vias = request.get_all("via")
        assert len(vias) == 2 and via.match(vias[0]), request
        assert request.get_all("route") == [], request
        assert request.uri == f"sip:{LOOPBACK}:{bob.port};transport={transport.upper()}", request
    # the caller's 200 carries the same Record-Route, which gave it its route set
    oks = [m for m in uac.messages() if m.status == 200 and "INVITE" in m.get_all("cseq")[0]]
    assert oks and all(m.get_all("record-route") == [rr] for m in oks), uac.report()


def test_tcp_callee_whose_registration_connection_closed_is_reached_at_its_contact(
    server: Server, peers: Peers
) -> None:
    # A TCP phone registers over a connection from an ephemeral port, which then closes; it
    # listens on the port its Contact names.  The call must go there, not to the dead port.
    kate = peers.uas("uas_answer.xml", transport="tcp")
    ephemeral = free_port()
    peers.register("kate", ephemeral, "tcp", contact_port=kate.port)
    tcp_connection_gone(server, ephemeral)
    uac = peers.call("call_uac.xml", transport="tcp", keys={"callee": "kate"})
    succeeded(uac)
    finished(kate)
    assert [m.method for m in kate.messages()] == ["INVITE", "ACK", "BYE"]


def test_tcp_callee_whose_connection_closed_and_whose_contact_is_dead_gets_480(server: Server, peers: Peers) -> None:
    # Issue 13 item 5: a phone registered over TCP, its Contact the port of that connection, which
    # then closes: nothing listens there any more.  The caller gets 480 (not 500), and the log
    # names the address-of-record and the contact.
    ephemeral = free_port()
    peers.register("liam", ephemeral, "tcp")
    uac = peers.call("call_rejected.xml", keys={"callee": "liam", "target": DOMAIN, "max_forwards": "70"})
    succeeded(uac)
    [final] = [m for m in uac.messages() if m.status is not None and m.status >= 200]
    assert final.start == "SIP/2.0 480 Flow to the phone is gone", uac.report()
    [line] = [line for line in server.log_text().splitlines() if "Cannot reach" in line]
    assert f"sip:liam@{DOMAIN}" in line and f"sip:liam@{LOOPBACK}:{ephemeral};transport=tcp" in line, line


# -- (b) nobody registered --------------------------------------------------------------


def test_call_to_an_unregistered_user_gets_480(server: Server, peers: Peers) -> None:
    uac = peers.call("call_rejected.xml", keys={"callee": "nobody", "target": DOMAIN, "max_forwards": "70"})
    succeeded(uac)
    assert final_status(uac) == 480


# -- (c) and (d) forking by q ----------------------------------------------------------


def test_higher_q_contact_busy_then_the_lower_q_contact_answers(server: Server, peers: Peers) -> None:
    first = peers.uas("uas_busy.xml", user="carol", q="1.0", hold_ms=300)
    second = peers.uas("uas_answer.xml", user="carol", q="0.5")
    uac = peers.call("call_uac.xml", keys={"callee": "carol"})
    succeeded(uac)
    finished(first)
    finished(second)

    assert [m.method for m in first.messages()] == ["INVITE", "ACK"]
    assert [m.method for m in second.messages()] == ["INVITE", "ACK", "BYE"]
    # sequential, not parallel: the 0.5 contact got its INVITE only after the 1.0 contact said busy,
    # which it did 300 ms after its INVITE (the two sipp clocks may differ by a few microseconds)
    busy = [m for m in first.messages("sent") if m.status == 486][0]
    assert second.requests("INVITE")[0].time >= busy.time - timedelta(milliseconds=50)
    assert 486 not in uac.statuses() and 200 in uac.statuses()


def test_equal_q_contacts_both_ring_the_first_200_wins_and_the_other_is_cancelled(server: Server, peers: Peers) -> None:
    answers = peers.uas("uas_answer.xml", user="dave", hold_ms=500)
    rings = peers.uas("uas_cancel.xml", user="dave")
    uac = peers.call("call_uac.xml", keys={"callee": "dave"})
    succeeded(uac)
    finished(answers)
    finished(rings)

    assert [m.method for m in answers.messages()] == ["INVITE", "ACK", "BYE"]
    assert [m.method for m in rings.messages()] == ["INVITE", "CANCEL", "ACK"]
    invite, cancel = rings.requests("INVITE")[0], rings.requests("CANCEL")[0]
    assert cancel.get_all("via") == invite.get_all("via")[:1]  # the proxy's own CANCEL, same branch (§9.1)
    assert [s for s in rings.messages("sent") if s.status == 487]
    assert [s for s in uac.statuses("INVITE") if s >= 200] == [200]  # the lost fork's 487 stays with the proxy


# -- (e) 3xx recursion ---------------------------------------------------------------------


def test_302_from_the_callee_is_followed_to_the_new_contact(server: Server, peers: Peers) -> None:
    moved_to = peers.uas("uas_answer.xml")
    moves = peers.uas(
        "uas_redirect.xml", user="erin", keys={"moved_user": "erin-mobile", "moved_port": str(moved_to.port)}
    )
    uac = peers.call("call_uac.xml", keys={"callee": "erin"})
    succeeded(uac)
    finished(moves)
    finished(moved_to)

    assert [m.method for m in moves.messages()] == ["INVITE", "ACK"]
    invite = moved_to.requests("INVITE")[0]
    assert invite.uri == f"sip:erin-mobile@{LOOPBACK}:{moved_to.port}"
    assert invite.get_all("record-route") == [our_record_route(server, "udp")]
    assert [m.method for m in moved_to.messages()] == ["INVITE", "ACK", "BYE"]
    assert 302 not in uac.statuses()


# -- (f) the caller cancels ------------------------------------------------------------------


def test_caller_cancels_while_ringing_callee_sees_cancel_caller_gets_487(server: Server, peers: Peers) -> None:
    frank = peers.uas("uas_cancel.xml", user="frank")
    uac = peers.call("call_cancel.xml", keys={"callee": "frank"})
    succeeded(uac)
    finished(frank)

    assert [m.method for m in frank.messages()] == ["INVITE", "CANCEL", "ACK"]
    assert uac.statuses("CANCEL") == [200] and [s for s in uac.statuses("INVITE") if s >= 200] == [487]


# -- (g) MESSAGE ------------------------------------------------------------------------------------


def test_message_reaches_the_registered_user(server: Server, peers: Peers) -> None:
    grace = peers.uas("uas_message.xml", user="grace")
    uac = peers.call("msg_send.xml", keys={"callee": "grace"})
    succeeded(uac)
    finished(grace)

    message = grace.requests("MESSAGE")[0]
    vias = message.get_all("via")
    assert len(vias) == 2 and our_via(server, "udp").match(vias[0]), message
    assert message.get_all("record-route") == []  # MESSAGE creates no dialog: not record-routed
    assert message.uri == f"sip:grace@{LOOPBACK}:{grace.port};transport=udp"


# -- (h) Max-Forwards and loops -------------------------------------------------------------------


def test_max_forwards_zero_gets_483_and_is_not_forwarded(server: Server, peers: Peers) -> None:
    heidi = peers.uas("uas_answer.xml", user="heidi")
    uac = peers.call("call_rejected.xml", keys={"callee": "heidi", "target": DOMAIN, "max_forwards": "0"})
    succeeded(uac)
    assert final_status(uac) == 483
    time.sleep(0.2)
    assert heidi.messages() == [] and heidi.proc.poll() is None


def test_request_looping_back_to_the_proxy_gets_482(server: Server, peers: Peers) -> None:
    # "localhost" is not one of our domains, so we route it like any other host: it resolves to
    # 127.0.0.1, our own port, and the request comes back unchanged (a loop, not a spiral).
    target = f"localhost:{server.sip_port}"
    uac = peers.call("call_rejected.xml", keys={"callee": "loop", "target": target, "max_forwards": "70"})
    succeeded(uac)
    assert final_status(uac) == 482


# -- (i) nobody answers --------------------------------------------------------------------------------


def test_callee_that_never_answers_is_cancelled_by_timer_c_and_the_caller_gets_a_final_response(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    server = server_factory("--timer-c", "2")
    group = Peers(server)
    try:
        ivan = group.uas("uas_cancel.xml", user="ivan")
        started = time.monotonic()
        uac = group.call("call_rejected.xml", keys={"callee": "ivan", "target": DOMAIN, "max_forwards": "70"})
        elapsed = time.monotonic() - started
        succeeded(uac)
        finished(ivan)
    finally:
        group.stop()
    assert_no_bugs(server)
    assert final_status(uac) in (408, 487)
    assert 180 in uac.statuses()
    assert 1.5 < elapsed < 15
    assert [m.method for m in ivan.messages()] == ["INVITE", "CANCEL", "ACK"]


# -- (j) transport change -------------------------------------------------------------------------------


def test_tcp_caller_udp_callee_gets_a_double_record_route(server: Server, peers: Peers) -> None:
    judy = peers.uas("uas_answer.xml", user="judy", transport="udp")
    uac = peers.call("call_uac.xml", transport="tcp", keys={"callee": "judy"})
    succeeded(uac)
    finished(judy)

    invite = judy.requests("INVITE")[0]
    assert invite.transport == "UDP"
    assert invite.get_all("record-route") == [our_record_route(server, "udp"), our_record_route(server, "tcp")]
    assert our_via(server, "udp").match(invite.get_all("via")[0])
    assert invite.get_all("via")[1].startswith("SIP/2.0/TCP ")
    for request in judy.requests("ACK") + judy.requests("BYE"):
        assert our_via(server, "udp").match(request.get_all("via")[0]), request
        assert request.get_all("route") == [], request
    assert [m.method for m in judy.messages()] == ["INVITE", "ACK", "BYE"]
