"""Tests for sipproxy.location.index: the view of the bindings, §10.3 step 7 planning and expiry.

Most go through the in-memory backend (what the index does is what every
backend's reads and expiry do); the planning and replacing tests drive the
index directly.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipproxy.location import BindingEvent, BindingIndex, MemoryLocation

try:
    from tests.location_helpers import ALICE, BOB, StalledClock, advance_to, make_binding, recorder
except ImportError:  # pragma: no cover
    from location_helpers import ALICE, BOB, StalledClock, advance_to, make_binding, recorder  # type: ignore[no-redef]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryLocation:
    return MemoryLocation(clock)


class TestIndex:
    def test_lookup_orders_by_q_then_most_recent_refresh(self, store: MemoryLocation) -> None:
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

    def test_refresh_moves_a_binding_ahead_of_its_peers(self, store: MemoryLocation) -> None:
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", refreshed_at=1)])
        store.update(ALICE, put=[make_binding("sip:b@192.0.2.2", refreshed_at=2)])
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", refreshed_at=3, cseq=2)])
        assert [b.contact for b in store.lookup(ALICE)] == ["sip:a@192.0.2.1", "sip:b@192.0.2.2"]
        assert store.get(ALICE, "sip:a@192.0.2.1") == make_binding("sip:a@192.0.2.1", refreshed_at=3, cseq=2)

    def test_views_across_aors(self, store: MemoryLocation) -> None:
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

    def test_remove_and_remove_aor(self, store: MemoryLocation) -> None:
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1"), make_binding("sip:b@192.0.2.2")])
        store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB)])
        assert store.remove(BOB, "sip:bob@192.0.2.9") is True
        assert store.remove(BOB, "sip:bob@192.0.2.9") is False
        assert store.aors() == [ALICE]
        assert store.remove_aor(ALICE) == 2
        assert store.remove_aor(ALICE) == 0
        assert (store.aors(), store.count()) == ([], 0)

    def test_put_that_is_already_expired_removes_the_contact(self, clock: Clock, store: MemoryLocation) -> None:
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=100)])
        seen = recorder(store)
        clock.advance(10)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=10, cseq=2)])
        store.update(ALICE, put=[make_binding("sip:z@192.0.2.26", expires_at=5)])
        assert store.lookup(ALICE) == []
        assert seen == [("removed", "sip:a@192.0.2.1")]
        assert clock.getDelayedCalls() == []

    def test_invalid_update_changes_nothing(self, store: MemoryLocation) -> None:
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        before = store.all_bindings()
        with pytest.raises(ValueError):
            store.update(ALICE, put=[make_binding("sip:b@192.0.2.2"), make_binding(aor=BOB)])
        with pytest.raises(ValueError):
            store.update(ALICE, put=[make_binding("sip:b@192.0.2.2")], remove=["sip:b@192.0.2.2"])
        assert store.all_bindings() == before

    def test_last_put_of_a_contact_wins(self, store: MemoryLocation) -> None:
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
        store = MemoryLocation(clock)
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

    def test_refresh_reschedules_the_timer(self, clock: Clock, store: MemoryLocation) -> None:
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
        self, clock: Clock, store: MemoryLocation
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

    def test_thousands_of_bindings_each_expire_at_their_own_deadline(self, clock: Clock, store: MemoryLocation) -> None:
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
        self, clock: Clock, store: MemoryLocation
    ) -> None:
        for n in range(5000):
            store.update(ALICE, put=[make_binding(expires_at=3600 + n, cseq=n + 1)])
        assert len(store._index._deadlines) < 2000  # stale deadlines of earlier refreshes are dropped
        advance_to(clock, 3600 + 4998)
        assert len(store.lookup(ALICE)) == 1
        advance_to(clock, 3600 + 4999)
        assert store.lookup(ALICE) == [] and clock.getDelayedCalls() == []

    def test_late_timer_does_not_show_expired_bindings(self) -> None:
        clock = StalledClock()
        store = MemoryLocation(clock)
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

    def test_close_cancels_all_timers(self, clock: Clock, store: MemoryLocation) -> None:
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB)])
        store.close()
        assert clock.getDelayedCalls() == []
        with pytest.raises(RuntimeError):
            store.update(ALICE, put=[make_binding("sip:c@192.0.2.3")])


class TestPlan:
    """Why each binding changes, read from the change itself (the events' reasons)."""

    @staticmethod
    def index(clock: Clock, *bindings: object) -> BindingIndex:
        index = BindingIndex(clock, lambda due: None)
        for binding in bindings:
            index.apply(index.plan(ALICE, put=[binding]))  # type: ignore[list-item]
        return index

    def test_plan_changes_nothing_until_applied(self, clock: Clock) -> None:
        index = self.index(clock)
        change = index.plan(ALICE, put=[make_binding()])
        assert index.lookup(ALICE) == [] and clock.getDelayedCalls() == []
        index.apply(change)
        assert index.lookup(ALICE) == [make_binding()]
        assert change.removed_keys() == []

    def test_new_contact_is_registered_and_same_call_id_refreshed(self, clock: Clock) -> None:
        index = self.index(clock)
        [added] = index.plan(ALICE, put=[make_binding()]).events
        assert added == BindingEvent("added", make_binding(), "registered")
        index = self.index(clock, make_binding())
        [refreshed] = index.plan(ALICE, put=[make_binding(cseq=2)]).events
        assert refreshed == BindingEvent("refreshed", make_binding(cseq=2), "refreshed")

    def test_another_call_id_for_the_same_contact_replaces_it(self, clock: Clock) -> None:
        """§10.3 step 7: the phone restarted (new Call-ID): the binding is updated, the log says replaced."""
        index = self.index(clock, make_binding())
        new = make_binding(call_id="after-reboot@192.0.2.7")
        assert index.plan(ALICE, put=[new]).events == [BindingEvent("refreshed", new, "replaced")]

    def test_expires_0_and_wildcard_removals_are_the_phone_unregistering(self, clock: Clock) -> None:
        phone, laptop = make_binding("sip:a@192.0.2.1"), make_binding("sip:b@192.0.2.2")
        index = self.index(clock, phone, laptop)
        expires_0 = index.plan(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=0, cseq=2)])
        assert expires_0.events == [BindingEvent("removed", phone, "unregistered")]
        assert expires_0.removed_keys() == [(ALICE, "sip:a@192.0.2.1")]
        wildcard = index.plan(ALICE, remove=["sip:a@192.0.2.1", "sip:b@192.0.2.2"])
        assert [(e.kind, e.reason) for e in wildcard.events] == [("removed", "unregistered")] * 2

    def test_same_instance_and_reg_id_under_another_uri_replaces(self, clock: Clock) -> None:
        """RFC 5626 §6: the phone came back from another NAT port; its old binding is replaced, not unregistered."""
        instance = "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
        old = make_binding("sip:alice@192.0.2.7:5062", instance=instance, reg_id=1)
        other = make_binding("sip:alice@192.0.2.9:5060", instance=instance, reg_id=2)
        index = self.index(clock, old, other)
        new = make_binding("sip:alice@192.0.2.7:6000", instance=instance, reg_id=1, call_id="new")
        change = index.plan(ALICE, put=[new], remove=[old.contact, other.contact])
        assert change.events == [
            BindingEvent("added", new, "registered"),
            BindingEvent("removed", old, "replaced"),
            BindingEvent("removed", other, "unregistered"),  # another reg-id: a separate registration
        ]

    def test_an_equal_uri_written_another_way_replaces(self, clock: Clock) -> None:
        old = make_binding("sip:alice@192.0.2.7:5062;transport=UDP")
        index = self.index(clock, old)
        new = make_binding("sip:alice@192.0.2.7:5062;transport=udp", cseq=2)
        change = index.plan(ALICE, put=[new], remove=[old.contact])
        assert change.events[-1] == BindingEvent("removed", old, "replaced")

    def test_an_operator_removal_says_so(self, clock: Clock) -> None:
        index = self.index(clock, make_binding())
        change = index.plan(ALICE, remove=[make_binding().contact], removed_as="web")
        assert change.events == [BindingEvent("removed", make_binding(), "web")]

    def test_a_binding_past_its_deadline_expires_in_the_same_change(self) -> None:
        clock = StalledClock()
        index = BindingIndex(clock, lambda due: None)
        index.apply(index.plan(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=10)]))
        clock.now = 10.0
        change = index.plan(ALICE, put=[make_binding("sip:b@192.0.2.2")])
        assert [(e.kind, e.reason, e.binding.contact) for e in change.events] == [
            ("expired", "expired", "sip:a@192.0.2.1"),
            ("added", "registered", "sip:b@192.0.2.2"),
        ]


