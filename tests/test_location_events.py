"""Tests for sipproxy.location.events: every subscriber sees every change, in one order."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipproxy.location import BindingEvent, MemoryLocation

try:
    from tests.location_helpers import ALICE, advance_to, make_binding, recorder
except ImportError:  # pragma: no cover
    from location_helpers import ALICE, advance_to, make_binding, recorder  # type: ignore[no-redef]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryLocation:
    return MemoryLocation(clock)


class TestEvents:
    def test_events_are_emitted_in_order(self, clock: Clock, store: MemoryLocation) -> None:
        events: list[BindingEvent] = []
        store.subscribe(events.append)
        first = make_binding("sip:a@192.0.2.1", expires_at=100)
        second = make_binding("sip:b@192.0.2.2", expires_at=200)
        refreshed = make_binding("sip:a@192.0.2.1", expires_at=300, cseq=2)
        store.update(ALICE, put=[first, second])
        store.update(ALICE, put=[refreshed], remove=["sip:b@192.0.2.2", "sip:unknown@192.0.2.99"])
        advance_to(clock, 300)
        assert events == [
            BindingEvent("added", first, "registered"),
            BindingEvent("added", second, "registered"),
            BindingEvent("refreshed", refreshed, "refreshed"),
            BindingEvent("removed", second, "unregistered"),
            BindingEvent("expired", refreshed, "expired"),
        ]

    def test_unsubscribe_stops_delivery(self, store: MemoryLocation) -> None:
        events: list[BindingEvent] = []
        unsubscribe = store.subscribe(events.append)
        store.update(ALICE, put=[make_binding("sip:a@192.0.2.1")])
        unsubscribe()
        unsubscribe()
        store.update(ALICE, put=[make_binding("sip:b@192.0.2.2")])
        assert [e.binding.contact for e in events] == ["sip:a@192.0.2.1"]

    def test_failing_callback_does_not_break_the_store(self, clock: Clock, store: MemoryLocation) -> None:
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

        store = MemoryLocation(clock, on_callback_error=lambda e, err: reported.append((e.kind, type(err))))
        store.subscribe(divide_by_zero)
        store.update(ALICE, put=[make_binding()])
        assert reported == [("added", ZeroDivisionError)]
        assert len(store.lookup(ALICE)) == 1

    def test_changes_made_by_a_callback_reach_everyone_in_order(self, store: MemoryLocation) -> None:
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
