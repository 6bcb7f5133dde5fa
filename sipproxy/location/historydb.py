# -*- test-case-name: tests.test_location_history -*-
"""The binding history in the SQLite file (``--db``), beside the bindings, written off the REGISTER's path.

The ``binding_history`` table lives in the bindings' database file but on a
connection of its own, outside the bindings' schema version (it is created
if missing and never migrated).  Events wait in memory and are written
together, about once a second, in one transaction of their own: never inside
the bindings' group commit, so a history write that fails cannot take a
binding with it, and the 200 OK never waits for one.  The connection never
waits for SQLite's lock: when the bindings hold it (their batch of the turn
is open), the write is tried again a second later.  A failed write keeps the
events pending (at most :data:`MAX_PENDING`, the oldest dropped beyond) and
logs why, once until a write succeeds again.

Retention, applied by each write: events whose latest moment is older than
``max_age``, beyond ``max_per_aor`` for each AOR written to, and beyond
:data:`MAX_ROWS` in all (the oldest first).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from twisted.logger import Logger

from sipproxy.location.dbfile import identity
from sipproxy.location.history import DEFAULT_MAX_AGE, DEFAULT_MAX_PER_AOR, MAX_AORS, HistoryEvent
from sipproxy.net import Clock, DelayedCall

__all__ = ["FLUSH_DELAY", "MAX_PENDING", "MAX_ROWS", "SQLiteHistory"]

FLUSH_DELAY = 1.0
"""Seconds between the first pending event and the write that takes it (and the retries)."""

MAX_PENDING = 10_000
"""Events held in memory while writes fail; the oldest go beyond."""

MAX_ROWS = DEFAULT_MAX_PER_AOR * MAX_AORS // 5
"""Rows kept in all (100 000 with the defaults: about 20 MB)."""

log = Logger(namespace="sipproxy.location")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS binding_history (
        id         INTEGER PRIMARY KEY,
        at         REAL    NOT NULL,
        last_at    REAL    NOT NULL,
        aor        TEXT    NOT NULL,
        kind       TEXT    NOT NULL,
        contact    TEXT    NOT NULL,
        source     TEXT    NOT NULL,
        user_agent TEXT    NOT NULL,
        detail     TEXT    NOT NULL,
        status     INTEGER NOT NULL,
        count      INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS binding_history_aor ON binding_history (aor, id)",
    "CREATE INDEX IF NOT EXISTS binding_history_age ON binding_history (last_at)",
)
_COLUMNS = "at, last_at, aor, kind, contact, source, user_agent, detail, status, count"
_INSERT = f"INSERT INTO binding_history ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_FOLD = (
    "UPDATE binding_history SET count = count + ?, last_at = ? "
    "WHERE id = (SELECT max(id) FROM binding_history WHERE aor = ?) "
    "AND kind = 'refreshed' AND contact = ? AND source = ? AND user_agent = ?"
)
_TRIM_AOR = (
    "DELETE FROM binding_history WHERE aor = ? AND id <= "
    "(SELECT id FROM binding_history WHERE aor = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
_TRIM_AGE = "DELETE FROM binding_history WHERE last_at < ?"
_TRIM_ALL = "DELETE FROM binding_history WHERE id <= (SELECT id FROM binding_history ORDER BY id DESC LIMIT 1 OFFSET ?)"
_SELECT = f"SELECT {_COLUMNS} FROM binding_history WHERE aor = ? AND last_at >= ? ORDER BY id DESC LIMIT ?"

_Text = str | bytes


def _stored(value: str) -> _Text:
    """Text as SQLite can keep it: itself, or the bytes it escapes when it is not valid UTF-8 (as ``rows.py``)."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
    return value


def _loaded(value: _Text) -> str:
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "surrogateescape")


