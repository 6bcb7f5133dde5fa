# -*- test-case-name: tests.test_location_sqlite -*-
"""The SQLite backend (the default), so a restart loses no registration.

:class:`SQLitePersistence` is the journal: each change the store makes is
written atomically, on its own as one transaction, or inside a batch the
store opened with ``begin()`` and ends with ``commit()`` (group commit: one
commit for all the REGISTERs of a reactor turn). The database runs in WAL
journal mode with ``synchronous=NORMAL``: a committed transaction survives
the process being killed (it may be lost only on an operating-system crash
or power failure). :class:`SQLiteLocation` is the location service over it.

Header values are text as the parser decoded them: UTF-8, with the bytes
that are not valid UTF-8 kept as surrogate escapes (``User-Agent:
Téléphone`` sent in Latin-1 arrives as ``"T\\udce9l\\udce9phone"``).
SQLite text must be valid UTF-8, so such a value is stored as a BLOB of the
bytes the phone sent, and read back into the same string: nothing is lost,
and nothing is refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from sipproxy.location.binding import Binding
from sipproxy.location.interface import BindingEvent
from sipproxy.location.store import LocationStore
from sipproxy.net import Clock

__all__ = ["SCHEMA_VERSION", "SQLiteLocation", "SQLitePersistence"]

SCHEMA_VERSION = 2
"""Stored in ``PRAGMA user_version``.

1: ``bindings`` as a rowid table.  2: ``bindings`` ``WITHOUT ROWID`` (one
B-tree, keyed by aor and contact: an upsert writes about a third less) and
``server_secret``.  In either, a text column holds a BLOB (the raw bytes)
where the value is not valid UTF-8.
"""

_COLUMNS = (
    "aor",
    "contact",
    "call_id",
    "cseq",
    "expires_at",
    "q",
    "transport",
    "source_host",
    "source_port",
    "path",
    "user_agent",
    "instance",
    "reg_id",
    "registered_at",
    "refreshed_at",
)

_SCHEMA = """
CREATE TABLE bindings (
    aor           TEXT    NOT NULL,
    contact       TEXT    NOT NULL,
    call_id       TEXT    NOT NULL,
    cseq          INTEGER NOT NULL,
    expires_at    REAL    NOT NULL,
    q             REAL    NOT NULL,
    transport     TEXT    NOT NULL,
    source_host   TEXT    NOT NULL,
    source_port   INTEGER NOT NULL,
    path          TEXT    NOT NULL,
    user_agent    TEXT    NOT NULL,
    instance      TEXT,
    reg_id        INTEGER,
    registered_at REAL    NOT NULL,
    refreshed_at  REAL    NOT NULL,
    PRIMARY KEY (aor, contact)
) WITHOUT ROWID
"""

_SECRET_SCHEMA = """
CREATE TABLE server_secret (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    secret BLOB    NOT NULL
)
"""

_UPSERT = "INSERT OR REPLACE INTO bindings ({}) VALUES ({})".format(", ".join(_COLUMNS), ", ".join("?" * len(_COLUMNS)))
_DELETE = "DELETE FROM bindings WHERE aor = ? AND contact = ?"
_SELECT = "SELECT {} FROM bindings ORDER BY aor, contact".format(", ".join(_COLUMNS))

_Text = str | bytes
"""A text column's value: text, or the raw bytes of a value that is not valid UTF-8."""

_Row = tuple[_Text, _Text, _Text, int, float, float, str, str, int, str, _Text, _Text | None, int | None, float, float]


def _text(value: str) -> _Text:
    """``value`` as SQLite can store it: itself when it is valid UTF-8, else the bytes it escapes."""
    if value.isascii():  # nearly always: a flag check, no scan
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
    return value


def _str(value: _Text) -> str:
    """The inverse of :func:`_text`."""
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "surrogateescape")


def _key(aor: str, contact: str) -> tuple[_Text, _Text]:
    return _text(aor), _text(contact)


def _to_row(binding: Binding) -> _Row:
    return (
        _text(binding.aor),
        _text(binding.contact),
        _text(binding.call_id),
        binding.cseq,
        binding.expires_at,
        binding.q,
        binding.transport,
        binding.source_host,
        binding.source_port,
        json.dumps(list(binding.path)) if binding.path else "[]",
        _text(binding.user_agent),
        None if binding.instance is None else _text(binding.instance),
        binding.reg_id,
        binding.registered_at,
        binding.refreshed_at,
    )


def _from_row(row: _Row) -> Binding:
    instance = row[11]
    return Binding(
        aor=_str(row[0]),
        contact=_str(row[1]),
        call_id=_str(row[2]),
        cseq=row[3],
        expires_at=row[4],
        q=row[5],
        transport=row[6],
        source_host=row[7],
        source_port=row[8],
        path=tuple(json.loads(row[9])),
        user_agent=_str(row[10]),
        instance=None if instance is None else _str(instance),
        reg_id=row[12],
        registered_at=row[13],
        refreshed_at=row[14],
    )


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when anything in between fails."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


