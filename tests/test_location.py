"""Tests for sipproxy.location: bindings, the store's index, expiry and SQLite persistence."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock

from sipproxy.location import Binding, BindingEvent, LocationStore, SQLitePersistence
from sipproxy.location.sqlite import SCHEMA_VERSION

try:
    from tests.fakes import CommitFailsPersistence
except ImportError:  # pragma: no cover
    from fakes import CommitFailsPersistence  # type: ignore[no-redef]

ALICE = "sip:alice@example.test"
BOB = "sip:bob@example.test"
REPO = Path(__file__).resolve().parent.parent


def make_binding(
    contact: str = "sip:alice@192.0.2.7:5062",
    *,
    aor: str = ALICE,
    expires_at: float = 3600.0,
    q: float = 1.0,
    refreshed_at: float = 0.0,
    cseq: int = 1,
    **fields: object,
) -> Binding:
    return Binding(
        aor=aor,
        contact=contact,
        call_id="a84b4c76e66710@pc33.example.test",
        cseq=cseq,
        expires_at=expires_at,
        q=q,
        refreshed_at=refreshed_at,
        **fields,  # type: ignore[arg-type]
    )


def advance_to(clock: Clock, when: float) -> None:
    clock.advance(when - clock.seconds())
    assert clock.seconds() == when


def recorder(store: LocationStore) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    store.subscribe(lambda event: seen.append((event.kind, event.binding.contact)))
    return seen


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> LocationStore:
    return LocationStore(clock)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "bindings.sqlite")


class FailingPersistence(SQLitePersistence):
    """A real database whose writes start failing when ``broken`` is set."""

    broken = False

    def write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None:
        if self.broken:
            raise OSError("disk full")
        super().write(put, remove)


class StalledClock:
    """A clock whose timers never run, like a reactor too busy to get to them."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers = Clock()

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> IDelayedCall:
        return self.timers.callLater(delay, callable, *args, **kw)


