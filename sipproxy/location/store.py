# -*- test-case-name: tests.test_location_store -*-
"""The location service of one process: a view of the bindings, with a journal behind it that decides.

:class:`LocationStore` implements :class:`~sipproxy.location.interface.
LocationBackend` out of three parts, each in its own module:

- the :class:`~sipproxy.location.index.BindingIndex` (``index.py``): the
  view every read answers from, and the expiry timer;
- the :class:`~sipproxy.location.commit.GroupCommit` (``commit.py``) over a
  journal, the durable storage (``SQLitePersistence``): a change is written
  to the journal before the view shows it, so a write the journal refuses
  leaves everything as it was, and a batch the journal loses puts the view
  back to what the journal holds;
- :class:`~sipproxy.location.events.Subscribers` (``events.py``): the
  events, delivered after the change is applied.

Without a journal the view is all there is (``MemoryLocation``, for
``--db :memory:`` and tests): every change is durable at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from sipproxy.location.binding import Binding
from sipproxy.location.commit import GroupCommit, Journal
from sipproxy.location.events import Subscribers
from sipproxy.location.index import BindingIndex
from sipproxy.location.interface import BindingEvent, Reason
from sipproxy.net import Clock

__all__ = ["LocationStore"]


class LocationStore:
    """Address-of-record -> contact -> binding, kept in ``persistence`` (or in memory only without one).

    A binding is live while ``clock.seconds() < expires_at``. Reads return
    live bindings only, so a binding disappears at its deadline even when
    the reactor runs its timer late; the timer then removes it from the
    view and from the journal and emits an ``"expired"`` event.
    """

    def __init__(
        self,
        clock: Clock,
        persistence: Journal | None = None,
        *,
        on_callback_error: Callable[[BindingEvent, Exception], None] | None = None,
        max_batch: int = 16,
    ) -> None:
        """Start empty; call ``restore()`` to load what ``persistence`` holds.

        ``max_batch`` bounds a group commit (see :class:`GroupCommit`). A
        subscriber that raises is reported to ``on_callback_error``; without
        one, the most recent failures are kept in ``callback_errors``.
        """
        self._clock = clock
        self._persistence = persistence
        self.where = "memory" if persistence is None else str(getattr(persistence, "path", type(persistence).__name__))
        """Where the bindings are kept, as the start-up log says it: ``memory`` or the database's path."""
        self._index = BindingIndex(clock, self._expired)
        self._subscribers = Subscribers(on_callback_error)
        self._commit = (
            None if persistence is None else GroupCommit(clock, persistence, self._reloaded, max_batch=max_batch)
        )
        self._closed = False

    @property
    def callback_errors(self) -> deque[tuple[BindingEvent, Exception]]:
        """The latest subscriber failures (when no ``on_callback_error`` was given)."""
        return self._subscribers.errors

    @property
    def last_commit_failed(self) -> bool:
        """Whether the most recent commit to the journal failed (``/healthz`` reports it)."""
        return self._commit is not None and self._commit.last_commit_failed

    @property
    def storage_problem(self) -> str | None:
        """Why durable storage is not healthy, one line (``/healthz`` fails while there is one); ``None`` if it is.

        The last commit failed, or the journal's file is not the one it
        opened (``SQLitePersistence.file_problem``: deleted and not yet
        written back, or replaced).
        """
        if self.last_commit_failed:
            return "the last commit to the database failed"
        return getattr(self._persistence, "file_problem", None)

    # -- lifecycle (wiring) -----------------------------------------------------

    def restore(self) -> int:
        """Load the journal's bindings and arm their timers; return how many are live.

        Bindings already expired at ``clock.seconds()`` are deleted from the
        journal instead. No events are emitted. Restoring replaces whatever
        the view held, so calling it again is harmless. Without a journal
        this does nothing and returns 0.
        """
        self._check_open()
        if self._persistence is None:
            return 0
        now = self._clock.seconds()
        stored = self._persistence.load()
        expired = [(b.aor, b.contact) for b in stored if b.expires_at <= now]
        if expired:
            self._persistence.write((), expired)
        live = [b for b in stored if b.expires_at > now]
        self._index.replace(live)
        return len(live)

    def flush(self) -> bool:
        """Commit the open batch now (the turn's ``callLater(0)`` does this); return whether it is durable."""
        return self._commit is None or self._commit.flush()

    def close(self) -> None:
        """Commit, cancel every timer and close the journal; later changes raise ``RuntimeError``."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._index.close()
        if self._persistence is not None:
            self._persistence.close()

    # -- reads --------------------------------------------------------------------

    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of ``aor``, highest q first, then most recently refreshed first (RFC 3261 §16.6)."""
        return self._index.lookup(aor)

    def get(self, aor: str, contact: str) -> Binding | None:
        """The live binding of ``contact`` under ``aor``, if any."""
        return self._index.get(aor, contact)

    def aors(self) -> list[str]:
        """Addresses-of-record with at least one live binding, sorted."""
        return self._index.aors()

    def all_bindings(self) -> list[Binding]:
        """Every live binding, by address-of-record and then in ``lookup()`` order."""
        return self._index.all_bindings()

    def count(self) -> int:
        """Number of live bindings."""
        return self._index.count()

    def aor_count(self) -> int:
        """Number of addresses-of-record with at least one live binding."""
        return self._index.aor_count()

    # -- changes ------------------------------------------------------------------

    def update(self, aor: str, put: Iterable[Binding] = (), remove: Iterable[str] = ()) -> None:
        """Apply the outcome of one REGISTER to ``aor`` atomically (RFC 3261 §10.3 step 7).

        What changes, and the events' kinds and reasons, are those of
        :meth:`BindingIndex.plan`. All of it is written to the journal, in
        the turn's batch, before the view changes; if that write raises, the
        store is unchanged and the exception propagates. Events follow.
        """
        self._change(aor, put, remove, None)

    def remove(self, aor: str, contact: str, *, reason: Reason = "removed") -> bool:
        """Remove one binding; return whether it existed."""
        existed = self._index.get(aor, contact) is not None
        self._change(aor, (), (contact,), reason)
        return existed

    def remove_aor(self, aor: str, *, reason: Reason = "removed") -> int:
        """Remove every binding of ``aor``; return how many."""
        contacts = [b.contact for b in self._index.lookup(aor)]
        self._change(aor, (), contacts, reason)
        return len(contacts)

    def subscribe(self, callback: Callable[[BindingEvent], None]) -> Callable[[], None]:
        """Call ``callback`` with every event from now on; return a function that stops it.

        See :meth:`Subscribers.subscribe` for the order and for callbacks that raise.
        """
        return self._subscribers.subscribe(callback)

    def when_durable(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(True)`` once every change made so far is committed, ``callback(False)`` if it is lost.

        Without a journal, or with nothing waiting to be committed, the
        callback runs at once.
        """
        if self._commit is None:
            callback(True)
        else:
            self._commit.when_durable(callback)

    def _change(self, aor: str, put: Iterable[Binding], remove: Iterable[str], removed_as: Reason | None) -> None:
        self._check_open()
        change = self._index.plan(aor, put, remove, removed_as)
        if not change.stored and not change.dropped:
            return
        if self._commit is not None:
            self._commit.write(change.stored, change.removed_keys())
        self._index.apply(change)
        self._subscribers.emit(change.events)

    def _expired(self, due: list[Binding]) -> None:
        """The index's timer dropped ``due``: delete them from the journal, then tell the subscribers."""
        try:
            if self._commit is not None:
                self._commit.write((), [(b.aor, b.contact) for b in due])
        finally:
            self._subscribers.emit([BindingEvent("expired", b, "expired") for b in due])

    def _reloaded(self, stored: list[Binding]) -> None:
        """A batch was lost: the view becomes what the journal holds, with events for the difference."""
        self._subscribers.emit(self._index.replace(stored))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("location store is closed")
