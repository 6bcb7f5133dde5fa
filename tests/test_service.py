"""Service-level behaviour that needs no sockets: what the operator reads in the log."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from twisted.logger import LogLevel, capturedLogs


def _service(db: str, *extra: str):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    from sipproxy.service import build_service
    from sipproxy.tap import Options

    options = Options()
    options.parseOptions(["--db", db, "--sip-interface", "127.0.0.1", "--web", "tcp:0:interface=127.0.0.1", *extra])
    return build_service(options, reactor)  # builds only: sockets are bound when the service starts


def test_dialogs_and_the_secret_survive_a_restart_with_the_database(tmp_path: Path) -> None:
    """Record-Route dialog tokens made before a restart still hold after it (the secret is in --db)."""
    db = str(tmp_path / "sipproxy.sqlite")
    first = _service(db)
    token = first.core.security.dialog_token("call-1@192.0.2.7")
    first.core.store.close()
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600  # the secret is in it: private from the start

    second = _service(db)
    assert second.core.security.dialog_token("call-1@192.0.2.7") == token
    second.core.store.close()
    in_memory = _service(":memory:")
    assert in_memory.core.security.dialog_token("call-1@192.0.2.7") != token


def test_udp_sockets_ask_for_a_large_receive_buffer() -> None:
    """Bursts must queue, not drop: each lost datagram costs the phone a 500 ms retransmission."""
    import socket

    from sipproxy.service import UDP_RECEIVE_BUFFER, _bound_socket

    with open("/proc/sys/net/core/rmem_max") as f:
        allowed = int(f.read())
    sock = _bound_socket(socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", 0)
    try:
        # Linux doubles the value asked for (bookkeeping overhead) and caps the request at rmem_max.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * min(UDP_RECEIVE_BUFFER, allowed)
    finally:
        sock.close()


def test_a_receive_buffer_capped_by_the_kernel_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from sipproxy import service

    with open("/proc/sys/net/core/rmem_max") as f:
        allowed = int(f.read())
    monkeypatch.setattr(service, "UDP_RECEIVE_BUFFER", allowed * 2)
    sock = service._bound_socket(socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", 0)
    try:
        with capturedLogs() as events:
            service._report_receive_buffer(sock)
    finally:
        sock.close()
    [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
    assert warning["granted"] == allowed and "net.core.rmem_max" in warning["log_format"]


def test_overload_protection_is_off_unless_asked_for() -> None:
    from sipproxy.security import ReactorLag

    assert _service(":memory:").core.security.guard.lagging() is None
    guard = _service(":memory:", "--overload-lag", "0.2").core.security.guard
    assert isinstance(guard.lagging, ReactorLag) and guard.lagging.threshold == 0.2


def test_the_log_says_which_sip_parser_runs(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An operator can tell from the start-up log whether pip built the C accelerator."""
    from sipproxy.message import _accel

    def parser_lines() -> list[tuple[LogLevel, str]]:
        with capturedLogs() as events:
            _service(":memory:").core.store.close()
        return [(e["log_level"], e["log_format"]) for e in events if e["log_format"].startswith("SIP parser")]

    assert _accel.parse is not None  # built here (tests/test_message_speedups.py holds to that)
    [(level, text)] = parser_lines()
    assert level == LogLevel.info and "C accelerator" in text
    monkeypatch.setattr(_accel, "parse", None)
    [(level, text)] = parser_lines()
    assert level == LogLevel.warn and "pure Python" in text
