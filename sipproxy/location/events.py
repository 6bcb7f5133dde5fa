# -*- test-case-name: tests.test_location_events -*-
"""Delivering the location service's changes to its subscribers, in one order for all of them.

Every backend emits through one :class:`Subscribers`: the changes it made
itself, expiries, and (for a shared backend) the changes other hosts made
that reach it through a change feed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from sipproxy.location.interface import BindingEvent

__all__ = ["Subscribers"]

_ERRORS_KEPT = 100


class Subscribers:
    """The callbacks of :meth:`LocationService.subscribe`, and the events waiting for them."""

    def __init__(self, on_error: Callable[[BindingEvent, Exception], None] | None = None) -> None:
        """A callback that raises is reported to ``on_error``; without one, the latest are kept in ``errors``."""
        self._callbacks: dict[int, Callable[[BindingEvent], None]] = {}
        self._next = 0
        self._pending: deque[BindingEvent] = deque()
        self._emitting = False
        self.errors: deque[tuple[BindingEvent, Exception]] = deque(maxlen=_ERRORS_KEPT)
        self._on_error = on_error or self._keep

    def subscribe(self, callback: Callable[[BindingEvent], None]) -> Callable[[], None]:
        """Call ``callback`` with every event from now on; return a function that stops it.

        Callbacks run synchronously after the change is applied. A callback
        that raises does not affect the store or the other callbacks. Events
        caused from inside a callback are delivered after the current one
        reaches every subscriber, so all subscribers see the same order.
        """
        token = self._next
        self._next += 1
        self._callbacks[token] = callback

        def unsubscribe() -> None:
            self._callbacks.pop(token, None)

        return unsubscribe

    def emit(self, events: Iterable[BindingEvent]) -> None:
        """Deliver ``events`` in order to every subscriber (after the ones still being delivered)."""
        if not self._callbacks and not self._emitting:
            self._pending.clear()  # nobody to tell: what the loop below would do, without the work
            return
        self._pending.extend(events)
        if self._emitting:
            return
        self._emitting = True
        try:
            while self._pending:
                event = self._pending.popleft()
                for callback in list(self._callbacks.values()):
                    try:
                        callback(event)
                    except Exception as error:
                        self._on_error(event, error)
        finally:
            self._emitting = False

    def _keep(self, event: BindingEvent, error: Exception) -> None:
        self.errors.append((event, error))
