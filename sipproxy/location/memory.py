# -*- test-case-name: tests.test_location_memory -*-
"""The in-memory backend: ``--db :memory:`` and the tests.

The view is all there is: every change is durable as soon as it is made,
``when_durable`` answers at once, and a restart forgets every binding.
"""

from __future__ import annotations

from collections.abc import Callable

from sipproxy.location.interface import BindingEvent
from sipproxy.location.store import LocationStore
from sipproxy.net import Clock

__all__ = ["MemoryLocation"]


class MemoryLocation(LocationStore):
    """A :class:`LocationStore` without a journal."""

    def __init__(
        self, clock: Clock, *, on_callback_error: Callable[[BindingEvent, Exception], None] | None = None
    ) -> None:
        super().__init__(clock, None, on_callback_error=on_callback_error)