class SQLiteHistory:
    """The :class:`~sipproxy.location.history.HistoryStore` of ``twistd sipproxy --db PATH``."""

    def __init__(
        self,
        clock: Clock,
        path: str,
        max_age: float = DEFAULT_MAX_AGE,
        max_per_aor: int = DEFAULT_MAX_PER_AOR,
        *,
        max_rows: int = MAX_ROWS,
    ) -> None:
        """Open ``path`` (the bindings' file, already created) and the table; raises ``sqlite3.Error``."""
        self.clock = clock
        self.path = path
        self.max_age = max_age
        self.max_per_aor = max_per_aor
        self.max_rows = max_rows
        self.pending: list[HistoryEvent] = []
        self.dropped = 0
        self.failing: str | None = None
        """Why the last write failed, ``None`` once one succeeds."""
        self._timer: DelayedCall | None = None
        self._closed = False
        self._connection = self._connect()

    def _connect(self) -> sqlite3.Connection:
        # timeout=0: never wait for the lock on the reactor; the bindings' batch may hold it.
        connection = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            for statement in _SCHEMA:
                connection.execute(statement)
        except BaseException:
            connection.close()
            raise
        self._identity = identity(self.path) if not self.path.startswith((":", "file:")) else None
        return connection

    # -- HistoryStore ---------------------------------------------------------

    def add(self, event: HistoryEvent) -> None:
        if self._closed:
            return
        pending = self.pending
        if pending and pending[-1].aor == event.aor and pending[-1].folds(event):
            pending[-1] = pending[-1].folded(event)
        else:
            pending.append(event)
        if len(pending) > MAX_PENDING:
            del pending[0]
            self.dropped += 1
        if self._timer is None:
            self._timer = self.clock.callLater(FLUSH_DELAY, self._due)

    def events(self, aor: str) -> list[HistoryEvent]:
        self.flush()
        oldest = self.clock.seconds() - self.max_age
        waiting = [e for e in reversed(self.pending) if e.aor == aor]
        try:
            rows = self._connection.execute(_SELECT, (_stored(aor), oldest, self.max_per_aor)).fetchall()
        except sqlite3.Error as error:
            log.warn("Binding history: reading {path} failed: {error}", path=self.path, error=error)
            rows = []
        stored = [
            HistoryEvent(
                at, _loaded(a), kind, _loaded(contact), source, _loaded(ua), _loaded(detail), status, count, last_at
            )
            for at, last_at, a, kind, contact, source, ua, detail, status, count in rows
        ]
        return (waiting + stored)[: self.max_per_aor]

    def close(self) -> None:
        if self._closed:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.flush()
        self._closed = True
        self._connection.close()

    # -- writing ---------------------------------------------------------------

    def _due(self) -> None:
        self._timer = None
        if not self.flush() and self.pending and not self._closed:
            self._timer = self.clock.callLater(FLUSH_DELAY, self._due)

    def flush(self) -> bool:
        """Write the pending events now, in one transaction; return whether nothing is left pending."""
        if not self.pending or self._closed:
            return True
        if self._identity is not None and identity(self.path) != self._identity and not self._reopen():
            return False
        batch = self.pending
        try:
            self._write(batch)
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                return False  # the bindings' batch holds the lock: next time
            self._failed(error, batch)
            return False
        except sqlite3.Error as error:
            self._failed(error, batch)
            return False
        self.pending = []
        if self.failing is not None or self.dropped:
            log.info(
                "Binding history: writing to {path} works again ({dropped} events were dropped meanwhile)",
                path=self.path,
                dropped=self.dropped,
            )
            self.failing, self.dropped = None, 0
        return True

    def _write(self, batch: Sequence[HistoryEvent]) -> None:
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            touched: set[str] = set()
            for e in batch:
                aor = _stored(e.aor)
                if e.kind == "refreshed":
                    fold = (e.count, e.last_at, aor, _stored(e.contact), e.source, _stored(e.user_agent))
                    if connection.execute(_FOLD, fold).rowcount:
                        continue  # no row added: nothing to trim for it
                touched.add(e.aor)
                connection.execute(
                    _INSERT,
                    (
                        e.at,
                        e.last_at,
                        aor,
                        e.kind,
                        _stored(e.contact),
                        e.source,
                        _stored(e.user_agent),
                        _stored(e.detail),
                        e.status,
                        e.count,
                    ),
                )
            for aor_text in touched:
                aor = _stored(aor_text)
                connection.execute(_TRIM_AOR, (aor, aor, self.max_per_aor))
            connection.execute(_TRIM_AGE, (self.clock.seconds() - self.max_age,))
            connection.execute(_TRIM_ALL, (self.max_rows,))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _failed(self, error: Exception, batch: Sequence[HistoryEvent]) -> None:
        problem = str(error)
        if problem != self.failing:
            log.error(
                "Binding history: writing {count} events to {path} failed ({error}); registrations are not "
                "affected, the events wait in memory and the write is tried again every second",
                count=len(batch),
                path=self.path,
                error=problem,
            )
        self.failing = problem

    def _reopen(self) -> bool:
        """The file under ``path`` is not the one opened (deleted, written back): open the new one when there."""
        if identity(self.path) is None:
            return False  # deleted, not yet written back (SQLitePersistence.check_file does it)
        try:
            connection = self._connect()
        except sqlite3.Error as error:
            self._failed(error, self.pending)
            return False
        self._connection.close()
        self._connection = connection
        return True
