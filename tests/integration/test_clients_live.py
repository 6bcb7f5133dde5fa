"""Real softphones against the real ``twistd -n sipproxy --users FILE`` on loopback.

baresip 1.0 (Debian ``baresip-core``, driven through its ``ctrl_tcp`` module)
and pjsua2 2.15 (PyPI ``pjsua2-python``, run as a child process of this
module) register with a password, call each other and sipp through the proxy,
and hang up.  Each is set up exactly as README's "Pointing a softphone at it"
says: the domain in the account, the proxy as outbound proxy, user and
password.

sipp 3.6 answers only the first ``WWW-Authenticate`` / ``Proxy-Authenticate``
and knows only MD5, baresip 1.0 fails on any SHA-256 challenge, pjsua2 takes
SHA-256 when it is on top.  The tests run the server as an operator would,
without ``--digest-algorithms``: a new phone is offered MD5 alone, SHA-256
first at a later REGISTER (``sipproxy.security.challenges``).
"""

from __future__ import annotations

import json
import os
import platform
import queue
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LOOPBACK, ROOT, SCENARIOS, Server, free_port, passwd_file, require

DOMAIN = "example.test"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "dave": "dave-secret", "erin": "erin-secret"}
WAIT = 20.0  # seconds any one step may take before the test gives up
PJSUA2_WHEELS = sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info < (3, 13)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return passwd_file(tmp_path / "users.txt", PASSWORDS, DOMAIN)


