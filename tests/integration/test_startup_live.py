"""The real ``twistd -n sipproxy`` refuses to start with one line naming the option and its value (issue 13).

Each case runs twistd with one bad option and checks: a non-zero exit, the
line that names the option and the value, and no traceback.  Mistakes in
the command line come after twistd's option list (``UsageError``); what only
the machine can tell (database, addresses, ports) is the only line printed,
and comes before anything listens.  Then the log levels: debug lines only
with ``--debug``.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import LOOPBACK, ROOT, Server, free_port, twistd


def run_twistd(workdir: Path, *args: str) -> tuple[int, str]:
    """``twistd -n sipproxy ARGS`` on loopback ports; its exit status and everything it printed."""
    defaults = {
        "--sip-interface": LOOPBACK,
        "--sip-port": str(free_port()),
        "--web": f"tcp:{free_port()}:interface={LOOPBACK}",
        "--db": str(workdir / "sipproxy.sqlite"),
    }
    given = set(args[::2])
    argv = [arg for option, value in defaults.items() if option not in given for arg in (option, value)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [twistd(), "--nodaemon", "--pidfile=", "sipproxy", *argv, *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout


def refused_by_the_machine(workdir: Path, *args: str) -> str:
    """The one line twistd printed, having exited non-zero before anything listened."""
    status, output = run_twistd(workdir, *args)
    assert status != 0, output
    assert "Traceback" not in output
    [line] = output.strip().splitlines()
    assert line.startswith("sipproxy: --"), line
    return line.removeprefix("sipproxy: ")


def refused_by_the_command_line(workdir: Path, *args: str) -> str:
    """The error line twistd printed after its option list, having exited non-zero."""
    status, output = run_twistd(workdir, *args)
    assert status != 0, output
    assert "Traceback" not in output
    assert "--sip-port=" in output  # twistd's option list comes first
    last = output.strip().splitlines()[-1]
    found = re.match(r"\S*twistd --nodaemon: (--.*)$", last)
    assert found is not None, last
    return found.group(1)


def test_db_in_a_missing_directory(tmp_path: Path) -> None:
    db = tmp_path / "missing" / "sipproxy.sqlite"
    line = refused_by_the_machine(tmp_path, "--db", str(db))
    assert line == f"--db {db}: the directory {tmp_path / 'missing'} does not exist"


def test_db_that_is_a_directory(tmp_path: Path) -> None:
    line = refused_by_the_machine(tmp_path, "--db", str(tmp_path))
    assert line == f"--db {tmp_path}: is a directory, not a file"


def test_db_that_is_not_an_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("not a database\n" * 500)
    line = refused_by_the_machine(tmp_path, "--db", str(db))
    assert line == f"--db {db}: not a usable SQLite database (file is not a database)"


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` unwritable for this process: mode 0400, or for root (who ignores modes) the immutable flag."""
    if os.geteuid() != 0:
        path.chmod(stat.S_IRUSR)
        yield
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without the immutable flag: no file is read-only to us")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_db_that_is_not_writable(tmp_path: Path) -> None:
    """It would open, and fail its first commit: every REGISTER a 500."""
    server = Server(tmp_path, [])
    server.start()  # makes the database
    server.stop()
    with read_only(server.db):
        line = refused_by_the_machine(tmp_path, "--db", str(server.db))
    assert line == f"--db {server.db}: the file is not writable"


def test_web_that_is_no_strports_description(tmp_path: Path) -> None:
    line = refused_by_the_command_line(tmp_path, "--web", "tcp:abc")
    assert line.startswith("--web 'tcp:abc': not a strports description such as tcp:8080:interface=127.0.0.1")


def test_sip_interface_that_is_not_an_address_of_this_host(tmp_path: Path) -> None:
    port = free_port()
    line = refused_by_the_machine(tmp_path, "--sip-interface", "192.0.2.55", "--sip-port", str(port))
    assert line == f"--sip-interface 192.0.2.55: UDP 192.0.2.55:{port} is not an address of this host"


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_sip_port_in_use_stops_start_up_before_the_web_page_listens(tmp_path: Path, transport: str) -> None:
    port, web_port = free_port(), free_port()
    kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as other:
        other.bind((LOOPBACK, port))
        if transport == "TCP":
            other.listen(1)
        status, output = run_twistd(tmp_path, "--sip-port", str(port), "--web", f"tcp:{web_port}:interface={LOOPBACK}")
    assert status != 0 and "Traceback" not in output
    [line] = output.strip().splitlines()  # nothing else ran: no "Site starting", no "Bindings page on"
    assert line.startswith(f"sipproxy: --sip-port {port}: {transport} {LOOPBACK}:{port} is already in use")


def test_web_port_in_use(tmp_path: Path) -> None:
    web_port = free_port()
    with socket.socket() as other:
        other.bind((LOOPBACK, web_port))
        other.listen(1)
        description = f"tcp:{web_port}:interface={LOOPBACK}"
        line = refused_by_the_machine(tmp_path, "--web", description)
    assert line == f"--web {description}: TCP {LOOPBACK}:{web_port} is already in use"


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_users_file_that_cannot_be_read(tmp_path: Path, kind: str) -> None:
    users = tmp_path / "users.txt"
    if kind == "directory":
        users.mkdir()
    line = refused_by_the_command_line(tmp_path, "--users", str(users))
    reason = "No such file or directory" if kind == "missing" else "Is a directory"
    assert line == f"--users {users}: cannot read it: {reason}"


def test_the_default_log_has_no_debug_lines_and_debug_adds_them(tmp_path: Path) -> None:
    """'Full garbage collection' (at start, then every 10 minutes) and the event streams are debug (issue 13)."""

    def log_of(*extra: str) -> str:
        workdir = tmp_path / ("debug" if extra else "default")
        workdir.mkdir()
        server = Server(workdir, list(extra))
        server.start()
        try:
            connection = http.client.HTTPConnection(LOOPBACK, server.web_port, timeout=5)
            connection.request("GET", "/api/events")
            response = connection.getresponse()
            assert response.status == 200
            assert response.fp.readline()  # the stream is open: its first event has begun
            connection.close()
        finally:
            server.stop()
        return server.log_text()

    default = log_of()
    assert "sipproxy ready" in default and "Restored 0 bindings" in default  # info lines are there
    assert "#debug]" not in default
    assert "Full garbage collection" not in default and "Event stream opened" not in default
    debug = log_of("--debug")
    assert "Full garbage collection" in debug and "Event stream opened" in debug