class TestBinding:
    @pytest.mark.parametrize("q", [-0.1, 1.01, float("nan")])
    def test_q_out_of_range_is_rejected(self, q: float) -> None:
        with pytest.raises(ValueError, match="q"):
            make_binding(q=q)

    @pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
    def test_q_in_range_is_accepted(self, q: float) -> None:
        assert make_binding(q=q).q == q

    @pytest.mark.parametrize(
        "fields",
        [
            {"aor": ""},
            {"contact": ""},
            {"cseq": -1},
            {"cseq": 2**31},
            {"expires_at": float("inf")},
            {"transport": "udp"},
            {"source_port": 65536},
            {"reg_id": 0},
        ],
    )
    def test_impossible_values_are_rejected(self, fields: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            dataclasses.replace(make_binding(), **fields)

    def test_is_frozen_and_path_becomes_a_tuple(self) -> None:
        binding = make_binding(path=["<sip:edge.example.test;lr>"])
        assert binding.path == ("<sip:edge.example.test;lr>",)
        with pytest.raises(dataclasses.FrozenInstanceError):
            binding.q = 0.5  # type: ignore[misc]

    def test_expires_in_rounds_up_while_live(self) -> None:
        binding = make_binding(expires_at=1000.1 + 3600)
        assert binding.expires_in(1000.1) == 3600
        assert binding.expires_in(1000.6) == 3600
        assert binding.expires_in(1001.2) == 3599
        assert binding.expires_in(4600.0) == 1
        assert binding.expires_in(4600.1) == 0
        assert binding.expires_in(5000.0) == 0

    def test_source(self) -> None:
        assert make_binding(source_host="192.0.2.7", source_port=5062).source() == "UDP 192.0.2.7:5062"
        v6 = make_binding(transport="TCP", source_host="2001:db8::1", source_port=5060)
        assert v6.source() == "TCP [2001:db8::1]:5060"
        assert make_binding(transport="TLS").source() == "TLS"


class TestIndex:
    def test_lookup_orders_by_q_then_most_recent_refresh(self, store: LocationStore) -> None:
        store.update(
            ALICE,
            put=[
                make_binding("sip:a@192.0.2.1", q=0.5, refreshed_at=30),
                make_binding("sip:b@192.0.2.2", q=1.0, refreshed_at=10),
                make_binding("sip:c@192.0.2.3", q=0.5, refreshed_at=20),
                make_binding("sip:d@192.0.2.4", q=1.0, refreshed_at=40),
            ],
        )
        assert [b.contact for b in store.lookup(ALICE)] == [
            "sip:d@192.0.2.4",
            "sip:b@192.0.2.2",
            "sip:a@192.0.2.1",
            "sip:c@192.0.2.3",
        ]

    def test_refresh_moves_a_binding_ahead_of_its_peers(self, store: LocationStore) -> None:
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", refreshed_at=1)])
        store.update(ALICE, put=[make_binding("sip:b@192.0.2.2", refreshed_at=2)])
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", refreshed_at=3, cseq=2)])
        assert [b.contact for b in store.lookup(ALICE)] == ["sip:a@192.0.2.1", "sip:b@192.0.2.2"]
        assert store.get(ALICE, "sip:a@192.0.2.1") == make_binding("sip:a@192.0.2.1", refreshed_at=3, cseq=2)

    def test_views_across_aors(self, store: LocationStore) -> None:
        store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB)])
        store.update(
            ALICE,
            put=[make_binding("sip:a@192.0.2.1", q=0.1), make_binding("sip:b@192.0.2.2", q=0.9)],
        )
        assert store.aors() == [ALICE, BOB]
        assert [b.contact for b in store.all_bindings()] == [
            "sip:b@192.0.2.2",
            "sip:a@192.0.2.1",
            "sip:bob@192.0.2.9",
        ]
        assert (store.count(), store.aor_count()) == (3, 2)
        assert store.lookup("sip:nobody@example.test") == []
        assert store.get(BOB, "sip:a@192.0.2.1") is None

    def test_remove_and_remove_aor(self, store: LocationStore) -> None:
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1"), make_binding("sip:b@192.0.2.2")])
        store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB)])
        assert store.remove(BOB, "sip:bob@192.0.2.9") is True
        assert store.remove(BOB, "sip:bob@192.0.2.9") is False
        assert store.aors() == [ALICE]
        assert store.remove_aor(ALICE) == 2
        assert store.remove_aor(ALICE) == 0
        assert (store.aors(), store.count()) == ([], 0)

    def test_put_that_is_already_expired_removes_the_contact(self, clock: Clock, store: LocationStore) -> None:
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=100)])
        seen = recorder(store)
        clock.advance(10)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=10, cseq=2)])
        store.update(ALICE, put=[make_binding("sip:z@192.0.2.26", expires_at=5)])
        assert store.lookup(ALICE) == []
        assert seen == [("removed", "sip:a@192.0.2.1")]
        assert clock.getDelayedCalls() == []

    def test_invalid_update_changes_nothing(self, store: LocationStore) -> None:
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        before = store.all_bindings()
        with pytest.raises(ValueError):
            store.update(ALICE, put=[make_binding("sip:b@192.0.2.2"), make_binding(aor=BOB)])
        with pytest.raises(ValueError):
            store.update(ALICE, put=[make_binding("sip:b@192.0.2.2")], remove=["sip:b@192.0.2.2"])
        assert store.all_bindings() == before

    def test_last_put_of_a_contact_wins(self, store: LocationStore) -> None:
        store.update(ALICE, put=[make_binding(cseq=1), make_binding(cseq=2)])
        assert [b.cseq for b in store.lookup(ALICE)] == [2]


