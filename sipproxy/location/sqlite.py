# -*- test-case-name: tests.test_location_sqlite -*-
"""The SQLite backend (the default), so a restart loses no registration.

:class:`SQLitePersistence` is the journal: each change the store makes is
written atomically, on its own as one transaction, or inside a batch the
store opened with ``begin()`` and ends with ``commit()`` (group commit: one
commit for all the REGISTERs of a reactor turn). The database runs in WAL
journal mode with ``synchronous=NORMAL``: a committed transaction survives
the process being killed (it may be lost only on an operating-system crash
or power failure). :class:`SQLiteLocation` is the location service over it.

Values that are not valid UTF-8 are stored losslessly (``rows.py``). A
database file deleted under the running server is noticed within a second
and written back from the connection still open on it
(:meth:`SQLitePersistence.check_file`, ``dbfile.py``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from twisted.logger import Logger

from sipproxy.location.binding import Binding
from sipproxy.location.dbfile import copy_to, identity, remove_log
from sipproxy.location.interface import BindingEvent
from sipproxy.location.rows import COLUMNS, from_row, key, to_row
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

log = Logger(namespace="sipproxy.location")

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

_UPSERT = "INSERT OR REPLACE INTO bindings ({}) VALUES ({})".format(", ".join(COLUMNS), ", ".join("?" * len(COLUMNS)))
_DELETE = "DELETE FROM bindings WHERE aor = ? AND contact = ?"
_SELECT = "SELECT {} FROM bindings ORDER BY aor, contact".format(", ".join(COLUMNS))


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
        self._file = path
        """The file open: ``path``, or where sipproxy's own went when another file replaced it (:meth:`check_file`)."""
        self._autocheckpoint = autocheckpoint
        self._checkpointer: sqlite3.Connection | None = None
        self._on_disk = path != ":memory:" and not path.startswith("file:")
        if self._on_disk and not os.path.exists(path):
            # The file holds the server secret and who is registered where: private from the start.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._connection = self._connect()
        self._identity = identity(path) if self._on_disk else None
        self._reconnect = False
        """Was the connection closed to move to a written-back file, which is still to be opened?"""
        self.file_problem: str | None = None
        """What is wrong with the file at ``path`` (:meth:`check_file`), ``None`` while it is the one opened."""

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._file, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            if not self._autocheckpoint:
                connection.execute("PRAGMA wal_autocheckpoint=0")
                # Opened now, by the file's name, while the file is the one just opened:
                # opened later, after the file was deleted, it would create an empty one.
                self._checkpointer = sqlite3.connect(self._file, isolation_level=None, check_same_thread=False)
            self._connection = connection
            self._migrate()
        except BaseException:
            connection.close()
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            raise
        return connection

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
                connection.execute(f"INSERT INTO bindings SELECT {', '.join(COLUMNS)} FROM bindings_v1")
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
        return [from_row(row) for row in self._connection.execute(_SELECT)]

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
                connection.execute(_UPSERT, to_row(put[0]))
            else:
                connection.execute(_DELETE, key(*remove[0]))
            return
        if not connection.in_transaction:
            with _transaction(connection):
                connection.executemany(_DELETE, [key(*k) for k in remove])
                connection.executemany(_UPSERT, [to_row(b) for b in put])
            return
        connection.execute("SAVEPOINT write")
        try:
            connection.executemany(_DELETE, [key(*k) for k in remove])
            connection.executemany(_UPSERT, [to_row(b) for b in put])
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
            self._checkpointer = sqlite3.connect(self._file, isolation_level=None, check_same_thread=False)
        _busy, log_frames, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return log_frames, copied

    def close(self) -> None:
        """Check the file (:meth:`check_file`: one deleted since the last check is written back), checkpoint, close.

        Later calls raise ``sqlite3.ProgrammingError``. Not while
        :meth:`checkpoint` runs in another thread.
        """
        self.check_file()
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        try:
            if not self._connection.in_transaction:
                self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # closing is what matters; the next open replays the log
        self._connection.close()

    # -- the file under the connection -------------------------------------

    def check_file(self, *, write_back: bool = True) -> str | None:
        """Is ``path`` still the file this opened?  If not, write it back; return what is wrong, or ``None``.

        ``twistd sipproxy`` calls this every second, with each WAL checkpoint
        (:class:`~sipproxy.location.services.WalCheckpointer`; with
        ``write_back=False`` while one runs in its thread, as writing back
        moves the connections), and at :meth:`close`. Never raises.

        The recovery, rather than running on until a restart that would
        lose every binding and the server secret: a deleted file is written
        back at once from the connection still open on it
        (:func:`~sipproxy.location.dbfile.copy_to`: every committed binding
        and the secret), and the connections move to the new file. An error
        is logged when the deletion is found, an info line when the file is
        back. While a batch is open, or while writing the file fails (its
        directory gone or not writable), :attr:`file_problem` says so, so
        ``/healthz`` fails, and each call tries again.

        A file that *another file replaced* (``mv old.sqlite sipproxy.sqlite``)
        is the operator's: it is left alone, and sipproxy's own is written
        to ``PATH.displaced`` instead (its log beside ``path`` would
        otherwise be read as the new file's). Health fails until a restart,
        which opens the new file, without what ``PATH.displaced`` holds.
        """
        try:
            return self._check_file(write_back)
        except Exception:  # e.g. stat refused: keep serving, say so
            log.failure("Checking the database file {path} failed", path=self._file)
            return self.file_problem

    def _check_file(self, write_back: bool) -> str | None:
        if self._identity is None:
            return None
        if self._reconnect:  # a file written back that could not be opened yet
            if write_back and identity(self._file) == self._identity:
                self._open_again()
            return self.file_problem
        now = identity(self._file)
        if now == self._identity:
            if self._file == self.path and self.file_problem is not None:
                log.info("The database file {path} is sipproxy's again", path=self.path)
                self.file_problem = None
            return self.file_problem
        target = self._file
        if now is None:
            first = self._problem(f"the database file {target} was deleted while in use")
        else:
            target = f"{self.path}.displaced"
            first = self._problem(
                f"the database file {self.path} was replaced by another file; sipproxy keeps its bindings and "
                f"server secret in {target} until restarted (then it uses the new file, without them)"
            )
        if not write_back or self._connection.in_transaction:
            return self.file_problem  # after the checkpoint, or the reactor turn's commit: the next check
        try:
            copy_to(self._connection, target)
        except (OSError, sqlite3.Error) as error:
            if first:
                log.error(
                    "Writing the database file {path} failed ({error}); trying again every second",
                    path=target,
                    error=error,
                )
            return self.file_problem
        self._checkpointer, checkpointer = None, self._checkpointer
        if checkpointer is not None:
            checkpointer.close()
        self._connection.close()
        try:
            remove_log(self._file)
        except OSError as error:
            log.error("Removing the old log beside {path} failed: {error}", path=self._file, error=error)
        self._file = target
        self._identity = identity(target)
        self._reconnect = True
        self._open_again()
        return self.file_problem

    def _open_again(self) -> None:
        """Open the file :meth:`check_file` wrote; on failure say so (each check tries again)."""
        try:
            self._connection = self._connect()
        except (OSError, sqlite3.Error) as error:
            self._problem(f"the database file {self._file} was written but cannot be opened ({error})")
            return
        self._reconnect = False
        (count,) = self._connection.execute("SELECT count(*) FROM bindings").fetchone()
        log.info(
            "Wrote the database file {path}: {count} {bindings} and the server secret, as last committed",
            path=self._file,
            count=count,
            bindings="binding" if count == 1 else "bindings",
        )
        if self._file == self.path:
            self.file_problem = None

    def _problem(self, problem: str) -> bool:
        """Record what is wrong with the file, logging it as an error when it is news; return whether it was."""
        if problem == self.file_problem:
            return False
        log.error("Location service: {problem}", problem=problem)
        self.file_problem = problem
        return True


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
