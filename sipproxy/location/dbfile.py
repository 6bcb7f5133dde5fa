# -*- test-case-name: tests.test_location_dbfile -*-
"""The SQLite file under a running server: is it still there, and putting it back when it is not.

An open SQLite connection keeps writing to the file it opened even after
someone deletes that file (``rm sipproxy.sqlite``, a clean-up script, a
mistaken ``logrotate``): every commit succeeds, ``/healthz`` says ok, and
the next start opens an empty database, without any binding and with a
new server secret. :func:`identity` tells whether the name still leads to
the file that was opened (device and inode, as ``os.stat`` reports them);
:func:`copy_to` writes what the still-open connection holds into a new
file at that name.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

__all__ = ["FileIdentity", "copy_to", "identity", "remove_log"]

FileIdentity = tuple[int, int]
"""``(st_dev, st_ino)``: the same pair means the same file, whatever its name."""


def identity(path: str) -> FileIdentity | None:
    """The file at ``path`` now, or ``None`` if there is none (deleted, or its directory is gone)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def copy_to(connection: sqlite3.Connection, path: str) -> None:
    """Write the whole database of ``connection`` (every table, the schema version) into a new file at ``path``.

    Built beside it as ``PATH.new`` (private from the start: 0600, like the
    file it replaces) with SQLite's online backup, then renamed into place,
    so ``path`` never holds half a database. ``connection`` must not be in
    a transaction. Raises ``OSError`` or ``sqlite3.Error``; ``path`` is then
    as it was.

    The caller then closes ``connection``, calls :func:`remove_log` and
    opens ``path`` anew.
    """
    fresh = f"{path}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fresh)  # left over by a copy that a crash interrupted
    os.close(os.open(fresh, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        target = sqlite3.connect(fresh, isolation_level=None)
        try:
            connection.backup(target)
        finally:
            target.close()
        os.rename(fresh, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(fresh)
        raise


def remove_log(path: str) -> None:
    """Remove the write-ahead log and shared-memory index (``PATH-wal``, ``PATH-shm``) of a deleted database.

    SQLite leaves them when the last connection to a database whose file
    was deleted closes; a connection to the new file at ``path`` would
    take that log for its own and replay it. Call it once the old
    connections are closed and what they held is in the new file
    (:func:`copy_to`).
    """
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