class SQLitePersistence:
    """The ``bindings`` table of one SQLite file, one row per (aor, contact)."""

    def __init__(self, path: str, *, autocheckpoint: bool = True) -> None:
        """Open (creating if needed) the database at ``path`` and its schema.

        With ``autocheckpoint=False`` the commits never copy the write-ahead
        log back into the database file themselves: the owner calls
        :meth:`checkpoint` from another thread (``twistd sipproxy`` does, every
        second), so the copying and its ``fsync`` never stall the reactor.

        Raises ``RuntimeError`` if the file was written by a newer schema.
        """
        self.path = path
        self._checkpointer: sqlite3.Connection | None = None
        if path != ":memory:" and not path.startswith("file:") and not os.path.exists(path):
            # The file holds the server secret and who is registered where: private from the start.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._connection = sqlite3.connect(path, isolation_level=None)
        try:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            if not autocheckpoint:
                self._connection.execute("PRAGMA wal_autocheckpoint=0")
            self._migrate()
        except BaseException:
            self._connection.close()
            raise

    def _migrate(self) -> None:
        (version,) = self._connection.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: schema version {version}, this program knows {SCHEMA_VERSION}")
        connection = self._connection
        with _transaction(connection):
            if version == 1:  # rebuild the rowid table under the version 2 definition
                connection.execute("ALTER TABLE bindings RENAME TO bindings_v1")
                connection.execute(_SCHEMA)
                connection.execute(f"INSERT INTO bindings SELECT {', '.join(_COLUMNS)} FROM bindings_v1")
                connection.execute("DROP TABLE bindings_v1")
            else:
                connection.execute(_SCHEMA)
            connection.execute(_SECRET_SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def server_secret(self, make: Callable[[], bytes]) -> bytes:
        """The server's secret (signs nonces and Record-Route dialog tokens), made once with ``make()`` and kept.

        Kept in the database so that dialogs record-routed before a restart
        are still recognised after it.  Whoever can read the database file
        can forge those tokens: keep it private (a new file is made 0600).
        """
        row = self._connection.execute("SELECT secret FROM server_secret WHERE id = 1").fetchone()
        if row is not None:
            return bytes(row[0])
        secret = make()
        with _transaction(self._connection):
            self._connection.execute("INSERT INTO server_secret (id, secret) VALUES (1, ?)", (secret,))
        return secret

    def load(self) -> list[Binding]:
        """Every stored binding, ordered by aor then contact."""
        return [_from_row(row) for row in self._connection.execute(_SELECT)]

    def write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None:
        """Delete the ``(aor, contact)`` keys in ``remove``, then insert or replace ``put``.

        All of it or nothing: on any error what this call wrote is rolled back
        and the error propagates. Outside a batch it is one transaction,
        committed before returning. Inside a batch (``begin()``) it becomes
        durable with the batch's ``commit()``; an error can take the whole
        batch with it (SQLite rolls a transaction back on I/O errors), which
        ``in_batch`` then tells.
        """
        connection = self._connection
        if len(put) + len(remove) == 1:
            # One statement is atomic on its own, in a batch or not: the
            # common REGISTER costs one round through SQLite, not three.
            if put:
                connection.execute(_UPSERT, _to_row(put[0]))
            else:
                connection.execute(_DELETE, _key(*remove[0]))
            return
        if not connection.in_transaction:
            with _transaction(connection):
                connection.executemany(_DELETE, [_key(*k) for k in remove])
                connection.executemany(_UPSERT, [_to_row(b) for b in put])
            return
        connection.execute("SAVEPOINT write")
        try:
            connection.executemany(_DELETE, [_key(*k) for k in remove])
            connection.executemany(_UPSERT, [_to_row(b) for b in put])
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK TO write")
                connection.execute("RELEASE write")
            raise
        connection.execute("RELEASE write")

    # -- group commit ------------------------------------------------------

    @property
    def in_batch(self) -> bool:
        """Is a batch open (``begin()`` called, not yet committed or rolled back)?"""
        return self._connection.in_transaction

    def begin(self) -> None:
        """Open a batch: later writes become durable together, at ``commit()``."""
        self._connection.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        """Make the batch durable; on failure roll it back and raise."""
        try:
            self._connection.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        """Drop the batch, if one is still open."""
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed pages from the write-ahead log into the database file; safe in another thread.

        A passive checkpoint on a connection of its own: it never waits for
        (nor holds up) the writer, it copies what was committed when it
        started.  Returns SQLite's (frames in the log, frames copied).
        Never call it concurrently with itself.
        """
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        _busy, log_frames, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return log_frames, copied

    def close(self) -> None:
        """Checkpoint and close; later calls raise ``sqlite3.ProgrammingError``.

        Not while :meth:`checkpoint` runs in another thread.
        """
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        try:
            if not self._connection.in_transaction:
                self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # closing is what matters; the next open replays the log
        self._connection.close()


class SQLiteLocation(LocationStore):
    """The location service over an SQLite file: ``twistd sipproxy --db PATH`` (the default).

    A REGISTER is answered 200 only once its change is committed (group
    commit, one per reactor turn), so ``kill -9`` loses nothing acknowledged.
    ``persistence`` is the file, for the WAL checkpointer and the server
    secret.
    """

    def __init__(
        self,
        clock: Clock,
        path: str | SQLitePersistence,
        *,
        autocheckpoint: bool = True,
        max_batch: int = 16,
        on_callback_error: Callable[[BindingEvent, Exception], None] | None = None,
    ) -> None:
        """Open (creating if needed) the database at ``path``; see :class:`SQLitePersistence` for the arguments.

        ``path`` may also be the file already opened (start-up opens it first
        to check it: :func:`sipproxy.startup.open_database`).
        """
        if isinstance(path, SQLitePersistence):
            self.persistence = path
        else:
            self.persistence = SQLitePersistence(path, autocheckpoint=autocheckpoint)
        super().__init__(clock, self.persistence, on_callback_error=on_callback_error, max_batch=max_batch)
