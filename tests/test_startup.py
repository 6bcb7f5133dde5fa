"""Start-up checks: each refusal is one line naming the option, its value and what is wrong."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs

from sipproxy.startup import StartupError, WebListener, bind_sip, open_database
from sipproxy.transport import SipListeners, TransportLayer


def test_a_database_in_a_missing_directory_is_named(tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "sipproxy.sqlite"
    with pytest.raises(StartupError) as error:
        open_database(str(db))
    assert str(error.value) == f"--db {db}: the directory {tmp_path / 'nowhere'} does not exist"


def test_a_directory_is_no_database(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=f"^--db {tmp_path}: is a directory"):
        open_database(str(tmp_path))


def test_a_file_that_is_not_sqlite_is_refused_before_it_is_used(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_bytes(b"these are my notes, not a database\n" * 200)
    with pytest.raises(StartupError, match=f"^--db {db}: not a usable SQLite database \\(file is not a database\\)"):
        open_database(str(db))
    assert db.read_bytes().startswith(b"these are my notes")  # left as it was


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


def test_a_read_only_database_is_refused_at_start_not_at_the_first_register(tmp_path: Path) -> None:
    db = tmp_path / "sipproxy.sqlite"
    open_database(str(db)).load()
    with read_only(db), pytest.raises(StartupError, match=f"^--db {db}: the file is not writable"):
        open_database(str(db))


def test_a_good_database_opens_and_a_new_one_is_private(tmp_path: Path) -> None:
    db = tmp_path / "sipproxy.sqlite"
    persistence = open_database(str(db))
    assert persistence.load() == [] and stat.S_IMODE(os.stat(db).st_mode) == 0o600


def sip_listeners(port: int, interface: str = "127.0.0.1") -> SipListeners:
    return SipListeners(MemoryReactor(), TransportLayer(lambda *a: None), port, interface)


def test_a_sip_port_in_use_names_the_option_address_port_and_transport() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", 0))
        port = other.getsockname()[1]
        with pytest.raises(StartupError) as error:
            bind_sip(sip_listeners(port))
    assert str(error.value).startswith(f"--sip-port {port}: UDP 127.0.0.1:{port} is already in use")


def test_an_interface_this_host_does_not_have_names_the_option() -> None:
    with pytest.raises(StartupError) as error:
        bind_sip(sip_listeners(5070, "192.0.2.55"))
    assert str(error.value) == "--sip-interface 192.0.2.55: UDP 192.0.2.55:5070 is not an address of this host"


class Endpoint:
    """An endpoint whose ``listen`` answers with what the test says."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.factories: list[Any] = []

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        self.factories.append(factory)
        return self.result


def web_listener(endpoint: Endpoint, description: str = "tcp:8080:interface=127.0.0.1") -> WebListener:
    web = WebListener(MemoryReactor(), description, object())
    web.endpoint = endpoint  # type: ignore[assignment]
    return web


def test_a_web_port_in_use_names_the_option_and_the_address() -> None:
    refused = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
    web = web_listener(Endpoint(defer.fail(refused)))
    with pytest.raises(StartupError) as error:
        web.listen()
    assert str(error.value).startswith("--web tcp:8080:interface=127.0.0.1: TCP 127.0.0.1:8080 is already in use")


def test_the_web_page_listens_once_when_asked_before_start() -> None:
    class Port:
        stopped = False

        def stopListening(self) -> None:
            self.stopped = True

    port = Port()
    endpoint = Endpoint(defer.succeed(port))
    web = web_listener(endpoint)
    with capturedLogs() as events:
        web.listen()
    assert [e["log_format"] for e in events] == ["Bindings page on {web}"]
    web.startService()  # already listening: not again
    assert len(endpoint.factories) == 1
    web.stopService()
    assert port.stopped and web.port is None


def test_the_real_endpoint_parses_the_description() -> None:
    reactor = MemoryReactor()
    web = WebListener(reactor, "tcp:8080:interface=127.0.0.1", object())
    web.listen()
    [(port, _, _, interface)] = reactor.tcpServers
    assert (port, interface) == (8080, "127.0.0.1")
