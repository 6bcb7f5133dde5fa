"""Stand-ins for the sockets and a failing disk, shared by the in-process tests."""

from __future__ import annotations

import sqlite3
from typing import Any

from sipproxy.location import SQLitePersistence


class FakeUDP:
    """A UDP port: records ``(datagram, address)`` instead of sending."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))


class Connector:
    """``connect_tcp`` that never connects: records where it was asked to."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int, layer: Any, timeout: float) -> None:
        self.attempts.append((host, port))


class CommitFailsPersistence(SQLitePersistence):
    """A real SQLite database whose COMMIT fails, as on a full disk, while ``broken`` is set."""

    broken = False

    def commit(self) -> None:
        if self.broken:
            self.rollback()
            raise sqlite3.OperationalError("database or disk is full")
        super().commit()