class TestExpiry:
    @pytest.mark.parametrize(
        ("start", "expires_at"),
        [
            (0.0, 3600.0),
            (0.1, 3600.4),
            (1_732_612_345.678, 1_732_615_945.678),
            (90.14274576114836, 249.89091686441233),
        ],
        ids=["zero", "fraction", "wall-clock", "start-plus-delay-rounds-past-deadline"],
    )
    def test_binding_expires_exactly_at_its_deadline(self, start: float, expires_at: float) -> None:
        clock = Clock()
        clock.advance(start)
        store = LocationStore(clock)
        seen = recorder(store)
        store.update(ALICE, put=[make_binding(expires_at=expires_at)])

        advance_to(clock, expires_at - 0.001)
        assert len(store.lookup(ALICE)) == 1
        assert seen == [("added", "sip:alice@192.0.2.7:5062")]

        advance_to(clock, expires_at)
        assert store.lookup(ALICE) == []
        assert store.aors() == []
        assert seen[-1] == ("expired", "sip:alice@192.0.2.7:5062")
        assert clock.getDelayedCalls() == []

    def test_refresh_reschedules_the_timer(self, clock: Clock, store: LocationStore) -> None:
        store.update(ALICE, put=[make_binding(expires_at=100)])
        advance_to(clock, 50)
        store.update(ALICE, put=[make_binding(expires_at=150, cseq=2, refreshed_at=50)])
        assert len(clock.getDelayedCalls()) == 1

        advance_to(clock, 100)
        assert [b.cseq for b in store.lookup(ALICE)] == [2]

        advance_to(clock, 149.999)
        assert len(store.lookup(ALICE)) == 1
        advance_to(clock, 150)
        assert store.lookup(ALICE) == []
        assert clock.getDelayedCalls() == []

    def test_removed_bindings_never_expire_and_no_timer_outlives_the_last(
        self, clock: Clock, store: LocationStore
    ) -> None:
        seen = recorder(store)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1"), make_binding("sip:b@192.0.2.2", expires_at=7000)])
        assert len(clock.getDelayedCalls()) == 1  # one timer for the whole store, at the earliest deadline
        store.remove(ALICE, "sip:a@192.0.2.1")
        clock.advance(3600)
        assert [b.contact for b in store.lookup(ALICE)] == ["sip:b@192.0.2.2"]
        store.remove_aor(ALICE)
        assert clock.getDelayedCalls() == []
        clock.advance(7200)
        assert [kind for kind, _ in seen] == ["added", "added", "removed", "removed"]

    def test_thousands_of_bindings_each_expire_at_their_own_deadline(self, clock: Clock, store: LocationStore) -> None:
        expired: list[tuple[float, str]] = []
        store.subscribe(lambda e: expired.append((clock.seconds(), e.binding.aor)) if e.kind == "expired" else None)
        for n in range(3000):
            aor = f"sip:u{n}@example.test"
            store.update(aor, put=[make_binding(aor=aor, expires_at=100 + (n * 7919) % 3000 + 0.5)])
        assert len(clock.getDelayedCalls()) == 1
        while clock.getDelayedCalls():
            clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        assert len(expired) == 3000
        assert all(when == 100 + (int(aor[5:-13]) * 7919) % 3000 + 0.5 for when, aor in expired)

    def test_refreshing_one_binding_many_times_keeps_the_deadline_heap_small(
        self, clock: Clock, store: LocationStore
    ) -> None:
        for n in range(5000):
            store.update(ALICE, put=[make_binding(expires_at=3600 + n, cseq=n + 1)])
        assert len(store._deadlines) < 2000  # stale deadlines of earlier refreshes are dropped
        advance_to(clock, 3600 + 4998)
        assert len(store.lookup(ALICE)) == 1
        advance_to(clock, 3600 + 4999)
        assert store.lookup(ALICE) == [] and clock.getDelayedCalls() == []

    def test_late_timer_does_not_show_expired_bindings(self) -> None:
        clock = StalledClock()
        store = LocationStore(clock)
        seen = recorder(store)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=100)])
        clock.now = 100.0
        assert (store.lookup(ALICE), store.get(ALICE, "sip:a@192.0.2.1")) == ([], None)
        assert (store.aors(), store.count(), store.all_bindings()) == ([], 0, [])

        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=200, cseq=2)])
        assert seen == [
            ("added", "sip:a@192.0.2.1"),
            ("expired", "sip:a@192.0.2.1"),
            ("added", "sip:a@192.0.2.1"),
        ]
        assert [b.cseq for b in store.lookup(ALICE)] == [2]
        assert len(clock.timers.getDelayedCalls()) == 1

    def test_close_cancels_all_timers(self, clock: Clock, store: LocationStore) -> None:
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB)])
        store.close()
        assert clock.getDelayedCalls() == []
        with pytest.raises(RuntimeError):
            store.update(ALICE, put=[make_binding("sip:c@192.0.2.3")])


