"""What reaches the log observers: info and above; with --debug, sipproxy's debug events too."""

from __future__ import annotations

from twisted.logger import LogEvent, Logger, LogPublisher

from sipproxy.loglevel import LogLevels


def emit_all(publisher: LogPublisher) -> None:
    sipproxy = Logger(namespace="sipproxy.gctune.GarbageCollection", observer=publisher)
    names = Logger(namespace="twisted.names.common.ResolverBase", observer=publisher)
    sipproxy.debug("Full garbage collection")
    sipproxy.info("Registered")
    names.debug("Query of unknown type")
    names.warn("Could not resolve")


def seen(debug: bool, running: bool = True) -> list[str]:
    written: list[LogEvent] = []
    publisher = LogPublisher(written.append)
    levels = LogLevels(debug=debug, publisher=publisher)
    levels.startService()
    if not running:
        levels.stopService()
    emit_all(publisher)
    if running:
        levels.stopService()
    return [e["log_format"] for e in written]


def test_the_default_level_is_info() -> None:
    assert seen(debug=False) == ["Registered", "Could not resolve"]


def test_debug_adds_sipproxy_debug_events_only() -> None:
    assert seen(debug=True) == ["Full garbage collection", "Registered", "Could not resolve"]


def test_stopping_puts_the_observers_back_as_they_were() -> None:
    assert len(seen(debug=False, running=False)) == 4


def test_events_without_a_level_or_namespace_still_pass() -> None:
    written: list[LogEvent] = []
    publisher = LogPublisher(written.append)
    LogLevels(debug=False, publisher=publisher).startService()
    publisher({"log_format": "hand-made", "log_time": 0.0})
    assert [e["log_format"] for e in written] == ["hand-made"]