class TestReplace:
    def test_replace_makes_the_view_what_storage_holds_and_returns_the_difference(self, clock: Clock) -> None:
        kept, changed, gone = (
            make_binding("sip:a@192.0.2.1"),
            make_binding("sip:b@192.0.2.2"),
            make_binding("sip:c@192.0.2.3"),
        )
        index = BindingIndex(clock, lambda due: None)
        index.apply(index.plan(ALICE, put=[kept, changed, gone]))
        older = make_binding("sip:b@192.0.2.2", expires_at=100)
        back = make_binding("sip:bob@192.0.2.9", aor=BOB)
        dead = make_binding("sip:d@192.0.2.4", expires_at=0)
        events = index.replace([kept, older, back, dead])
        assert sorted((e.kind, e.reason, e.binding.contact) for e in events) == [
            ("added", "reloaded", "sip:bob@192.0.2.9"),
            ("refreshed", "reloaded", "sip:b@192.0.2.2"),
            ("removed", "reloaded", "sip:c@192.0.2.3"),
        ]
        assert index.all_bindings() == [kept, older, back]
        assert [c.getTime() for c in clock.getDelayedCalls()] == [100.0]

    def test_the_owner_hears_of_due_bindings_after_they_left_the_view(self, clock: Clock) -> None:
        told: list[tuple[list[str], int]] = []
        index = BindingIndex(clock, lambda due: told.append(([b.contact for b in due], index.count())))
        index.apply(
            index.plan(ALICE, put=[make_binding("sip:a@192.0.2.1", expires_at=10), make_binding("sip:b@192.0.2.2")])
        )
        advance_to(clock, 10)
        assert told == [(["sip:a@192.0.2.1"], 1)]
        index.close()
        assert clock.getDelayedCalls() == [] and index.count() == 1