class TestEvents:
    def test_events_are_emitted_in_order(self, clock: Clock, store: LocationStore) -> None:
        events: list[BindingEvent] = []
        store.subscribe(events.append)
        first = make_binding("sip:a@192.0.2.1", expires_at=100)
        second = make_binding("sip:b@192.0.2.2", expires_at=200)
        refreshed = make_binding("sip:a@192.0.2.1", expires_at=300, cseq=2)
        store.update(ALICE, put=[first, second])
        store.update(ALICE, put=[refreshed], remove=["sip:b@192.0.2.2", "sip:unknown@192.0.2.99"])
        advance_to(clock, 300)
        assert events == [
            BindingEvent("added", first),
            BindingEvent("added", second),
            BindingEvent("refreshed", refreshed),
            BindingEvent("removed", second),
            BindingEvent("expired", refreshed),
        ]

    def test_unsubscribe_stops_delivery(self, store: LocationStore) -> None:
        events: list[BindingEvent] = []
        unsubscribe = store.subscribe(events.append)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        unsubscribe()
        unsubscribe()
        store.update(ALICE, put=[make_binding("sip:b@192.0.2.2")])
        assert [e.binding.contact for e in events] == ["sip:a@192.0.2.1"]

    def test_failing_callback_does_not_break_the_store(self, clock: Clock, store: LocationStore) -> None:
        def explode(event: BindingEvent) -> None:
            raise RuntimeError("subscriber bug")

        store.subscribe(explode)
        seen = recorder(store)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=10)])
        store.update(ALICE, put=[make_binding("sip:b@192.0.2.2")])
        advance_to(clock, 10)
        assert seen == [
            ("added", "sip:a@192.0.2.1"),
            ("added", "sip:b@192.0.2.2"),
            ("expired", "sip:a@192.0.2.1"),
        ]
        assert [b.contact for b in store.lookup(ALICE)] == ["sip:b@192.0.2.2"]
        assert [(e.kind, str(err)) for e, err in store.callback_errors] == [
            ("added", "subscriber bug"),
            ("added", "subscriber bug"),
            ("expired", "subscriber bug"),
        ]

    def test_callback_errors_go_to_the_given_handler(self, clock: Clock) -> None:
        reported: list[tuple[str, type[Exception]]] = []

        def divide_by_zero(event: BindingEvent) -> None:
            1 / 0  # noqa: B018

        store = LocationStore(clock, on_callback_error=lambda e, err: reported.append((e.kind, type(err))))
        store.subscribe(divide_by_zero)
        store.update(ALICE, put=[make_binding()])
        assert reported == [("added", ZeroDivisionError)]
        assert len(store.lookup(ALICE)) == 1

    def test_changes_made_by_a_callback_reach_everyone_in_order(self, store: LocationStore) -> None:
        def drop_unwanted(event: BindingEvent) -> None:
            if event.kind == "added" and "unwanted" in event.binding.contact:
                store.remove(event.binding.aor, event.binding.contact)

        store.subscribe(drop_unwanted)
        seen = recorder(store)
        store.update(ALICE, put=[make_binding("sip:unwanted@192.0.2.6"), make_binding("sip:a@192.0.2.1")])
        assert seen == [
            ("added", "sip:unwanted@192.0.2.6"),
            ("added", "sip:a@192.0.2.1"),
            ("removed", "sip:unwanted@192.0.2.6"),
        ]
        assert [b.contact for b in store.lookup(ALICE)] == ["sip:a@192.0.2.1"]


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


