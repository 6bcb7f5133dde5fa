"""Tests for sipproxy.location.memory: the backend of ``--db :memory:`` and the tests."""

from __future__ import annotations

from twisted.internet.task import Clock

from sipproxy.location import MemoryLocation

try:
    from tests.location_helpers import ALICE, make_binding
except ImportError:  # pragma: no cover
    from location_helpers import ALICE, make_binding  # type: ignore[no-redef]


def test_restore_without_persistence() -> None:
    store = MemoryLocation(Clock())
    assert store.restore() == 0


def test_every_change_is_durable_at_once_and_no_commit_is_scheduled() -> None:
    clock = Clock()
    store = MemoryLocation(clock)
    store.update(ALICE, put=[make_binding(expires_at=100)])
    told: list[bool] = []
    store.when_durable(told.append)
    assert told == [True]
    assert [c.getTime() for c in clock.getDelayedCalls()] == [100.0]  # the expiry timer only
    assert store.flush() and not store.last_commit_failed
    assert store.where == "memory"
    store.close()
    assert clock.getDelayedCalls() == []
