"""Builders and stand-ins shared by the ``tests/test_location_*.py`` modules (no tests here)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock

from sipproxy.location import Binding, LocationService, SQLitePersistence

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
    values: dict[str, object] = {"call_id": "a84b4c76e66710@pc33.example.test", **fields}
    return Binding(
        aor=aor,
        contact=contact,
        cseq=cseq,
        expires_at=expires_at,
        q=q,
        refreshed_at=refreshed_at,
        **values,  # type: ignore[arg-type]
    )


def advance_to(clock: Clock, when: float) -> None:
    clock.advance(when - clock.seconds())
    assert clock.seconds() == when


def recorder(store: LocationService) -> list[tuple[str, str]]:
    """(kind, contact) of every event from now on."""
    seen: list[tuple[str, str]] = []
    store.subscribe(lambda event: seen.append((event.kind, event.binding.contact)))
    return seen


def reasons(store: LocationService) -> list[tuple[str, str, str]]:
    """(kind, reason, contact) of every event from now on."""
    seen: list[tuple[str, str, str]] = []
    store.subscribe(lambda event: seen.append((event.kind, event.reason, event.binding.contact)))
    return seen


def on_disk(db_path: str) -> list[str]:
    """Contacts another process reading the database sees (committed rows only)."""
    connection = sqlite3.connect(db_path)
    try:
        return [row[0] for row in connection.execute("SELECT contact FROM bindings ORDER BY contact")]
    finally:
        connection.close()


class FailingPersistence(SQLitePersistence):
    """A real database whose writes start failing when ``broken`` is set."""

    broken = False

    def write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None:
        if self.broken:
            raise OSError("disk full")
        super().write(put, remove)


class BatchLostPersistence(SQLitePersistence):
    """A real database where a write error makes SQLite roll the whole open batch back."""

    broken = False

    def write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None:
        if self.broken:
            self.rollback()
            raise sqlite3.OperationalError("disk I/O error")
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
