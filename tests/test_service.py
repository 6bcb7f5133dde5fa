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

    monkeypatch.setattr(_accel, "parse", _accel.parse or (lambda data: None))  # as if built, built or not
    [(level, text)] = parser_lines()
    assert level == LogLevel.info and "C accelerator" in text
    monkeypatch.setattr(_accel, "parse", None)
    [(level, text)] = parser_lines()
    assert level == LogLevel.warn and "pure Python" in text


def test_a_database_that_cannot_be_opened_stops_the_build(tmp_path: Path) -> None:
    from sipproxy.service import StartupError

    with pytest.raises(StartupError, match=r"^--db .*: the directory .* does not exist"):
        _service(str(tmp_path / "missing" / "sipproxy.sqlite"))


def test_services_start_in_the_order_the_server_needs() -> None:
    """Log filter first, bindings restored before SIP is served, the page after, the collector frozen last."""
    from sipproxy.gctune import GarbageCollection
    from sipproxy.loglevel import LogLevels
    from sipproxy.service import StoreService
    from sipproxy.startup import WebListener
    from sipproxy.transport import SipListeners

    service = _service(":memory:", "--overload-lag", "0.2")
    kinds = [type(child) for child in service]
    service.core.store.close()
    assert kinds[:3] == [LogLevels, StoreService, SipListeners]
    assert kinds[-2:] == [WebListener, GarbageCollection]
    assert service.listeners in service and service.web in service


def test_debug_lets_sipproxy_debug_events_through() -> None:
    from twisted.logger import LogLevel

    from sipproxy.loglevel import LogLevels

    def level(*extra: str) -> object:
        service = _service(":memory:", *extra)
        service.core.store.close()
        [levels] = [child for child in service if isinstance(child, LogLevels)]
        return levels.levels.logLevelForNamespace("sipproxy.gctune.GarbageCollection")

    assert level() == LogLevel.info
    assert level("--debug") == LogLevel.debug
