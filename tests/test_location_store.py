"""Tests for sipproxy.location.store: the journal decides, the view follows.

A change is written to the journal before the view shows it: a write the
journal refuses leaves the view, its timers and the events as they were.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from sipproxy.location import BindingEvent, LocationStore, SQLitePersistence

try:
    from tests.location_helpers import ALICE, FailingPersistence, advance_to, make_binding, recorder
except ImportError:  # pragma: no cover
    from location_helpers import ALICE, FailingPersistence, advance_to, make_binding, recorder  # type: ignore[no-redef]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "bindings.sqlite")


class TestAtomicity:
    def test_failed_write_leaves_memory_and_timers_unchanged(self, clock: Clock, db_path: str) -> None:
        persistence = FailingPersistence(db_path)
        store = LocationStore(clock, persistence)
        events: list[BindingEvent] = []
        store.subscribe(events.append)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=100)])
        before = (store.all_bindings(), [c.getTime() for c in clock.calls], list(events))

        persistence.broken = True
        with pytest.raises(OSError, match="disk full"):
            store.update(
                ALICE,
                put=[
                    make_binding("sip:a@192.0.2.1", expires_at=500, cseq=2),
                    make_binding("sip:b@192.0.2.2"),
                ],
            )
        with pytest.raises(OSError):
            store.remove_aor(ALICE)

        assert (store.all_bindings(), [c.getTime() for c in clock.calls], events) == before
        assert persistence.load() == before[0]

    def test_failed_delete_on_expiry_still_expires_and_restore_drops_the_row(self, clock: Clock, db_path: str) -> None:
        persistence = FailingPersistence(db_path)
        store = LocationStore(clock, persistence)
        seen = recorder(store)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=10)])
        persistence.broken = True
        with pytest.raises(OSError, match="disk full"):
            advance_to(clock, 10)
        assert (store.lookup(ALICE), seen[-1]) == ([], ("expired", "sip:a@192.0.2.1"))
        assert [b.contact for b in persistence.load()] == ["sip:a@192.0.2.1"]

        persistence.broken = False
        assert store.restore() == 0
        assert persistence.load() == []

    def test_closed_connection_leaves_memory_unchanged(self, clock: Clock, db_path: str) -> None:
        persistence = SQLitePersistence(db_path)
        store = LocationStore(clock, persistence)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        clock.advance(0)  # the turn ends: the batch is committed
        persistence.close()
        with pytest.raises(sqlite3.ProgrammingError):
            store.update(ALICE, put=[make_binding("sip:b@192.0.2.2")], remove=["sip:a@192.0.2.1"])
        assert [b.contact for b in store.lookup(ALICE)] == ["sip:a@192.0.2.1"]
        assert len(clock.getDelayedCalls()) == 1

    def test_failure_inside_the_transaction_rolls_all_of_it_back(self, clock: Clock, db_path: str) -> None:
        persistence = SQLitePersistence(db_path)
        store = LocationStore(clock, persistence)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        clock.advance(0)
        with sqlite3.connect(db_path) as other:
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON bindings WHEN NEW.contact LIKE 'sip:refused@%' "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        other.close()

        with pytest.raises(sqlite3.DatabaseError, match="refused"):
            store.update(
                ALICE,
                put=[make_binding("sip:b@192.0.2.2"), make_binding("sip:refused@192.0.2.3")],
                remove=["sip:a@192.0.2.1"],
            )
        assert [b.contact for b in persistence.load()] == ["sip:a@192.0.2.1"]
        assert [b.contact for b in store.lookup(ALICE)] == ["sip:a@192.0.2.1"]

        store.update(ALICE, put=[make_binding("sip:b@192.0.2.2")])
        assert [b.contact for b in persistence.load()] == ["sip:a@192.0.2.1", "sip:b@192.0.2.2"]
