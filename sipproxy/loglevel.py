# -*- test-case-name: tests.test_loglevel -*-
"""What reaches the log: info and above; with ``--debug``, sipproxy's debug events too.

``twistd`` writes every event it is given, debug included: it has no level
option, and its observer (``--logfile``, ``--syslog`` or ``--logger``) is
made after the plugin has built its service.  So the filter goes in front
of whatever observers the global publisher has once logging has begun, that
is when the service starts, and comes off after the reactor has shut down:
closing the connections at shutdown logs too.  Events from the build itself
(before logging began) are not filtered; none is debug.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
)

__all__ = ["LogLevels", "level_predicate"]


def level_predicate(debug: bool) -> LogLevelFilterPredicate:
    """Info and above for every namespace; debug as well for ``sipproxy.*`` when ``debug``."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    # A line per reconnect attempt to Redis; the location service says what matters (unreachable, back).
    predicate.setLogLevelForNamespace("twisted.application._client_service", LogLevel.warn)
    if debug:
        predicate.setLogLevelForNamespace("sipproxy", LogLevel.debug)
    return predicate


class LogLevels(Service):
    """Puts the level filter in front of every log observer from start until the reactor has shut down."""

    def __init__(self, reactor: Any, debug: bool, publisher: LogPublisher = globalLogPublisher) -> None:
        self.reactor = reactor
        self.levels = level_predicate(debug)
        self.publisher = publisher
        self._wrapped: list[tuple[ILogObserver, ILogObserver]] = []
        """``(filter, observer)`` for each observer wrapped while running."""

    def admits(self, event: LogEvent) -> PredicateResult:
        """The level check; an event without a level or namespace (hand-made ones) passes."""
        if event.get("log_level") is None or not event.get("log_namespace"):
            return PredicateResult.maybe
        return self.levels(event)  # type: ignore[no-any-return]

    def startService(self) -> None:
        super().startService()
        if self._wrapped:
            return  # started again before the reactor shut down: the filter is still there
        # LogPublisher offers no way to list its observers: its list is the one place they are.
        observers: list[ILogObserver] = self.publisher._observers
        for index, observer in enumerate(observers):
            filtered = FilteringLogObserver(observer, [self.admits])
            self._wrapped.append((filtered, observer))
            observers[index] = filtered
        self.reactor.addSystemEventTrigger("after", "shutdown", self.remove)

    def remove(self) -> None:
        """Take the filter off again (twistd then removes its own observer, as it added it)."""
        observers: list[ILogObserver] = self.publisher._observers
        for filtered, observer in self._wrapped:
            for index, current in enumerate(observers):
                if current is filtered:
                    observers[index] = observer
        self._wrapped = []