V1_SCHEMA = """
CREATE TABLE bindings (
    aor TEXT NOT NULL, contact TEXT NOT NULL, call_id TEXT NOT NULL, cseq INTEGER NOT NULL,
    expires_at REAL NOT NULL, q REAL NOT NULL, transport TEXT NOT NULL, source_host TEXT NOT NULL,
    source_port INTEGER NOT NULL, path TEXT NOT NULL, user_agent TEXT NOT NULL, instance TEXT,
    reg_id INTEGER, registered_at REAL NOT NULL, refreshed_at REAL NOT NULL,
    PRIMARY KEY (aor, contact)
)
"""
"""The bindings table as version 1 of the schema made it (a rowid table)."""


class TestPersistence:
    def test_schema(self, db_path: str) -> None:
        SQLitePersistence(db_path).close()
        connection = sqlite3.connect(db_path)
        columns = [row[1] for row in connection.execute("PRAGMA table_info(bindings)")]
        primary_key = [row[1] for row in connection.execute("PRAGMA table_info(bindings)") if row[5]]
        assert columns == [f.name for f in dataclasses.fields(Binding)]
        assert primary_key == ["aor", "contact"]
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        connection.close()

    def test_version_1_database_is_upgraded_keeping_its_bindings(self, db_path: str) -> None:
        old = sqlite3.connect(db_path)
        old.execute(V1_SCHEMA)
        old.execute(
            "INSERT INTO bindings VALUES ('sip:alice@example.test', 'sip:a@192.0.2.1', 'c1', 7, 3600.0, 1.0, "
            "'UDP', '192.0.2.1', 5060, '[\"<sip:edge.example.test;lr>\"]', 'Phone/1', NULL, NULL, 0.0, 0.0)"
        )
        old.execute("PRAGMA user_version=1")
        old.commit()
        old.close()

        upgraded = SQLitePersistence(db_path)
        [binding] = upgraded.load()
        assert (binding.contact, binding.cseq, binding.path) == ("sip:a@192.0.2.1", 7, ("<sip:edge.example.test;lr>",))
        assert upgraded.server_secret(lambda: b"s" * 32) == b"s" * 32
        upgraded.close()
        check = sqlite3.connect(db_path)
        assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        tables = {row[0] for row in check.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"bindings", "server_secret"}
        check.close()

    def test_server_secret_is_made_once_and_kept(self, db_path: str) -> None:
        first = SQLitePersistence(db_path)
        made = first.server_secret(lambda: b"k" * 32)
        assert first.server_secret(lambda: b"other" * 8) == made == b"k" * 32
        first.close()
        again = SQLitePersistence(db_path)
        assert again.server_secret(lambda: b"other" * 8) == made
        again.close()

    def test_newer_schema_is_refused(self, db_path: str) -> None:
        connection = sqlite3.connect(db_path)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        connection.close()
        with pytest.raises(RuntimeError, match="schema version"):
            SQLitePersistence(db_path)

    def test_round_trip_restores_live_bindings_and_drops_expired_ones(self, db_path: str) -> None:
        full = make_binding(
            "sip:alice@192.0.2.7:5062;transport=tcp",
            expires_at=3600.0,
            q=0.7,
            transport="TCP",
            source_host="2001:db8::7",
            source_port=5062,
            path=("<sip:edge1.example.test;lr>", '"Edge 2" <sip:edge2.example.test;lr>'),
            user_agent="Softphone/1.0",
            instance='"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"',
            reg_id=1,
            registered_at=0.0,
            refreshed_at=0.0,
        )
        short = make_binding("sip:alice@192.0.2.8", expires_at=100.0)
        bob = make_binding("sip:bob@192.0.2.9", aor=BOB, expires_at=150.0)
        first = LocationStore(Clock(), SQLitePersistence(db_path))
        first.update(ALICE, put=[full, short])
        first.update(BOB, put=[bob])
        first.close()

        clock = Clock()
        clock.advance(200)
        events: list[BindingEvent] = []
        second = LocationStore(clock, SQLitePersistence(db_path))
        second.subscribe(events.append)
        assert second.restore() == 1
        assert second.all_bindings() == [full]
        assert second.aors() == [ALICE]
        assert second.lookup(ALICE)[0].expires_in(clock.seconds()) == 3400
        assert events == []

        check = SQLitePersistence(db_path)
        assert check.load() == [full]

        assert second.restore() == 1
        assert len(clock.getDelayedCalls()) == 1
        advance_to(clock, 3600)
        assert second.all_bindings() == []
        assert events == [BindingEvent("expired", full)]
        assert check.load() == []
        check.close()
        second.close()

    def test_restore_without_persistence(self, store: LocationStore) -> None:
        assert store.restore() == 0

    def test_expiry_and_removal_reach_the_database(self, clock: Clock, db_path: str) -> None:
        persistence = SQLitePersistence(db_path)
        store = LocationStore(clock, persistence)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=10), make_binding("sip:b@192.0.2.2")])
        store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB)])
        advance_to(clock, 10)
        assert [b.contact for b in persistence.load()] == ["sip:b@192.0.2.2", "sip:bob@192.0.2.9"]
        store.remove_aor(BOB)
        assert [b.contact for b in persistence.load()] == ["sip:b@192.0.2.2"]
        store.close()

    def test_committed_update_survives_the_process_being_killed(self, db_path: str) -> None:
        script = textwrap.dedent(
            f"""
            import os, signal
            from twisted.internet.task import Clock
            from sipproxy.location import Binding, LocationStore, SQLitePersistence

            clock = Clock()
            clock.advance(1000)
            store = LocationStore(clock, SQLitePersistence({db_path!r}))
            store.update({ALICE!r}, put=[Binding(
                aor={ALICE!r}, contact="sip:alice@192.0.2.7:5062", call_id="kill-test",
                cseq=7, expires_at=4600.0, source_host="192.0.2.7", source_port=5062,
            )])
            store.when_durable(lambda committed: print("ok" if committed else "lost", flush=True))
            clock.advance(0)  # the end of the reactor turn commits the batch
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script], check=False, cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert result.stdout == "ok\n", result.stderr
        assert result.returncode == -9

        clock = Clock()
        clock.advance(2000)
        store = LocationStore(clock, SQLitePersistence(db_path))
        assert store.restore() == 1
        (binding,) = store.lookup(ALICE)
        assert (binding.call_id, binding.cseq, binding.source()) == ("kill-test", 7, "UDP 192.0.2.7:5062")
        assert binding.expires_in(clock.seconds()) == 2600
        store.close()


class BatchLostPersistence(SQLitePersistence):
    """A real database where a write error makes SQLite roll the whole open batch back."""

    broken = False

    def write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None:
        if self.broken:
            self.rollback()
            raise sqlite3.OperationalError("disk I/O error")
        super().write(put, remove)


def on_disk(db_path: str) -> list[str]:
    """Contacts another process reading the database sees (committed rows only)."""
    connection = sqlite3.connect(db_path)
    try:
        return [row[0] for row in connection.execute("SELECT contact FROM bindings ORDER BY contact")]
    finally:
        connection.close()


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


class TestCheckpoint:
    def test_checkpoint_in_another_thread_moves_commits_into_the_database_file(
        self, clock: Clock, db_path: str, tmp_path: Path
    ) -> None:
        import shutil
        import threading

        def main_file_only() -> list[str]:
            """What the database file itself holds, without its write-ahead log."""
            copy = tmp_path / "copy.sqlite"
            shutil.copyfile(db_path, copy)
            return on_disk(str(copy))

        SQLitePersistence(db_path).close()  # the schema, checkpointed
        persistence = SQLitePersistence(db_path, autocheckpoint=False)
        store = LocationStore(clock, persistence)
        for n in range(300):
            store.update(ALICE, put=[make_binding(f"sip:a{n:03d}@192.0.2.1")])
            clock.advance(0)
        assert main_file_only() == []  # committed (in the log), not yet checkpointed
        assert len(on_disk(db_path)) == 300

        result: list[tuple[int, int]] = []
        worker = threading.Thread(target=lambda: result.append(persistence.checkpoint()))
        worker.start()
        worker.join(10)
        [(frames, copied)] = result
        assert frames == copied > 0
        assert len(main_file_only()) == 300
        store.close()
