"""The binding history (issue 18): the events' mapping, the stores' retention, and REGISTERs that never wait for it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from sipproxy.location import LocationStore, MemoryLocation, SQLiteLocation
from sipproxy.location.history import BindingHistory, HistoryEvent, MemoryHistory
from sipproxy.location.historydb import FLUSH_DELAY, SQLiteHistory
from sipproxy.message import Request
from sipproxy.net import Source
from sipproxy.registrar import Registrar, RegistrarSettings

try:
    from tests.location_helpers import ALICE, BOB, advance_to, make_binding
    from tests.messages import make_request, parse_request
    from tests.security_fakes import FakeServer, register
except ImportError:  # pragma: no cover
    from location_helpers import ALICE, BOB, advance_to, make_binding  # type: ignore[no-redef]
    from messages import make_request, parse_request  # type: ignore[no-redef]
    from security_fakes import FakeServer, register  # type: ignore[no-redef]

PHONE = "sip:alice@192.0.2.7:5062"
DESK = "sip:alice@192.0.2.9:5060"
SOURCE = Source("UDP", "192.0.2.7", 5062)
DAY = 86400.0


def event(at: float, aor: str = ALICE, kind: str = "registered", **fields: object) -> HistoryEvent:
    return HistoryEvent(at, aor, kind, **fields)  # type: ignore[arg-type]


def kinds(events: list[HistoryEvent]) -> list[str]:
    return [e.kind for e in events]


def a_register(expires: int = 3600, contact: str = PHONE, call_id: str = "c1", cseq: int = 1) -> Request:
    return parse_request(
        make_request(
            "REGISTER",
            "sip:example.test",
            via="SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKh1",
            from_=f"<{ALICE}>;tag=1",
            to=f"<{ALICE}>",
            call_id=call_id,
            cseq=f"{cseq} REGISTER",
            extra=[f"Contact: <{contact}>;expires={expires}", "User-Agent: Desk <b>phone</b>"],
        )
    )


def recorded(store: LocationStore, clock: Clock) -> BindingHistory:
    history = BindingHistory(MemoryHistory(clock), clock)
    store.subscribe(history.changed)
    return history


# -- what each change of the location service becomes ---------------------------------


def test_a_registration_says_from_where_with_which_user_agent_and_transport() -> None:
    clock = Clock()
    store = MemoryLocation(clock)
    history = recorded(store, clock)
    clock.advance(100)
    binding = make_binding(
        PHONE, transport="TCP", source_host="192.0.2.7", source_port=5062, user_agent="Phone/1.0", expires_at=3700
    )
    store.update(ALICE, put=[binding])
    [registered] = history.events(ALICE)
    assert (registered.kind, registered.contact, registered.at) == ("registered", PHONE, 100)
    assert registered.source == "TCP 192.0.2.7:5062"
    assert registered.user_agent == "Phone/1.0"


def test_refreshes_from_the_same_place_count_into_one_event_so_the_registration_stays() -> None:
    clock = Clock()
    store = MemoryLocation(clock)
    history = BindingHistory(MemoryHistory(clock, max_per_aor=3), clock)
    store.subscribe(history.changed)
    store.update(ALICE, put=[make_binding(PHONE, cseq=1)])
    for cseq in range(2, 12):
        advance_to(clock, cseq * 60.0)
        store.update(ALICE, put=[make_binding(PHONE, cseq=cseq, refreshed_at=clock.seconds(), expires_at=5000)])
    refreshed, registered = history.events(ALICE)
    assert (refreshed.kind, refreshed.count, refreshed.at, refreshed.last_at) == ("refreshed", 10, 120, 660)
    assert registered.kind == "registered"


def test_unregistered_expired_and_replaced_say_why() -> None:
    clock = Clock()
    store = MemoryLocation(clock)
    history = recorded(store, clock)
    store.update(ALICE, put=[make_binding(PHONE, expires_at=60), make_binding(DESK, expires_at=3600)])
    store.update(ALICE, remove=[DESK])  # Expires: 0 from the phone
    clock.advance(61)
    newest = history.events(ALICE)
    assert kinds(newest) == ["expired", "unregistered", "registered", "registered"]
    assert newest[0].contact == PHONE and "not refreshed" in newest[0].detail
    assert newest[1].contact == DESK and "by the phone" in newest[1].detail

    instance = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    store.update(BOB, put=[make_binding("sip:bob@192.0.2.5:5060", aor=BOB, instance=instance, reg_id=1)])
    store.update(
        BOB,
        put=[make_binding("sip:bob@192.0.2.5:6000", aor=BOB, instance=instance, reg_id=1, call_id="other")],
        remove=["sip:bob@192.0.2.5:5060"],
    )
    replaced = [e for e in history.events(BOB) if e.kind == "replaced"]
    assert [e.contact for e in replaced] == ["sip:bob@192.0.2.5:5060"]
    assert "new registration" in replaced[0].detail


def test_a_removal_through_the_page_names_who_made_it() -> None:
    clock = Clock()
    store = MemoryLocation(clock)
    history = recorded(store, clock)
    store.update(ALICE, put=[make_binding(PHONE), make_binding(DESK)])
    with history.acting("admin from 192.0.2.50"):
        store.remove(ALICE, PHONE, reason="web")
    store.remove(ALICE, DESK, reason="web")  # another node's removal, say: nobody known
    desk, phone = history.events(ALICE)[:2]
    assert (phone.kind, phone.contact, phone.detail) == ("removed", PHONE, "through the page by admin from 192.0.2.50")
    assert (desk.kind, desk.detail) == ("removed", "through the page/API")


def test_a_lost_flow_says_so() -> None:
    clock = Clock()
    store = MemoryLocation(clock)
    history = recorded(store, clock)
    store.update(ALICE, put=[make_binding(PHONE, transport="TCP", source_host="192.0.2.7", source_port=5062)])
    store.remove(ALICE, PHONE, reason="flow-lost")
    lost = history.events(ALICE)[0]
    assert (lost.kind, lost.contact, lost.source) == ("flow-lost", PHONE, "TCP 192.0.2.7:5062")
    assert "connection it registered over closed" in lost.detail


# -- refusals -----------------------------------------------------------------------------


def test_a_too_brief_expires_is_in_the_history_with_the_minimum() -> None:
    clock = Clock()
    store = MemoryLocation(clock)
    history = recorded(store, clock)
    settings = RegistrarSettings(domains=frozenset({"example.test"}), min_expires=60)
    registrar = Registrar(store, clock, settings, on_refused=history.refused)
    response = registrar.handle(a_register(expires=10), SOURCE)
    assert response.status == 423
    [rejected] = history.events(ALICE)
    assert (rejected.kind, rejected.status, rejected.source) == ("rejected", 423, "UDP 192.0.2.7:5062")
    assert rejected.detail == "423 Interval Too Brief (Min-Expires 60)"
    assert rejected.user_agent == "Desk <b>phone</b>"
    assert PHONE in rejected.contact


def test_a_history_hook_that_raises_does_not_change_the_answer() -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    clock = Clock()
    registrar = Registrar(
        MemoryLocation(clock), clock, RegistrarSettings(domains=frozenset({"example.test"})), on_refused=broken
    )
    assert registrar.handle(a_register(expires=10), SOURCE).status == 423


def test_too_many_contacts_is_a_403_in_the_history() -> None:
    clock = Clock()
    store = MemoryLocation(clock)
    history = recorded(store, clock)
    settings = RegistrarSettings(domains=frozenset({"example.test"}), max_contacts=1)
    registrar = Registrar(store, clock, settings, on_refused=history.refused)
    assert registrar.handle(a_register(), SOURCE).status == 200
    assert registrar.handle(a_register(contact=DESK, call_id="c2"), SOURCE).status == 403
    rejected = history.events(ALICE)[0]
    assert (rejected.kind, rejected.detail) == ("rejected", "403 Too many contacts (max 1)")


def _wired(clock: Clock, store: LocationStore) -> BindingHistory:
    history = BindingHistory(MemoryHistory(clock), clock)
    store.subscribe(history.changed)
    return history


def test_a_wrong_password_is_a_401_in_the_history_and_a_plain_challenge_is_not() -> None:
    server = FakeServer(history=_wired)
    assert server.final(register("alice")).status == 401  # the challenge every phone gets first
    assert server.history is not None and server.history.events(ALICE) == []
    assert server.register("alice", password="guess").status == 401
    [rejected] = server.history.events(ALICE)
    assert (rejected.kind, rejected.status) == ("rejected", 401)
    assert rejected.detail == "401 Unauthorized: wrong credentials (user alice: wrong password)"
    assert "guess" not in repr(rejected) and "response=" not in repr(rejected)  # no credentials kept


def test_a_blocked_phone_is_a_403_in_the_history_and_its_registration_then_the_200() -> None:
    server = FakeServer(history=_wired)
    for attempt in range(3):
        server.register("alice", password="guess", cseq=10 * attempt + 1)
    assert server.history is not None
    assert server.history.events(ALICE)[0].detail.startswith("403 Forbidden (blocked)")


# -- the memory store -------------------------------------------------------------------


def test_memory_history_keeps_the_newest_per_aor_and_nothing_older_than_its_age() -> None:
    clock = Clock()
    kept = MemoryHistory(clock, max_age=DAY, max_per_aor=3)
    for second in range(5):
        kept.add(event(float(second), contact=f"sip:{second}@h"))
    assert [e.contact for e in kept.events(ALICE)] == ["sip:4@h", "sip:3@h", "sip:2@h"]
    advance_to(clock, DAY + 3.5)
    assert [e.contact for e in kept.events(ALICE)] == ["sip:4@h"]
    advance_to(clock, DAY + 5)
    assert kept.events(ALICE) == []


def test_memory_history_forgets_the_aor_touched_longest_ago_beyond_its_bound() -> None:
    clock = Clock()
    kept = MemoryHistory(clock, max_aors=2)
    kept.add(event(0, "sip:a@x"))
    kept.add(event(1, "sip:b@x"))
    kept.add(event(2, "sip:a@x"))
    kept.add(event(3, "sip:c@x"))
    assert kept.events("sip:b@x") == []
    assert len(kept.events("sip:a@x")) == 2 and len(kept.events("sip:c@x")) == 1


# -- the SQLite store --------------------------------------------------------------------


def sqlite_history(tmp_path: Path, clock: Clock, **kw: object) -> SQLiteHistory:
    path = str(tmp_path / "sipproxy.sqlite")
    sqlite3.connect(path).close()
    return SQLiteHistory(clock, path, **kw)  # type: ignore[arg-type]


def rows(history: SQLiteHistory) -> int:
    with sqlite3.connect(history.path) as connection:
        return int(connection.execute("SELECT count(*) FROM binding_history").fetchone()[0])


def test_sqlite_history_writes_a_second_later_in_one_go_and_reads_what_is_pending_meanwhile(tmp_path: Path) -> None:
    clock = Clock()
    history = sqlite_history(tmp_path, clock)
    history.add(event(0, contact=PHONE))
    history.add(event(0, BOB))
    assert rows(history) == 0 and len(history.pending) == 2
    clock.advance(FLUSH_DELAY)
    assert rows(history) == 2 and history.pending == []
    [alice] = history.events(ALICE)
    assert (alice.kind, alice.contact) == ("registered", PHONE)


def test_sqlite_history_survives_a_restart_and_folds_refreshes_across_writes(tmp_path: Path) -> None:
    clock = Clock()
    history = sqlite_history(tmp_path, clock)
    history.add(event(0, contact=PHONE, source="UDP 192.0.2.7:5062"))
    for second in (60, 120, 180):
        advance_to(clock, second)
        history.add(event(second, kind="refreshed", contact=PHONE, source="UDP 192.0.2.7:5062"))
        clock.advance(FLUSH_DELAY)
    history.close()
    again = SQLiteHistory(clock, history.path)
    refreshed, registered = again.events(ALICE)
    assert (refreshed.count, refreshed.at, refreshed.last_at) == (3, 60, 180)
    assert registered.kind == "registered"
    assert rows(again) == 2


def test_sqlite_history_retention_by_count_per_aor_by_age_and_in_all(tmp_path: Path) -> None:
    clock = Clock()
    history = sqlite_history(tmp_path, clock, max_age=DAY, max_per_aor=3, max_rows=5)
    for second in range(6):
        history.add(event(float(second), contact=f"sip:{second}@h"))
    history.add(event(5, BOB))
    history.flush()
    assert [e.contact for e in history.events(ALICE)] == ["sip:5@h", "sip:4@h", "sip:3@h"]
    assert rows(history) == 4
    for second in range(6, 9):
        history.add(event(float(second), f"sip:u{second}@x"))
    history.flush()
    assert rows(history) == 5  # the oldest rows went: alice's first
    advance_to(clock, DAY + 6.5)
    history.add(event(clock.seconds(), "sip:late@x"))
    history.flush()
    assert rows(history) == 3  # sip:u7, sip:u8 and the new one
    assert history.events(ALICE) == []


def test_sqlite_history_never_waits_for_the_lock_and_writes_once_it_is_free(tmp_path: Path) -> None:
    clock = Clock()
    history = sqlite_history(tmp_path, clock)
    other = sqlite3.connect(history.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the bindings' batch of this turn
    history.add(event(0))
    clock.advance(FLUSH_DELAY)
    assert len(history.pending) == 1
    other.execute("COMMIT")
    clock.advance(FLUSH_DELAY)
    assert history.pending == [] and rows(history) == 1


def test_values_that_are_not_utf8_are_kept_as_sent(tmp_path: Path) -> None:
    clock = Clock()
    history = sqlite_history(tmp_path, clock)
    history.add(event(0, user_agent="T\udce9l\udce9phone", contact="sip:\udce9@h"))
    history.flush()
    [kept] = SQLiteHistory(clock, history.path).events(ALICE)
    assert kept.user_agent == "T\udce9l\udce9phone" and kept.contact == "sip:\udce9@h"


def test_a_failing_history_write_leaves_the_register_answered_200_and_says_why(tmp_path: Path) -> None:
    clock = Clock()
    path = str(tmp_path / "sipproxy.sqlite")
    store = SQLiteLocation(clock, path)
    store.restore()
    history = BindingHistory(SQLiteHistory(clock, path), clock)
    store.subscribe(history.changed)
    registrar = Registrar(store, clock, RegistrarSettings(domains=frozenset({"example.test"})))
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE binding_history")
    answers: list[int] = []
    with capturedLogs() as logged:
        registrar.answer(a_register(), SOURCE, lambda response: answers.append(response.status))
        clock.advance(0)
        assert answers == [200]
        clock.advance(FLUSH_DELAY)
    [error] = [e for e in logged if e["log_level"] == LogLevel.error]
    assert "registrations are not affected" in error["log_format"] and "no such table" in error["error"]
    assert [e.kind for e in history.events(ALICE)] == ["registered"]  # kept in memory meanwhile
    assert store.lookup(ALICE)[0].contact == PHONE
    store.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_history_is_read_newest_first(tmp_path: Path, kind: str) -> None:
    clock = Clock()
    kept = MemoryHistory(clock) if kind == "memory" else sqlite_history(tmp_path, clock)
    kept.add(event(1, kind="registered"))
    kept.add(event(2, kind="expired"))
    assert kinds(kept.events(ALICE)) == ["expired", "registered"]


class _Connection:
    transport_name, host, port, inbound, alive, idle = "TCP", "192.0.2.7", 5062, True, True, 0.0


def test_wired_a_closed_connection_of_a_flow_bound_binding_is_a_lost_flow() -> None:
    server = FakeServer(users=None, history=_wired)
    instance = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    binding = make_binding(
        PHONE, transport="TCP", source_host="192.0.2.7", source_port=5062, expires_at=1e10, instance=instance, reg_id=1
    )
    assert binding.flow_bound
    server.store.update(ALICE, put=[binding])
    connection = _Connection()
    server.transport.connection_made(connection)  # type: ignore[arg-type]
    server.transport.connection_lost(connection)  # type: ignore[arg-type]
    assert server.history is not None
    assert kinds(server.history.events(ALICE)) == ["flow-lost", "registered"]
    assert server.history.events(ALICE)[0].source == "TCP 192.0.2.7:5062"


# -- the options and the wiring ----------------------------------------------------------


def _built(db: str, *extra: str):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    from sipproxy.service import build_service
    from sipproxy.tap import Options

    options = Options()
    options.parseOptions(["--db", db, "--sip-interface", "127.0.0.1", "--web", "tcp:0:interface=127.0.0.1", *extra])
    return build_service(options, reactor)


def test_the_history_is_in_the_db_file_or_in_memory_bounded_by_the_options(tmp_path: Path) -> None:
    on_disk = _built(str(tmp_path / "sipproxy.sqlite"), "--history-age", "2h", "--history-events", "7")
    history = on_disk.core.history
    assert isinstance(history.store, SQLiteHistory)
    assert (history.store.max_age, history.store.max_per_aor) == (7200, 7)
    history.store.close()
    on_disk.core.store.close()
    in_memory = _built(":memory:")
    assert isinstance(in_memory.core.history.store, MemoryHistory)
    assert (in_memory.core.history.store.max_age, in_memory.core.history.store.max_per_aor) == (7 * DAY, 50)
    assert _built(":memory:", "--history-events", "0").core.history is None


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--history-age", "0"], "--history-age must be a duration"),
        (["--history-age", "1w"], "--history-age must be a duration"),
        (["--history-events", "-1"], "--history-events must be a whole number"),
    ],
)
def test_bad_history_options_are_one_clear_line(args: list[str], error: str) -> None:
    from twisted.python import usage

    from sipproxy.tap import Options

    with pytest.raises(usage.UsageError, match=error):
        Options().parseOptions(args)
