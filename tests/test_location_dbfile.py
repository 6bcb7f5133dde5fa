"""The SQLite file deleted (or replaced) under a running server: noticed, reported to health, written back.

Issue "Hardening" item 9: deleting the database file went unnoticed
(``/healthz`` ok) and the next restart lost every binding and the server
secret.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from sipproxy.location import SQLiteLocation, SQLitePersistence
from sipproxy.location.services import WalCheckpointer

try:
    from tests.location_helpers import ALICE, BOB, make_binding, on_disk
except ImportError:  # pragma: no cover
    from location_helpers import ALICE, BOB, make_binding, on_disk  # type: ignore[no-redef]

SECRET = b"s" * 32


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1000)
    return clock


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    directory = tmp_path / "var"
    directory.mkdir()
    return str(directory / "sipproxy.sqlite")


@pytest.fixture
def store(clock: Clock, db_path: str) -> Iterator[SQLiteLocation]:
    """A store as ``twistd sipproxy`` opens it (checkpoints left to a thread), with alice and the secret committed."""
    store = SQLiteLocation(clock, SQLitePersistence(db_path, autocheckpoint=False))
    assert store.persistence.server_secret(lambda: SECRET) == SECRET
    store.update(ALICE, put=[make_binding(expires_at=5000)])
    clock.advance(0)
    yield store
    store.close()


def restarted(clock: Clock, db_path: str) -> tuple[list[str], bytes]:
    """What the next start finds at ``db_path``: the contacts it restores, and the server secret."""
    again = SQLiteLocation(clock, db_path)
    try:
        again.restore()
        return [b.contact for b in again.all_bindings()], again.persistence.server_secret(lambda: b"new" * 8)
    finally:
        again.close()


def lines(events: list[dict[str, object]], level: LogLevel) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] == level]


@pytest.mark.parametrize("files", [("",), ("", "-wal", "-shm")], ids=["the-file", "file-log-and-index"])
def test_a_deleted_file_is_written_back_with_every_binding_and_the_secret(
    clock: Clock, db_path: str, store: SQLiteLocation, files: tuple[str, ...]
) -> None:
    for suffix in files:
        os.remove(db_path + suffix)
    store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB, expires_at=5000)])  # into the deleted file
    clock.advance(0)
    with capturedLogs() as events:
        assert store.persistence.check_file() is None
    assert store.storage_problem is None
    [error] = lines(events, LogLevel.error)
    assert error == f"Location service: the database file {db_path} was deleted while in use"
    [info] = lines(events, LogLevel.info)
    assert info == f"Wrote the database file {db_path}: 2 bindings and the server secret, as last committed"
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600  # it holds the secret
    assert on_disk(db_path) == ["sip:alice@192.0.2.7:5062", "sip:bob@192.0.2.9"]

    store.update(ALICE, put=[make_binding("sip:alice@192.0.2.8", expires_at=5000)])  # into the new file
    clock.advance(0)
    store.close()
    assert restarted(clock, db_path) == (
        ["sip:alice@192.0.2.7:5062", "sip:alice@192.0.2.8", "sip:bob@192.0.2.9"],
        SECRET,
    )
    with sqlite3.connect(db_path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


def test_while_a_batch_is_open_health_fails_and_the_next_check_writes_the_file_back(
    clock: Clock, db_path: str, store: SQLiteLocation
) -> None:
    os.remove(db_path)
    store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB, expires_at=5000)])  # the turn's batch is open
    with capturedLogs() as events:
        assert store.persistence.check_file() == f"the database file {db_path} was deleted while in use"
        assert store.storage_problem == f"the database file {db_path} was deleted while in use"
        assert store.persistence.check_file() is not None
        assert len(lines(events, LogLevel.error)) == 1  # once, not once per check
        clock.advance(0)  # the turn's commit
        assert store.persistence.check_file() is None
    assert store.storage_problem is None
    assert on_disk(db_path) == ["sip:alice@192.0.2.7:5062", "sip:bob@192.0.2.9"]


def test_a_file_that_cannot_be_written_back_keeps_health_failing_until_it_can(
    clock: Clock, db_path: str, store: SQLiteLocation
) -> None:
    directory = os.path.dirname(db_path)
    shutil.rmtree(directory)
    with capturedLogs() as events:
        for _ in range(3):
            assert store.persistence.check_file() == f"the database file {db_path} was deleted while in use"
    errors = lines(events, LogLevel.error)
    assert len(errors) == 2 and errors[1].startswith(f"Writing the database file {db_path} failed (")
    assert store.storage_problem is not None

    os.mkdir(directory)
    assert store.persistence.check_file() is None
    assert store.storage_problem is None
    store.close()
    assert restarted(clock, db_path) == (["sip:alice@192.0.2.7:5062"], SECRET)


def test_a_file_replaced_by_another_is_left_alone_and_health_fails_until_restart(
    clock: Clock, db_path: str, store: SQLiteLocation
) -> None:
    other = db_path + ".backup"
    with sqlite3.connect(other) as backup:
        backup.execute("CREATE TABLE operators_own (x)")
    backup.close()
    os.replace(other, db_path)
    with capturedLogs() as events:
        problem = store.persistence.check_file()
        assert store.persistence.check_file() == problem
    assert problem == (
        f"the database file {db_path} was replaced by another file; sipproxy keeps its bindings and server secret "
        f"in {db_path}.displaced until restarted (then it uses the new file, without them)"
    )
    assert store.storage_problem == problem
    assert len(lines(events, LogLevel.error)) == 1
    with sqlite3.connect(db_path) as still:  # not read through sipproxy's log
        assert still.execute("SELECT name FROM sqlite_master").fetchall() == [("operators_own",)]
    still.close()

    store.update(BOB, put=[make_binding("sip:bob@192.0.2.9", aor=BOB, expires_at=5000)])
    clock.advance(0)
    assert on_disk(db_path + ".displaced") == ["sip:alice@192.0.2.7:5062", "sip:bob@192.0.2.9"]
    store.close()
    with sqlite3.connect(db_path) as still:
        assert still.execute("SELECT name FROM sqlite_master").fetchall() == [("operators_own",)]
    still.close()


def test_close_writes_back_a_file_deleted_since_the_last_check(
    clock: Clock, db_path: str, store: SQLiteLocation
) -> None:
    os.remove(db_path)  # and then a restart, before the next check
    store.close()
    assert restarted(clock, db_path) == (["sip:alice@192.0.2.7:5062"], SECRET)


def test_the_checkpointer_checks_the_file_at_each_tick_between_checkpoints(
    clock: Clock, db_path: str, store: SQLiteLocation
) -> None:
    running: list[Deferred[object]] = []

    def run(call: object) -> Deferred[object]:
        running.append(Deferred())
        return running[-1]

    checkpointer = WalCheckpointer(store.persistence, run=run)
    checkpointer.clock = Clock()
    checkpointer.startService()
    os.remove(db_path)
    checkpointer.clock.advance(1)  # a checkpoint is running: the connections stay where they are
    assert store.storage_problem == f"the database file {db_path} was deleted while in use"
    running[-1].callback((0, 0))
    checkpointer.clock.advance(1)
    assert store.storage_problem is None
    assert on_disk(db_path) == ["sip:alice@192.0.2.7:5062"]
    running[-1].callback((0, 0))
    checkpointer.stopService()


def test_the_checkpointer_keeps_ticking_through_a_check_that_raises(db_path: str) -> None:
    class Broken:
        def check_file(self) -> str | None:
            raise PermissionError("stat")

        def checkpoint(self) -> tuple[int, int]:
            return 0, 0

    checkpointer = WalCheckpointer(Broken(), run=lambda call: succeed(call()))
    checkpointer.clock = Clock()
    with capturedLogs() as events:
        checkpointer.startService()
        checkpointer.clock.advance(1)
        checkpointer.clock.advance(1)
    assert [formatEvent(e) for e in events].count("Checking the database file failed") == 3
    checkpointer.stopService()


def test_a_check_that_cannot_stat_the_file_logs_and_does_not_raise(
    store: SQLiteLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("sipproxy.location.sqlite.identity", refused)
    with capturedLogs() as events:
        assert store.persistence.check_file() is None
        store.close()  # closing checks too
    assert [formatEvent(e).split(" ", 3)[:3] for e in events] == [["Checking", "the", "database"]] * 2
