"""The collector tuned for the server: no automatic full collection, one on a timer instead."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from sipproxy.gctune import FULL_COLLECTION_INTERVAL, GarbageCollection


@pytest.fixture
def collector_state() -> Iterator[None]:
    """Put the test process's collector back as it was."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_full_collections_run_on_the_timer_only(collector_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *generation: runs.append(1) or 0)
    service = GarbageCollection()
    service.clock = Clock()
    with capturedLogs() as events:
        service.startService()
        assert len(runs) == 1  # what start-up left behind, once
        assert gc.get_threshold()[2] == 1_000_000 and gc.get_freeze_count() > 0
        service.clock.advance(FULL_COLLECTION_INTERVAL - 1)
        assert len(runs) == 1
        service.clock.advance(1)
        assert len(runs) == 2
        service.stopService()
    # at debug level: only --debug lets them through to the log (sipproxy.loglevel)
    assert [e["log_level"] for e in events] == [LogLevel.debug, LogLevel.debug]
    assert all(e["log_format"].startswith("Full garbage collection") for e in events)
