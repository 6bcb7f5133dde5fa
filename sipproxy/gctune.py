# -*- test-case-name: tests.test_gctune -*-
"""The cyclic garbage collector, tuned for a server that keeps every transaction for 32 s.

Every transaction lives on for Timer J/K (32 s on UDP), so at a few
thousand requests a second the heap holds millions of tracked objects, and
CPython's full collections, triggered whenever the old generation grew by a
quarter, stalled the reactor for hundreds of milliseconds every few seconds
(p99 REGISTER latency 180 ms at 1000/s).  Reference counting frees
transactions (their timers drop their references when they fire; a client
transaction lets go of its branch when it ends, and a response context of
its branches once all have ended, so a proxied call leaves no cycle), so young
collections stay as they are and full collections only run from
:class:`GarbageCollection`, on a timer.  Objects alive after start-up are
frozen out of the collector altogether.
"""

from __future__ import annotations

import gc
import time

from twisted.application.internet import TimerService
from twisted.logger import Logger

__all__ = ["FULL_COLLECTION_INTERVAL", "GarbageCollection", "tune_garbage_collector"]

FULL_COLLECTION_INTERVAL = 600.0
"""Seconds between two full collections: what the automatic ones no longer do."""


def tune_garbage_collector() -> None:
    """Freeze what is alive now and leave full collections to :class:`GarbageCollection`."""
    gc.freeze()
    gc.set_threshold(700, 10, 1_000_000)


class GarbageCollection(TimerService):
    """A full ``gc.collect()`` at start and every ``interval`` seconds, for the rare reference cycle.

    Started last, once the other services have built what lives as long as
    the server: that is then collected once and frozen
    (:func:`tune_garbage_collector`).
    """

    log = Logger()

    def __init__(self, interval: float = FULL_COLLECTION_INTERVAL) -> None:
        super().__init__(interval, self.collect)

    def startService(self) -> None:
        super().startService()  # the first collection runs now
        tune_garbage_collector()

    def collect(self) -> None:
        start = time.perf_counter()
        found = gc.collect()
        self.log.debug(
            "Full garbage collection: {found} unreachable objects in {ms:.1f} ms",
            found=found,
            ms=(time.perf_counter() - start) * 1000,
        )
