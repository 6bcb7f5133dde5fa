"""What reaches the log observers: info and above; with --debug, sipproxy's debug events too."""

from __future__ import annotations

from typing import Any

from twisted.logger import LogEvent, Logger, LogPublisher

from sipproxy.loglevel import LogLevels


class Reactor:
    """Records the system event triggers, and fires them on ``shutdown()``."""

    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, Any]] = []

    def addSystemEventTrigger(self, phase: str, event: str, call: Any) -> None:
        self.triggers.append((phase, event, call))

    def shutdown(self) -> None:
        for phase in ("before", "during", "after"):
            for when, event, call in self.triggers:
                if (when, event) == (phase, "shutdown"):
                    call()


def emit_all(publisher: LogPublisher) -> None:
    sipproxy = Logger(namespace="sipproxy.gctune.GarbageCollection", observer=publisher)
    names = Logger(namespace="twisted.names.common.ResolverBase", observer=publisher)
    sipproxy.debug("Full garbage collection")
    sipproxy.info("Registered")
    names.debug("Query of unknown type")
    names.warn("Could not resolve")


def seen(debug: bool, shut_down: bool = False) -> list[str]:
    written: list[LogEvent] = []
    publisher = LogPublisher(written.append)
    reactor = Reactor()
    levels = LogLevels(reactor, debug=debug, publisher=publisher)
    levels.startService()
    levels.stopService()  # the services stop before the reactor closes the connections, which log too
    if shut_down:
        reactor.shutdown()
    emit_all(publisher)
    return [e["log_format"] for e in written]


def test_the_default_level_is_info() -> None:
    assert seen(debug=False) == ["Registered", "Could not resolve"]


def test_debug_adds_sipproxy_debug_events_only() -> None:
    assert seen(debug=True) == ["Full garbage collection", "Registered", "Could not resolve"]


def test_after_the_reactor_shut_down_the_observers_are_as_they_were() -> None:
    assert len(seen(debug=False, shut_down=True)) == 4


def test_events_without_a_level_or_namespace_still_pass() -> None:
    written: list[LogEvent] = []
    publisher = LogPublisher(written.append)
    LogLevels(Reactor(), debug=False, publisher=publisher).startService()
    publisher({"log_format": "hand-made", "log_time": 0.0})
    assert [e["log_format"] for e in written] == ["hand-made"]
