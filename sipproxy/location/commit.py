# -*- test-case-name: tests.test_location_commit -*-
"""Group commit: the changes of one reactor turn become durable together.

The first change of a reactor turn opens a batch in the journal and a
``callLater(0)`` commits it once the turn's other changes have joined: one
commit per turn however many REGISTERs arrived in it. A change is durable
when :meth:`GroupCommit.when_durable` says so; the registrar holds its 200
OK until then. A batch whose commit fails is rolled back and the owner is
handed what the journal still holds, so that its view never claims what
the disk lost.

The journal is where bindings are kept (:class:`sipproxy.location.sqlite.
SQLitePersistence`); this module only decides when its batches begin and
end, and who hears how they went.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from twisted.logger import Logger

from sipproxy.location.binding import Binding
from sipproxy.net import Clock, DelayedCall

__all__ = ["GroupCommit", "Journal"]


class Journal(Protocol):
    """Durable storage of bindings with batches (``SQLitePersistence``)."""

    def load(self) -> list[Binding]:
        """Every stored binding."""

    def write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None:
        """Delete the ``(aor, contact)`` keys in ``remove`` and store ``put``, all or nothing; raise on failure."""

    @property
    def in_batch(self) -> bool:
        """Is a batch open? False after a write error that rolled the whole batch back."""

    def begin(self) -> None:
        """Open a batch: later writes become durable together, at ``commit()``."""

    def commit(self) -> None:
        """Make the batch durable; on failure roll it back and raise."""

    def rollback(self) -> None:
        """Drop the batch, if one is still open."""

    def close(self) -> None:
        """Release the storage."""


class GroupCommit:
    """Batches of a :class:`Journal`, one per reactor turn, and the ``when_durable`` waiters.

    ``on_reload`` is called with what the journal holds after a batch was
    lost (its commit failed, or a write error rolled it back).
    """

    _log = Logger(namespace="sipproxy.location")

    def __init__(
        self,
        clock: Clock,
        journal: Journal,
        on_reload: Callable[[list[Binding]], None],
        *,
        max_batch: int = 16,
    ) -> None:
        """``max_batch`` bounds a batch: the change that would join a batch already holding that many commits it first.

        So the first REGISTER of a busy turn does not wait for hundreds of others.
        """
        self._clock = clock
        self.journal = journal
        self._on_reload = on_reload
        self.max_batch = max_batch
        self._batched = 0
        self._batch: DelayedCall | None = None
        """The ``callLater(0)`` that commits the open batch, while one is open."""
        self._waiters: list[Callable[[bool], None]] = []
        self.last_commit_failed = False
        """Whether the most recent commit failed (``/healthz`` reports it)."""

    def write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None:
        """Write one change into the turn's batch (opening it if needed); raise if the journal refuses it.

        A refused change leaves the batch's other changes in place, unless
        the journal lost the whole batch with it: then the owner reloads and
        the batch's waiters hear ``False`` before the error propagates.
        """
        journal = self.journal
        if self._batch is not None and self._batched >= self.max_batch:
            self.flush()  # bound the wait of the batch's first REGISTER
        if self._batch is None:
            journal.begin()
            self._batch = self._clock.callLater(0, self.flush)
            self._batched = 0
        self._batched += 1
        try:
            journal.write(put, remove)
        except Exception:
            if not journal.in_batch:  # SQLite rolled the whole batch back: earlier changes are lost too
                self._end_batch()
                self._log.error("The location service's open batch of changes was rolled back; reloading the database")
                self._batch_failed()
            raise

    def when_durable(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(True)`` once every change written so far is committed, ``callback(False)`` if it is lost.

        With nothing waiting to be committed, the callback runs at once.
        """
        if self._batch is None:
            callback(True)
        else:
            self._waiters.append(callback)

    def flush(self) -> bool:
        """Commit the open batch now (the turn's ``callLater(0)`` does this); return whether it is durable."""
        if not self._end_batch():
            return True
        try:
            self.journal.commit()
        except Exception:
            self._log.failure("Committing the location service's changes failed; reloading what the database holds")
            self._batch_failed()
            return False
        self.last_commit_failed = False
        self._tell_waiters(True)
        return True

    def _end_batch(self) -> bool:
        """Close the open batch's bookkeeping (its ``callLater(0)``); return whether one was open."""
        batch, self._batch = self._batch, None
        if batch is not None and batch.active():
            batch.cancel()
        return batch is not None

    def _batch_failed(self) -> None:
        """The batch is lost: the owner gets what the journal holds, and the batch's waiters hear so."""
        self.last_commit_failed = True
        try:
            self.journal.rollback()
            stored = self.journal.load()
        except Exception:
            self._log.failure("Reloading the location service from the database failed; keeping memory as it is")
        else:
            self._on_reload(stored)
        self._tell_waiters(False)

    def _tell_waiters(self, committed: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            try:
                callback(committed)
            except Exception:
                self._log.failure("A when_durable() callback failed")