def free_port_pair() -> int:
    """A port p with p and p + 1 free for UDP and TCP (baresip opens TLS on p + 1; RTP and RTCP)."""
    for _ in range(50):
        port = free_port()
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            ):
                tcp.bind((LOOPBACK, port + 1))
                udp.bind((LOOPBACK, port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


def bindings(server: Server, user: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"aor": f"sip:{user}@{DOMAIN}"})
    with urllib.request.urlopen(f"http://{LOOPBACK}:{server.web_port}/api/bindings?{query}", timeout=5) as reply:
        return json.load(reply)["bindings"]  # type: ignore[no-any-return]


def wait_for_binding(server: Server, user: str, port: int, why: Callable[[], str]) -> dict[str, Any]:
    """The binding of ``user`` whose contact is on ``port``, once the phone has registered it."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = [b for b in bindings(server, user) if f"@{LOOPBACK}:{port}" in b["contact"]]
        if found:
            return found[0]
        time.sleep(0.05)
    pytest.fail(f"{user} never registered from port {port}:\n{why()}\n--- server log ---\n{server.log_text()[-3000:]}")


# -- baresip -------------------------------------------------------------------------------


class Baresip:
    """baresip 1.0 with a config directory (``-f DIR``), no sound card, commands and events over ``ctrl_tcp``."""

    def __init__(self, workdir: Path, user: str, server: Server, *, answer: bool = False) -> None:
        self.user = user
        self.dir = workdir / f"baresip-{user}"
        self.dir.mkdir()
        self.sip_port = free_port_pair()
        self.ctrl_port = free_port()
        (self.dir / "config").write_text(
            f"sip_listen\t\t{LOOPBACK}:{self.sip_port}\n"
            f"net_interface\t\t{LOOPBACK}\n"  # the address put in Contact and SDP
            "audio_player\t\taubridge,nil\naudio_source\t\taubridge,nil\naudio_alert\t\taubridge,nil\n"
            "module_path\t\t/usr/lib/baresip/modules\n"
            "module\t\t\tg711.so\nmodule\t\t\taubridge.so\nmodule_tmp\t\taccount.so\n"
            "module_app\t\tmenu.so\nmodule_app\t\tctrl_tcp.so\n"
            f"ctrl_tcp_listen\t\t{LOOPBACK}:{self.ctrl_port}\n"
        )
        account = f'<sip:{user}@{DOMAIN}>;auth_pass={PASSWORDS[user]};outbound="sip:{LOOPBACK}:{server.sip_port}"'
        (self.dir / "accounts").write_text(account + (";answermode=auto" if answer else "") + "\n")
        self.log = self.dir / "baresip.log"
        self.messages: list[dict[str, Any]] = []
        self._buffer = b""
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [require("baresip"), "-f", str(self.dir)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.ctrl = self._connect()

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                return socket.create_connection((LOOPBACK, self.ctrl_port), timeout=1)
            except OSError:
                time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        pytest.fail(f"baresip did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def command(self, name: str, params: str = "") -> None:
        body = json.dumps({"command": name, "params": params, "token": name}).encode()
        self.ctrl.sendall(b"%d:%s," % (len(body), body))

    def wait_event(self, kind: str) -> dict[str, Any]:
        """The first event of this type (CALL_ESTABLISHED, CALL_CLOSED, ...) baresip sent since it started."""
        deadline = time.monotonic() + WAIT
        while True:
            for message in self.messages:
                if message.get("type") == kind:
                    self.messages.remove(message)
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"baresip {self.user}: no {kind} event; got {self.messages}\n{self.output()}")
            self._read(remaining)

    def _read(self, timeout: float) -> None:
        length, colon, rest = self._buffer.partition(b":")
        if colon and len(rest) > int(length):  # netstring: LENGTH ":" JSON ","
            self.messages.append(json.loads(rest[: int(length)]))
            self._buffer = rest[int(length) + 1 :]
            return
        self.ctrl.settimeout(timeout)
        try:
            chunk = self.ctrl.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            pytest.fail(f"baresip {self.user} closed its control connection:\n{self.output()}")
        self._buffer += chunk

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("quit")  # unregisters, then exits
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.ctrl.close()


@pytest.fixture
def baresip(tmp_path: Path) -> Iterator[Callable[..., Baresip]]:
    phones: list[Baresip] = []

    def start(user: str, server: Server, *, answer: bool = False) -> Baresip:
        phone = Baresip(tmp_path, user, server, answer=answer)
        phones.append(phone)
        return phone

    yield start
    for phone in phones:
        phone.stop()


def baresip_calls_baresip(server: Server, baresip: Callable[..., Baresip]) -> None:
    bob = baresip("bob", server, answer=True)
    alice = baresip("alice", server)
    wait_for_binding(server, "bob", bob.sip_port, bob.output)
    wait_for_binding(server, "alice", alice.sip_port, alice.output)
    alice.command("dial", f"sip:bob@{DOMAIN}")
    assert alice.wait_event("CALL_ESTABLISHED")["peeruri"] == f"sip:bob@{DOMAIN}"
    assert bob.wait_event("CALL_ESTABLISHED")["peeruri"] == f"sip:alice@{DOMAIN}"
    alice.command("hangup")
    alice.wait_event("CALL_CLOSED")
    assert bob.wait_event("CALL_CLOSED")["param"] == "Connection reset by peer"  # the BYE reached bob


def test_baresip_registers_and_calls_baresip_under_the_default_options(server_factory, users, baresip) -> None:  # type: ignore[no-untyped-def]
    """baresip 1.0 fails on any SHA-256 challenge; a new phone gets MD5 alone and registers at once (issue 13 item 1)."""
    server = server_factory("--users", str(users))
    baresip_calls_baresip(server, baresip)


def test_baresip_registers_and_calls_baresip_with_md5(server_factory, users, baresip) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users), "--digest-algorithms", "MD5")
    baresip_calls_baresip(server, baresip)


def test_baresip_answers_a_call_from_sipp(server_factory, users, baresip) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users), "--digest-algorithms", "MD5")  # sipp 3.6: MD5 only
    bob = baresip("bob", server, answer=True)
    binding = wait_for_binding(server, "bob", bob.sip_port, bob.output)
    assert binding["user_agent"].startswith("baresip")
    keys = {"domain": DOMAIN, "caller": "alice", "callee": "bob"}
    caller = subprocess.run(
        [
            require("sipp"),
            f"{LOOPBACK}:{server.sip_port}",
            *("-sf", str(SCENARIOS / "auth_call.xml"), "-i", LOOPBACK, "-p", str(free_port())),
            *("-au", "alice", "-ap", PASSWORDS["alice"], "-m", "1", "-d", "300"),
            *[arg for key, value in keys.items() for arg in ("-key", key, value)],
            *("-nostdin", "-timeout", "30s", "-timeout_error", "-trace_err"),
            *("-error_file", str(server.workdir / "sipp-call-errors.log")),
        ],
        cwd=server.workdir,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert caller.returncode == 0, caller.stdout[-3000:] + bob.output()
    assert bob.wait_event("CALL_ESTABLISHED")["peeruri"] == f"sip:alice@{DOMAIN}"
    assert bob.wait_event("CALL_CLOSED")["param"] == "Connection reset by peer"  # sipp's BYE


# -- pjsua2 --------------------------------------------------------------------------------


def pjsua2_phone(user: str, password: str, server_port: int, sip_port: int, rtp_port: int, log: str) -> None:
    """Child process: one pjsua2 account; commands on stdin (call URI, hangup, register, quit), events on stdout."""
    import pjsua2 as pj

    def say(line: str) -> None:
        print(line, flush=True)

    class Call(pj.Call):  # type: ignore[misc]
        def onCallState(self, prm: Any) -> None:  # pjsua2 names its callbacks in camelCase
            info = self.getInfo()
            say(f"CALL {info.stateText} {info.lastStatusCode}")

    class Account(pj.Account):  # type: ignore[misc]
        def onRegState(self, prm: Any) -> None:
            say(f"REG {prm.code}")

        def onIncomingCall(self, prm: Any) -> None:
            calls.append(Call(self, prm.callId))
            answer = pj.CallOpParam()
            answer.statusCode = 200
            calls[-1].answer(answer)

    class LogFile(pj.LogWriter):  # type: ignore[misc]
        """pjsua2's log, flushed line by line (its own log file is written at exit)."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.file = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - open until exit

        def write(self, entry: Any) -> None:
            self.file.write(entry.msg)
            self.file.flush()

    calls: list[Any] = []
    writer = LogFile(log)
    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0  # callbacks run inside libHandleEvents, on this thread
    config.uaConfig.mainThreadOnly = True
    config.logConfig.writer = writer
    config.logConfig.level = 5
    config.logConfig.consoleLevel = 5  # what goes to the writer
    endpoint.libInit(config)
    transport = pj.TransportConfig()
    transport.port = sip_port
    transport.boundAddress = transport.publicAddress = LOOPBACK
    endpoint.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    endpoint.libStart()
    endpoint.audDevManager().setNullDev()  # no sound card
    account_config = pj.AccountConfig()
    account_config.idUri = f"sip:{user}@{DOMAIN}"
    account_config.regConfig.registrarUri = f"sip:{DOMAIN}"
    account_config.sipConfig.proxies.append(f"sip:{LOOPBACK}:{server_port};lr")  # the outbound proxy
    account_config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
    account_config.mediaConfig.transportConfig.port = rtp_port
    account_config.mediaConfig.transportConfig.boundAddress = LOOPBACK
    account = Account()
    account.create(account_config)
    pending = b""
    while True:
        endpoint.libHandleEvents(20)
        if b"\n" not in pending:
            if select.select([0], [], [], 0)[0]:
                pending += os.read(0, 4096) or b"quit\n"
            continue
        line, _, pending = pending.partition(b"\n")
        command, _, argument = line.decode().strip().partition(" ")
        if command == "call":
            calls.append(Call(account))
            calls[-1].makeCall(argument, pj.CallOpParam(True))
        elif command == "hangup":
            calls[-1].hangup(pj.CallOpParam())
        elif command == "register":  # refresh the registration now
            account.setRegistration(True)
        else:
            break
    account.shutdown()  # unregisters
    for _ in range(25):
        endpoint.libHandleEvents(20)
    endpoint.libDestroy()


class Pjsua2:
    """The parent's handle on a :func:`pjsua2_phone` child."""

    def __init__(self, workdir: Path, user: str, server: Server) -> None:
        self.user = user
        self.sip_port = free_port()
        self.log = workdir / f"pjsua2-{user}.log"
        args = [user, PASSWORDS[user], str(server.sip_port), str(self.sip_port), str(free_port_pair()), str(self.log)]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "pjsua2", *args],
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip())

    def output(self) -> str:
        return (
            "\n".join(self.lines) + "\n" + (self.log.read_text(errors="replace")[-4000:] if self.log.exists() else "")
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")

    def wait_line(self, prefix: str) -> str:
        """The next line from the child that starts with ``prefix`` (earlier ones are kept for the failure message)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        pytest.fail(f"pjsua2 {self.user}: no {prefix!r}:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pjsua2(tmp_path: Path) -> Iterator[Callable[[str, Server], Pjsua2]]:
    try:
        import pjsua2 as _  # noqa: F401
    except ImportError:
        if PJSUA2_WHEELS:
            pytest.fail("pjsua2 is not installed; the README's test command installs it (pjsua2-python)")
        pytest.skip("pjsua2-python has wheels for Linux x86_64, Python 3.11 and 3.12 only")
    phones: list[Pjsua2] = []

    def start(user: str, server: Server) -> Pjsua2:
        phone = Pjsua2(tmp_path, user, server)
        phones.append(phone)
        return phone

    yield start
    for phone in phones:
        phone.stop()


def _sent_algorithms(log: Path) -> list[str]:
    """The algorithms of the Authorization headers pjsua2 sent (its log has what it received too)."""
    return re.findall(r"^Authorization: Digest .*?algorithm=([A-Z0-9-]+)", log.read_text(), re.MULTILINE)


def test_pjsua2_registers_moves_to_sha256_and_calls_pjsua2_under_the_default_options(
    server_factory, users, pjsua2
) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users), "--nonce-lifetime", "1")
    dave, erin = pjsua2("dave", server), pjsua2("erin", server)
    assert dave.wait_line("REG ") == "REG 200" and erin.wait_line("REG ") == "REG 200"
    wait_for_binding(server, "erin", erin.sip_port, erin.output)
    assert _sent_algorithms(dave.log) == ["MD5"]  # a new phone is offered MD5 alone
    time.sleep(1.5)  # the nonce goes stale: the refresh gets a new challenge, SHA-256 on top
    dave.send("register")
    assert dave.wait_line("REG ") == "REG 200"
    assert _sent_algorithms(dave.log)[-1] == "SHA-256"
    dave.send(f"call sip:erin@{DOMAIN}")
    assert dave.wait_line("CALL CONFIRMED") and erin.wait_line("CALL CONFIRMED")
    dave.send("hangup")
    assert dave.wait_line("CALL DISCONNECTED") and erin.wait_line("CALL DISCONNECTED")


def test_pjsua2_and_baresip_call_each_other(server_factory, users, pjsua2, baresip) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--users", str(users))
    dave = pjsua2("dave", server)
    bob = baresip("bob", server, answer=True)
    assert dave.wait_line("REG ") == "REG 200"
    wait_for_binding(server, "bob", bob.sip_port, bob.output)
    dave.send(f"call sip:bob@{DOMAIN}")
    dave.wait_line("CALL CONFIRMED")
    assert bob.wait_event("CALL_ESTABLISHED")["peeruri"] == f"sip:dave@{DOMAIN}"
    dave.send("hangup")
    dave.wait_line("CALL DISCONNECTED")
    bob.wait_event("CALL_CLOSED")

    bob.command("dial", f"sip:dave@{DOMAIN}")  # and back: pjsua2 answers
    assert dave.wait_line("CALL CONFIRMED")
    bob.wait_event("CALL_ESTABLISHED")
    bob.command("hangup")
    bob.wait_event("CALL_CLOSED")
    dave.wait_line("CALL DISCONNECTED")


if __name__ == "__main__" and sys.argv[1:2] == ["pjsua2"]:
    user, password, server_port, sip_port, rtp_port, log = sys.argv[2:]
    pjsua2_phone(user, password, int(server_port), int(sip_port), int(rtp_port), log)
