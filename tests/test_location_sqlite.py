"""Tests for sipproxy.location.sqlite: the SQLite journal and the backend over it (the default).

Its promises: the schema and its upgrade, the server secret, a restart that
restores every live binding, ``kill -9`` losing nothing acknowledged, WAL
checkpoints in another thread, and header values that are not valid UTF-8
stored losslessly.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from sipproxy.location import Binding, BindingEvent, LocationStore, SQLiteLocation, SQLitePersistence
from sipproxy.location.sqlite import SCHEMA_VERSION

try:
    from tests.location_helpers import ALICE, BOB, REPO, advance_to, make_binding, on_disk
    from tests.messages import make_request
except ImportError:  # pragma: no cover
    from location_helpers import ALICE, BOB, REPO, advance_to, make_binding, on_disk  # type: ignore[no-redef]
    from messages import make_request  # type: ignore[no-redef]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "bindings.sqlite")


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
        assert events == [BindingEvent("expired", full, "expired")]
        assert check.load() == []
        check.close()
        second.close()

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
            from sipproxy.location import Binding, SQLiteLocation

            clock = Clock()
            clock.advance(1000)
            store = SQLiteLocation(clock, {db_path!r})
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
        store = SQLiteLocation(clock, db_path)
        assert store.restore() == 1
        (binding,) = store.lookup(ALICE)
        assert (binding.call_id, binding.cseq, binding.source()) == ("kill-test", 7, "UDP 192.0.2.7:5062")
        assert binding.expires_in(clock.seconds()) == 2600
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


LATIN_1 = "T\udce9l\udce9phone"
"""``Téléphone`` sent in Latin-1 (``b"T\\xe9l\\xe9phone"``), as the parser decodes it: surrogate escapes."""


class TestNotUtf8:
    """Issue "Hardening" item 7: a value that is not valid UTF-8 used to fail the SQLite write (500 every time)."""

    @pytest.mark.parametrize(
        "fields",
        [
            {"user_agent": LATIN_1},
            {"call_id": f"{LATIN_1}@192.0.2.7"},
            {"instance": f"<urn:{LATIN_1}>", "reg_id": 1},
            {"path": (f"<sip:{LATIN_1}@edge.example.test;lr>",)},
        ],
        ids=["user-agent", "call-id", "instance", "path"],
    )
    def test_round_trip_is_lossless(self, clock: Clock, db_path: str, fields: dict[str, object]) -> None:
        binding = make_binding(**fields)
        first = SQLiteLocation(clock, db_path)
        first.update(ALICE, put=[binding])
        told: list[bool] = []
        first.when_durable(told.append)
        clock.advance(0)
        assert told == [True] and not first.last_commit_failed
        first.close()

        second = SQLiteLocation(clock, db_path)
        assert second.restore() == 1
        assert second.lookup(ALICE) == [binding]
        second.remove(ALICE, binding.contact)
        second.close()
        assert on_disk(db_path) == []

    def test_the_row_holds_the_bytes_the_phone_sent(self, db_path: str) -> None:
        persistence = SQLitePersistence(db_path)
        persistence.write(
            [make_binding(user_agent=LATIN_1), make_binding("sip:b@192.0.2.2", user_agent="Téléphone")], []
        )
        persistence.close()
        with sqlite3.connect(db_path) as check:
            rows = check.execute("SELECT user_agent FROM bindings ORDER BY contact").fetchall()
        check.close()
        assert rows == [(b"T\xe9l\xe9phone",), ("Téléphone",)]  # invalid UTF-8 as a BLOB, valid text as text

    @pytest.mark.parametrize(
        ("header", "field"),
        [
            (b"User-Agent: T\xe9l\xe9phone", "user_agent"),
            (b"Call-ID: T\xe9l\xe9phone@192.0.2.7", "call_id"),
            (b'Contact: <sip:alice@192.0.2.7:5062>;+sip.instance="<urn:T\xe9l\xe9phone>"', "instance"),
        ],
        ids=["user-agent", "call-id", "instance"],
    )
    def test_a_register_with_latin_1_gets_200_and_survives_a_restart(
        self, clock: Clock, db_path: str, header: bytes, field: str
    ) -> None:
        from sipproxy.message import Response, parse_message
        from sipproxy.net import Source
        from sipproxy.registrar import Registrar, RegistrarSettings

        lines = {
            b"Call-ID": b"Call-ID: c1@192.0.2.7",
            b"Contact": b"Contact: <sip:alice@192.0.2.7:5062>",
            b"User-Agent": b"User-Agent: Phone/1",
        }
        lines[header.split(b":")[0]] = header
        data = make_request(
            "REGISTER",
            "sip:example.test",
            via="SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1",
            from_="<sip:alice@example.test>;tag=1",
            to="<sip:alice@example.test>",
            call_id=None,  # among the raw lines
            cseq="1 REGISTER",
            extra=lines.values(),
        )
        clock.advance(1000)
        store = SQLiteLocation(clock, db_path)
        registrar = Registrar(store, clock, RegistrarSettings(domains=frozenset({"example.test"})))
        sent: list[Response] = []
        registrar.answer(parse_message(data), Source("UDP", "192.0.2.7", 5062), sent.append)  # type: ignore[arg-type]
        clock.advance(0)
        assert [r.status for r in sent] == [200]
        [before] = store.lookup(ALICE)
        assert "\udce9" in getattr(before, field)
        store.close()

        again = SQLiteLocation(clock, db_path)
        assert again.restore() == 1
        assert again.lookup(ALICE) == [before]
        again.close()
