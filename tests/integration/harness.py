"""Helpers for the integration suite: run the real ``twistd -n sipproxy`` on loopback, pick free ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sipproxy.message import Response, parse_message

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
READY = "sipproxy ready"


def free_port() -> int:
    """A port free for both UDP and TCP on loopback."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def twistd() -> str:
    """The ``twistd`` script of the Python running the tests."""
    beside = Path(sys.executable).parent / "twistd"
    return str(beside) if beside.exists() else require("twistd")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; the README's test command installs it")
    return path


class Server:
    """One ``twistd -n sipproxy`` process; can be stopped, killed and started again on the same ports and file."""

    def __init__(self, workdir: Path, extra: list[str]) -> None:
        self.workdir = workdir
        self.sip_port = free_port()
        self.web_port = free_port()
        self.extra = extra
        self.interface = LOOPBACK
        self.db = workdir / "sipproxy.sqlite"
        self.log_path = workdir / "twistd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def args(self) -> list[str]:
        return [
            "sipproxy",
            "--sip-interface",
            self.interface,
            "--sip-port",
            str(self.sip_port),
            "--web",
            f"tcp:{self.web_port}:interface={LOOPBACK}",
            "--db",
            str(self.db),
            "--domain",
            "example.test",
            "--domain",
            LOOPBACK,
            *self.extra,
        ]

    def start(self) -> None:
        self.starts += 1
        mark = self.log_text().count(READY)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [twistd(), "--nodaemon", "--pidfile=", f"--logfile={self.log_path}", *self.args],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.log_text().count(READY) > mark:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sipproxy did not start:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def metrics(server: Server) -> dict[str, float]:
    """The server's ``/metrics``, each sample by its name and labels as written (``name{label="v"}``)."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{server.web_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def sip_options(port: int, *, transport: str = "udp", extra_headers: str = "", call_id: str = "opt-1") -> bytes:
    return (
        f"OPTIONS sip:{LOOPBACK}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {LOOPBACK}:9;branch=z9hG4bK-{call_id};rport\r\n"
        f"From: <sip:tester@{LOOPBACK}>;tag=t1\r\n"
        f"To: <sip:{LOOPBACK}>\r\n"
        f"Call-ID: {call_id}@test\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        f"{extra_headers}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def users_file(directory: Path, users: list[str], name: str = "users.csv") -> Path:
    path = directory / name
    path.write_text("SEQUENTIAL\n" + "".join(f"{u};\n" for u in users))
    return path


def sipp(
    scenario: str,
    server_port: int,
    *,
    workdir: Path,
    calls: int,
    rate: int = 200,
    transport: str = "udp",
    inf: Path | None = None,
    keys: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run one sipp UAC scenario to completion against the server on loopback."""
    args = [
        require("sipp"),
        f"{LOOPBACK}:{server_port}",
        "-sf",
        str(SCENARIOS / scenario),
        "-i",
        LOOPBACK,
        "-p",
        str(free_port()),
        "-t",
        "u1" if transport == "udp" else "t1",
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-nostdin",
        "-timeout",
        f"{int(timeout)}s",
        "-timeout_error",
        "-max_socket",
        "100",
        "-trace_err",
        "-error_file",
        str(workdir / f"sipp-{Path(scenario).name}-errors.log"),
    ]
    if inf is not None:
        args += ["-inf", str(inf)]
    for key, value in (keys or {}).items():
        args += ["-key", key, value]
    return subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=timeout + 30)


def register_query(port: int, user: str, domain: str = "example.test", transport: str = "udp") -> list[str]:
    """A REGISTER without Contact (§10.2.3): the Contact values the registrar holds for the AOR."""

    branch = f"z9hG4bK-q{user}{time.monotonic_ns()}"
    request = (
        f"REGISTER sip:{domain} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {LOOPBACK}:9;branch={branch};rport\r\n"
        f"From: <sip:{user}@{domain}>;tag=q\r\n"
        f"To: <sip:{user}@{domain}>\r\n"
        f"Call-ID: {branch}@query\r\n"
        "CSeq: 1 REGISTER\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    response = udp_final(port, request, timeout=3)
    assert response.status == 200, response
    return response.get_all("contact")


def final_response(sock: socket.socket) -> Response:
    """Read from ``sock`` until a final response arrives (provisional ones are skipped)."""
    while True:
        message = parse_message(sock.recvfrom(65535)[0])
        assert isinstance(message, Response)
        if message.status >= 200:
            return message


def udp_final(port: int, data: bytes, timeout: float = 5.0) -> Response:
    """Send ``data`` to the server's UDP port from a fresh socket; its final response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (LOOPBACK, port))
        return final_response(s)


def passwd_file(path: Path, passwords: dict[str, str], realm: str) -> Path:
    """A users file written with the operator's command (``sipproxy-passwd``, here as ``python -m``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for user, password in passwords.items():
        subprocess.run(
            [sys.executable, "-m", "sipproxy.auth.passwd", str(path), user, realm, "--password", password],
            check=True,
            capture_output=True,
            env=env,
            timeout=30,
        )
    return path
