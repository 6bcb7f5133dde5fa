"""Tests for sipproxy.location.commit: one commit per reactor turn, durability waiters, reload after a loss."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from sipproxy.location import Binding, LocationStore, SQLitePersistence
from sipproxy.location.commit import GroupCommit

try:
    from tests.fakes import CommitFailsPersistence
    from tests.location_helpers import ALICE, BOB, BatchLostPersistence, make_binding, on_disk, reasons, recorder
except ImportError:  # pragma: no cover
    from fakes import CommitFailsPersistence  # type: ignore[no-redef]
    from location_helpers import (  # type: ignore[no-redef]
        ALICE,
        BOB,
        BatchLostPersistence,
        make_binding,
        on_disk,
        reasons,
        recorder,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "bindings.sqlite")


class TestGroupCommit:
    def test_changes_of_one_turn_are_committed_together_when_the_turn_ends(self, clock: Clock, db_path: str) -> None:
        store = LocationStore(clock, SQLitePersistence(db_path))
        told: list[tuple[str, bool]] = []
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        store.when_durable(lambda ok: told.append(("alice", ok)))
        store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB)])
        store.when_durable(lambda ok: told.append(("bob", ok)))

        assert on_disk(db_path) == []  # not yet durable: nobody has been told it is
        assert told == []
        clock.advance(0)
        assert on_disk(db_path) == ["sip:a@192.0.2.1", "sip:bob@192.0.2.9"]
        assert told == [("alice", True), ("bob", True)]
        store.close()

    def test_a_full_batch_is_committed_before_the_next_change_joins(self, clock: Clock, db_path: str) -> None:
        store = LocationStore(clock, SQLitePersistence(db_path), max_batch=3)
        told: list[str] = []
        for n in range(4):
            contact = f"sip:a{n}@192.0.2.1"
            store.update(ALICE, put=[make_binding(contact)])
            store.when_durable(lambda ok, contact=contact: told.append(contact))
        assert told == [f"sip:a{n}@192.0.2.1" for n in range(3)]
        assert on_disk(db_path) == told
        clock.advance(0)
        assert len(told) == 4 and len(on_disk(db_path)) == 4
        store.close()

    def test_when_durable_with_nothing_pending_answers_at_once(self, clock: Clock, db_path: str) -> None:
        told: list[bool] = []
        LocationStore(clock).when_durable(told.append)
        store = LocationStore(clock, SQLitePersistence(db_path))
        store.when_durable(told.append)
        assert told == [True, True]
        store.close()

    def test_close_commits_the_open_batch(self, clock: Clock, db_path: str) -> None:
        store = LocationStore(clock, SQLitePersistence(db_path))
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        store.close()
        assert on_disk(db_path) == ["sip:a@192.0.2.1"]

    def test_failed_commit_reloads_the_database_and_tells_the_waiters(self, clock: Clock, db_path: str) -> None:
        persistence = CommitFailsPersistence(db_path)
        store = LocationStore(clock, persistence)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", cseq=1)])
        clock.advance(0)
        seen = recorder(store)
        told: list[bool] = []

        persistence.broken = True
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", cseq=2), make_binding("sip:b@192.0.2.2")])
        store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB)])
        store.when_durable(told.append)
        clock.advance(0)

        assert told == [False] and store.last_commit_failed
        assert store.all_bindings() == persistence.load() == [make_binding("sip:a@192.0.2.1", cseq=1)]
        assert seen[-3:] == [
            ("removed", "sip:b@192.0.2.2"),
            ("removed", "sip:bob@192.0.2.9"),
            ("refreshed", "sip:a@192.0.2.1"),
        ]
        persistence.broken = False
        store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB)])
        store.when_durable(told.append)
        clock.advance(0)
        assert told == [False, True] and not store.last_commit_failed
        assert on_disk(db_path) == ["sip:a@192.0.2.1", "sip:bob@192.0.2.9"]
        # one expiry timer, for the reloaded bindings' deadline
        assert sorted(c.getTime() for c in clock.getDelayedCalls()) == [3600.0]
        store.close()

    def test_write_error_that_loses_the_batch_loses_it_in_memory_too(self, clock: Clock, db_path: str) -> None:
        persistence = BatchLostPersistence(db_path)
        store = LocationStore(clock, persistence)
        told: list[bool] = []
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        store.when_durable(told.append)
        persistence.broken = True
        with pytest.raises(sqlite3.OperationalError):
            store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB)])
        assert told == [False]
        assert store.all_bindings() == []
        persistence.broken = False
        clock.advance(0)
        assert on_disk(db_path) == []
        store.close()

    def test_a_refused_write_leaves_the_rest_of_its_batch(self, clock: Clock, db_path: str) -> None:
        with sqlite3.connect(db_path) as setup:
            SQLitePersistence(db_path).close()
            setup.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON bindings WHEN NEW.contact LIKE 'sip:refused@%' "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        setup.close()
        store = LocationStore(clock, SQLitePersistence(db_path))
        told: list[bool] = []
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        with pytest.raises(sqlite3.DatabaseError, match="refused"):
            store.update(
                BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB), make_binding("sip:refused@192.0.2.3", aor=BOB)]
            )
        store.when_durable(told.append)
        clock.advance(0)
        assert told == [True]
        assert on_disk(db_path) == ["sip:a@192.0.2.1"]
        assert [b.contact for b in store.all_bindings()] == ["sip:a@192.0.2.1"]
        store.close()

    def test_memory_lost_with_a_failed_commit_says_why(self, clock: Clock, db_path: str) -> None:
        persistence = CommitFailsPersistence(db_path)
        store = LocationStore(clock, persistence)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        clock.advance(0)
        seen = reasons(store)
        persistence.broken = True
        store.update(ALICE, put=[make_binding("sip:b@192.0.2.2")], remove=["sip:a@192.0.2.1"])
        clock.advance(0)
        assert seen == [
            ("added", "registered", "sip:b@192.0.2.2"),
            ("removed", "unregistered", "sip:a@192.0.2.1"),
            ("removed", "reloaded", "sip:b@192.0.2.2"),
            ("added", "reloaded", "sip:a@192.0.2.1"),
        ]
        store.close()


class Journal:
    """A journal in a dict, batches as a list of pending writes: any storage with batches fits the seam."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Binding] = {}
        self.pending: list[tuple[Sequence[Binding], Sequence[tuple[str, str]]]] | None = None
        self.commits = 0
        self.fail = False

    def load(self) -> list[Binding]:
        return list(self.rows.values())

    def write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None:
        assert self.pending is not None
        self.pending.append((put, remove))

    @property
    def in_batch(self) -> bool:
        return self.pending is not None

    def begin(self) -> None:
        self.pending = []

    def commit(self) -> None:
        pending, self.pending = self.pending or [], None
        if self.fail:
            raise OSError("gone")
        for put, remove in pending:
            for key in remove:
                self.rows.pop(key, None)
            self.rows.update({(b.aor, b.contact): b for b in put})
        self.commits += 1

    def rollback(self) -> None:
        self.pending = None

    def close(self) -> None:
        pass


def test_group_commit_over_any_journal() -> None:
    clock = Clock()
    journal = Journal()
    reloaded: list[list[Binding]] = []
    commit = GroupCommit(clock, journal, reloaded.append, max_batch=2)
    told: list[bool] = []
    for n in range(3):
        commit.write([make_binding(f"sip:a{n}@192.0.2.1")], [])
        commit.when_durable(told.append)
    assert (journal.commits, told) == (1, [True, True])  # the full batch of two went first
    clock.advance(0)
    assert (journal.commits, told, len(journal.rows)) == (2, [True, True, True], 3)

    journal.fail = True
    commit.write([], [(ALICE, "sip:a0@192.0.2.1")])
    commit.when_durable(told.append)
    clock.advance(0)
    assert told[-1] is False and commit.last_commit_failed
    assert [len(held) for held in reloaded] == [3]  # the owner is handed what the journal still holds
