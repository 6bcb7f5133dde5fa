"""Tests for sipproxy.location.log: one info line per registration change, saying why a binding went.

The reasons come from real REGISTERs through the real registrar and parser:
what the operator reads is what the phone did.
"""

from __future__ import annotations

import dataclasses

from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from sipproxy.location import Binding, LocationStore, MemoryLocation
from sipproxy.location.log import BindingLog
from sipproxy.message import Request
from sipproxy.net import Source
from sipproxy.registrar import Registrar, RegistrarSettings

try:
    from tests.messages import make_request, parse_request
except ImportError:  # pragma: no cover
    from messages import make_request, parse_request  # type: ignore[no-redef]

ALICE = "sip:alice@example.test"
PHONE = "sip:alice@192.0.2.7:5062"
INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'


def binding(expires_at: float) -> Binding:
    return Binding(
        aor="sip:alice@example.test",
        contact="sip:alice@192.0.2.7:5062",
        call_id="c1",
        cseq=1,
        expires_at=expires_at,
        source_host="192.0.2.7",
        source_port=5062,
    )


def test_registration_and_expiry_are_logged_at_info() -> None:
    clock = Clock()
    clock.advance(1000)
    store = LocationStore(clock)
    store.subscribe(BindingLog(clock))
    with capturedLogs() as events:
        store.update("sip:alice@example.test", put=[binding(1060)])
        clock.advance(60)
    info = [e for e in events if e["log_level"] == LogLevel.info]
    assert [e["log_format"].split(" ")[0] for e in info] == ["Registered", "Binding"]
    assert info[0]["expires"] == 60 and info[0]["source"] == "UDP 192.0.2.7:5062"
    assert info[1]["kind"] == "expired" and info[1]["contact"] == "sip:alice@192.0.2.7:5062"


def register(*contacts: str, call_id: str = "c1@192.0.2.7", cseq: int = 1, expires: int | None = None) -> Request:
    return parse_request(
        make_request(
            "REGISTER",
            "sip:example.test",
            via=f"SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK{cseq}",
            from_=f"<{ALICE}>;tag=1",
            to=f"<{ALICE}>",
            call_id=call_id,
            cseq=f"{cseq} REGISTER",
            extra=(*(f"Contact: {c}" for c in contacts), *([f"Expires: {expires}"] if expires is not None else [])),
        )
    )


class Phone:
    """A registrar over an in-memory store with the binding log on, and what it logged at info."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryLocation(self.clock)
        self.store.subscribe(BindingLog(self.clock))
        self.registrar = Registrar(self.store, self.clock, RegistrarSettings(domains=frozenset({"example.test"})))

    def send(self, request: Request) -> list[str]:
        """The info lines one REGISTER logs, formatted."""
        with capturedLogs() as events:
            response = self.registrar.handle(request, Source("UDP", "192.0.2.7", 5062))
        assert response.status == 200, response
        return lines(events)


def lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]


def test_unregistering_with_expires_0_says_the_phone_did_it() -> None:
    phone = Phone()
    assert phone.send(register(f"<{PHONE}>")) == [f"Registered {ALICE} -> {PHONE} for 3600 s from UDP 192.0.2.7:5062"]
    assert phone.send(register(f"<{PHONE}>;expires=0", cseq=2)) == [
        f"Binding removed: {ALICE} -> {PHONE} (unregistered by the phone)"
    ]


def test_contact_star_says_the_phone_did_it() -> None:
    phone = Phone()
    phone.send(register(f"<{PHONE}>", "<sip:alice@192.0.2.8:5060>"))
    assert phone.send(register("*", cseq=2, expires=0)) == [
        f"Binding removed: {ALICE} -> {PHONE} (unregistered by the phone)",
        f"Binding removed: {ALICE} -> sip:alice@192.0.2.8:5060 (unregistered by the phone)",
    ]


def test_same_instance_from_a_new_port_says_replaced() -> None:
    """RFC 5626 §6: a phone back from a reboot behind a new NAT port replaces its old binding."""
    phone = Phone()
    phone.send(register(f"<{PHONE}>;+sip.instance={INSTANCE};reg-id=1"))
    new = "sip:alice@192.0.2.7:6000"
    assert phone.send(register(f"<{new}>;+sip.instance={INSTANCE};reg-id=1", call_id="c2@192.0.2.7")) == [
        f"Registered {ALICE} -> {new} for 3600 s from UDP 192.0.2.7:5062",
        f"Binding removed: {ALICE} -> {PHONE} (replaced by the phone's new registration)",
    ]


def test_a_new_call_id_for_the_same_contact_is_a_refresh_at_debug() -> None:
    """§10.3 step 7: another Call-ID for the same contact updates the binding; where the phone is reached has
    not changed, so it is logged as a refresh (some phones take a new Call-ID for every refresh)."""
    phone = Phone()
    phone.send(register(f"<{PHONE}>"))
    assert phone.send(register(f"<{PHONE}>", cseq=2)) == []  # a refresh: debug, and only with --debug
    assert phone.send(register(f"<{PHONE}>", call_id="rebooted@192.0.2.7")) == []
    assert phone.store.lookup(ALICE)[0].call_id == "rebooted@192.0.2.7"


def test_expiry_and_web_removal_say_so() -> None:
    phone = Phone()
    phone.send(register(f"<{PHONE}>;expires=60", "<sip:alice@192.0.2.8:5060>"))
    with capturedLogs() as events:
        phone.clock.advance(60)
        phone.store.remove(ALICE, "sip:alice@192.0.2.8:5060", reason="web")
    assert lines(events) == [
        f"Binding expired: {ALICE} -> {PHONE} (not refreshed in time)",
        f"Binding removed: {ALICE} -> sip:alice@192.0.2.8:5060 (removed through the web page/API)",
    ]
    [removed] = [e for e in events if e.get("reason") == "web"]
    assert removed["kind"] == "removed"  # the reason is a field too, for JSON log observers


def test_refreshes_are_logged_only_with_debug() -> None:
    clock = Clock()
    store = MemoryLocation(clock)
    store.subscribe(BindingLog(clock, refreshes=True))
    store.update(ALICE, put=[binding(3600)])
    with capturedLogs() as events:
        store.update(ALICE, put=[dataclasses.replace(binding(3700), cseq=2)])
    [refreshed] = events
    assert refreshed["log_level"] == LogLevel.debug and refreshed["log_format"].startswith("Refreshed")
