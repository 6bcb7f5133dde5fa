"""The location service: address-of-record -> contact -> binding (RFC 3261 §10.3).

The index is the tutorial's ``Map<AOR, Map<Contact, Binding>>``. Each binding
is removed exactly at ``expires_at``, the expiration the registrar computed
in RFC 3261 §10.3 step 7: the store keeps a heap of deadlines and one timer
on the injected clock for the earliest (a refresh pushes a new deadline and
the old one is skipped when it comes up), so thirty thousand bindings cost
one reactor timer, not thirty thousand. With a persistence object, every
change is written to it before it is applied in memory, so a failed write
leaves the store as it was.

Writes are committed in groups: the first change of a reactor turn opens a
batch and a ``callLater(0)`` commits it once the turn's other changes have
joined (one commit per turn however many REGISTERs arrived in it). A change
is durable when ``when_durable()`` says so; the registrar holds its 200 OK
until then. A batch whose commit fails is rolled back and the store reloads
what the database holds, so memory never claims what the disk lost.

The store does no I/O of its own beyond the persistence object and reads
time only from the injected clock: Twisted's reactor in production,
``twisted.internet.task.Clock`` in tests.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from twisted.logger import Logger

from sipproxy.location.binding import Binding
from sipproxy.location.interface import BindingEvent, EventKind

__all__ = ["BindingEvent", "Clock", "DelayedCall", "EventKind", "LocationStore", "Persistence"]

class DelayedCall(Protocol):
    """The part of Twisted's ``IDelayedCall`` the store uses."""

    def cancel(self) -> None: ...

    def active(self) -> bool: ...


class Clock(Protocol):
    """The part of Twisted's ``IReactorTime`` the store uses (``task.Clock`` in tests)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> DelayedCall: ...


class Persistence(Protocol):
    """Where the store keeps its bindings across restarts (``SQLitePersistence``)."""

    def load(self) -> list[Binding]: ...

    def write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None: ...

    @property
    def in_batch(self) -> bool: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


_ERRORS_KEPT = 100

_COMPACT_AT = 1024
"""The deadline heap is rebuilt when it holds this many entries more than four per address-of-record."""


class LocationStore:
    """The tutorial's two-level index AOR -> contact -> Binding, with exact expiry timers and optional persistence.

    A binding is live while ``clock.seconds() < expires_at``. Reads return live
    bindings only, so a binding disappears at its deadline even when the
    reactor runs its timer late; the timer then removes it from memory and
    from the database and emits an ``"expired"`` event.
    """

    _log = Logger()

    def __init__(
        self,
        clock: Clock,
        persistence: Persistence | None = None,
        *,
        on_callback_error: Callable[[BindingEvent, Exception], None] | None = None,
        max_batch: int = 16,
    ) -> None:
        """Start empty; call ``restore()`` to load what ``persistence`` holds.

        ``max_batch`` bounds a group commit: the change that would join a
        batch already holding that many commits the batch first, so the
        first REGISTER of a busy turn does not wait for hundreds of others.

        A subscriber that raises is reported to ``on_callback_error``; without
        one, the most recent failures are kept in ``callback_errors``.
        """
        self._clock = clock
        self._persistence = persistence
        self._index: dict[str, dict[str, Binding]] = {}
        self._deadlines: list[tuple[float, int, str, str]] = []
        """Heap of (expires_at, sequence, aor, contact); entries of refreshed or removed bindings are stale."""
        self._sequence = itertools.count()
        self._timer: DelayedCall | None = None
        self._timer_at = math.inf
        self._subscribers: dict[int, Callable[[BindingEvent], None]] = {}
        self._next_subscriber = 0
        self._pending: deque[BindingEvent] = deque()
        self._emitting = False
        self._closed = False
        self.max_batch = max_batch
        self._batched = 0
        self._batch: DelayedCall | None = None
        """The ``callLater(0)`` that commits the open batch, while one is open."""
        self._waiters: list[Callable[[bool], None]] = []
        self.last_commit_failed = False
        """Whether the most recent commit to persistence failed (``/healthz`` reports it)."""
        self.callback_errors: deque[tuple[BindingEvent, Exception]] = deque(maxlen=_ERRORS_KEPT)
        self._on_callback_error = on_callback_error or self._keep_callback_error

    def restore(self) -> int:
        """Load the persisted bindings and arm their timers; return how many are live.

        Bindings already expired at ``clock.seconds()`` are deleted from the
        database instead. No events are emitted. Restoring replaces whatever
        the store held, so calling it again is harmless. Without persistence
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
        self._replace_index(live, now)
        return len(live)

    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of ``aor``, highest q first, then most recently refreshed first.

        This is the order a proxy tries the targets in (RFC 3261 §16.6).
        """
        contacts = self._index.get(aor)
        if not contacts:
            return []
        now = self._clock.seconds()
        if len(contacts) == 1:  # the usual case: one phone per address-of-record
            for b in contacts.values():
                return [b] if b.expires_at > now else []
        return sorted((b for b in contacts.values() if b.expires_at > now), key=_lookup_order)

    def get(self, aor: str, contact: str) -> Binding | None:
        """The live binding of ``contact`` under ``aor``, if any."""
        binding = self._index.get(aor, {}).get(contact)
        if binding is None or binding.expires_at <= self._clock.seconds():
            return None
        return binding

    def aors(self) -> list[str]:
        """Addresses-of-record with at least one live binding, sorted."""
        now = self._clock.seconds()
        return sorted(
            aor for aor, contacts in self._index.items() if any(b.expires_at > now for b in contacts.values())
        )

    def all_bindings(self) -> list[Binding]:
        """Every live binding, by address-of-record and then in ``lookup()`` order."""
        return [binding for aor in self.aors() for binding in self.lookup(aor)]

    def count(self) -> int:
        """Number of live bindings."""
        now = self._clock.seconds()
        return sum(1 for contacts in self._index.values() for b in contacts.values() if b.expires_at > now)

    def aor_count(self) -> int:
        """Number of addresses-of-record with at least one live binding."""
        return len(self.aors())

    def update(self, aor: str, put: Iterable[Binding] = (), remove: Iterable[str] = ()) -> None:
        """Apply the outcome of one REGISTER to ``aor`` atomically (RFC 3261 §10.3 step 7).

        Each binding in ``put`` replaces the binding with the same contact
        (a ``"refreshed"`` event) or is inserted (``"added"``); one whose
        ``expires_at`` is not in the future removes that contact instead.
        Each contact in ``remove`` is removed (``"removed"``); unknown
        contacts are ignored. When a contact appears more than once in
        ``put`` the last one counts.

        Bindings of ``aor`` whose deadline has passed but whose timer has not
        run yet are expired first, in the same transaction, so an update never
        refreshes or removes a binding that is already gone.

        All changes are committed to persistence in one transaction before
        memory changes; if that write raises, the store is unchanged and the
        exception propagates. Events follow: ``"expired"`` ones, then ``put``
        order, then ``remove`` order.
        """
        self._check_open()
        puts: dict[str, Binding] = {}
        for binding in put:
            if binding.aor != aor:
                raise ValueError(f"binding for {binding.aor!r} put under {aor!r}")
            puts.pop(binding.contact, None)
            puts[binding.contact] = binding
        removes = list(dict.fromkeys(remove))
        if removes and puts:
            both = puts.keys() & set(removes)
            if both:
                raise ValueError(f"contacts both put and removed: {sorted(both)}")

        now = self._clock.seconds()
        known = self._index.get(aor)
        if known:
            dropped = [b for b in known.values() if b.expires_at <= now]
            events = [BindingEvent("expired", b) for b in dropped]
            current = {c: b for c, b in known.items() if b.expires_at > now} if dropped else known
        else:  # a new address-of-record: nothing to expire or replace
            dropped, events, current = [], [], {}
        stored: list[Binding] = []
        for contact, binding in puts.items():
            old = current.get(contact)
            if binding.expires_at > now:
                stored.append(binding)
                events.append(BindingEvent("added" if old is None else "refreshed", binding))
            elif old is not None:
                dropped.append(old)
                events.append(BindingEvent("removed", old))
        for contact in removes:
            old = current.get(contact)
            if old is not None:
                dropped.append(old)
                events.append(BindingEvent("removed", old))
        self._apply(stored, dropped, now)
        self._emit(events)

    def remove_aor(self, aor: str) -> int:
        """Remove every binding of ``aor`` (RFC 3261 §10.3 step 6, ``Contact: *``); return how many."""
        contacts = [b.contact for b in self.lookup(aor)]
        self.update(aor, remove=contacts)
        return len(contacts)

    def remove(self, aor: str, contact: str) -> bool:
        """Remove one binding; return whether it existed."""
        existed = self.get(aor, contact) is not None
        self.update(aor, remove=(contact,))
        return existed

    def subscribe(self, callback: Callable[[BindingEvent], None]) -> Callable[[], None]:
        """Call ``callback`` with every event from now on; return a function that stops it.

        Callbacks run synchronously after the change is applied. A callback
        that raises does not affect the store or the other callbacks. Events
        caused from inside a callback are delivered after the current one
        reaches every subscriber, so all subscribers see the same order.
        """
        token = self._next_subscriber
        self._next_subscriber += 1
        self._subscribers[token] = callback

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)

        return unsubscribe

    def close(self) -> None:
        """Cancel every timer and close persistence; later changes raise ``RuntimeError``."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._cancel_timers()
        if self._persistence is not None:
            self._persistence.close()

    def _apply(self, stored: list[Binding], dropped: list[Binding], now: float) -> None:
        if not stored and not dropped:
            return
        if self._persistence is not None:
            self._write(stored, [(b.aor, b.contact) for b in dropped])
        for binding in dropped:
            self._forget(binding.aor, binding.contact)
        for binding in stored:
            self._index.setdefault(binding.aor, {})[binding.contact] = binding
            self._arm(binding, now)
        if not self._index:
            self._cancel_timers()

    def _forget(self, aor: str, contact: str) -> Binding:
        contacts = self._index[aor]
        binding = contacts.pop(contact)
        if not contacts:
            del self._index[aor]
        return binding  # its deadline stays in the heap, stale

    # -- expiry: a heap of deadlines, one timer ------------------------------

    def _arm(self, binding: Binding, now: float) -> None:
        deadlines = self._deadlines
        heapq.heappush(deadlines, (binding.expires_at, next(self._sequence), binding.aor, binding.contact))
        if len(deadlines) > _COMPACT_AT + 4 * len(self._index):
            self._rebuild_deadlines(now)  # mostly stale entries of refreshed bindings
        elif binding.expires_at < self._timer_at:
            self._schedule(now)

    def _rebuild_deadlines(self, now: float) -> None:
        """One live entry per binding, then the timer for the earliest."""
        sequence = self._sequence
        self._deadlines = [
            (b.expires_at, next(sequence), aor, contact)
            for aor, contacts in self._index.items()
            for contact, b in contacts.items()
        ]
        heapq.heapify(self._deadlines)
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        """(Re)arm the one timer for the earliest deadline in the heap."""
        self._disarm()
        if self._deadlines:
            at = self._deadlines[0][0]
            self._timer = self._clock.callLater(_delay_until(at, now), self._expire_due)
            self._timer_at = at

    def _expire_due(self) -> None:
        """The timer: expire every binding whose deadline has come, then arm for the next one."""
        self._disarm()
        now = self._clock.seconds()
        deadlines, index = self._deadlines, self._index
        due: list[tuple[str, str]] = []
        while deadlines and deadlines[0][0] <= now:
            at, _, aor, contact = heapq.heappop(deadlines)
            binding = index.get(aor, {}).get(contact)
            if binding is not None and binding.expires_at == at:
                due.append((aor, contact))
        failure: Exception | None = None
        for aor, contact in due:
            try:
                self._expire(aor, contact)
            except Exception as error:  # the others still expire; the first error is raised at the end
                failure = failure or error
        if self._index:
            self._schedule(now)
        else:
            self._deadlines.clear()
        if failure is not None:
            raise failure

    def _expire(self, aor: str, contact: str) -> None:
        binding = self._forget(aor, contact)
        try:
            if self._persistence is not None:
                self._write((), [(aor, contact)])
        finally:
            self._emit([BindingEvent("expired", binding)])

    # -- group commit ------------------------------------------------------

    def when_durable(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(True)`` once every change made so far is committed, ``callback(False)`` if it is lost.

        Without persistence, or with nothing waiting to be committed, the
        callback runs at once.
        """
        if self._batch is None:
            callback(True)
        else:
            self._waiters.append(callback)

    def flush(self) -> bool:
        """Commit the open batch now (the turn's ``callLater(0)`` does this); return whether it is durable."""
        if not self._end_batch():
            return True
        persistence = self._persistence
        assert persistence is not None
        try:
            persistence.commit()
        except Exception:
            self._log.failure("Committing the location service's changes failed; reloading what the database holds")
            self._batch_failed()
            return False
        self.last_commit_failed = False
        self._tell_waiters(True)
        return True

    def _write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None:
        persistence = self._persistence
        assert persistence is not None
        if self._batch is not None and self._batched >= self.max_batch:
            self.flush()  # bound the wait of the batch's first REGISTER
        if self._batch is None:
            persistence.begin()
            self._batch = self._clock.callLater(0, self.flush)
            self._batched = 0
        self._batched += 1
        try:
            persistence.write(put, remove)
        except Exception:
            if not persistence.in_batch:  # SQLite rolled the whole batch back: earlier changes are lost too
                self._end_batch()
                self._log.error("The location service's open batch of changes was rolled back; reloading the database")
                self._batch_failed()
            raise

    def _end_batch(self) -> bool:
        """Close the open batch's bookkeeping (its ``callLater(0)``); return whether one was open."""
        batch, self._batch = self._batch, None
        if batch is not None and batch.active():
            batch.cancel()
        return batch is not None

    def _batch_failed(self) -> None:
        """The batch is lost: memory goes back to what the database holds, and its waiters hear so."""
        self.last_commit_failed = True
        self._reload()
        self._tell_waiters(False)

    def _tell_waiters(self, committed: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            try:
                callback(committed)
            except Exception:
                self._log.failure("A when_durable() callback failed")

    def _reload(self) -> None:
        """After a lost batch: make memory what the database holds again, with events for the difference."""
        persistence = self._persistence
        assert persistence is not None
        try:
            persistence.rollback()
            stored = persistence.load()
        except Exception:
            self._log.failure("Reloading the location service from the database failed; keeping memory as it is")
            return
        now = self._clock.seconds()
        disk = {(b.aor, b.contact): b for b in stored if b.expires_at > now}
        memory = {(b.aor, b.contact): b for contacts in self._index.values() for b in contacts.values()}
        events = [BindingEvent("removed", b) for key, b in memory.items() if key not in disk]
        for key, binding in disk.items():
            old = memory.get(key)
            if old is None:
                events.append(BindingEvent("added", binding))
            elif old != binding:
                events.append(BindingEvent("refreshed", binding))
        self._replace_index(disk.values(), now)
        self._emit(events)

    def _replace_index(self, bindings: Iterable[Binding], now: float) -> None:
        """Memory becomes exactly ``bindings`` (live ones), with their deadlines and the timer."""
        self._cancel_timers()
        self._index.clear()
        for binding in bindings:
            self._index.setdefault(binding.aor, {})[binding.contact] = binding
        self._rebuild_deadlines(now)

    def _disarm(self) -> None:
        """No timer armed (the one that was is cancelled, unless it is the one firing)."""
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer, self._timer_at = None, math.inf

    def _cancel_timers(self) -> None:
        self._disarm()
        self._deadlines = []

    def _emit(self, events: Iterable[BindingEvent]) -> None:
        if not self._subscribers and not self._emitting:
            self._pending.clear()  # nobody to tell: what the loop below would do, without the work
            return
        self._pending.extend(events)
        if self._emitting:
            return
        self._emitting = True
        try:
            while self._pending:
                event = self._pending.popleft()
                for callback in list(self._subscribers.values()):
                    try:
                        callback(event)
                    except Exception as error:
                        self._on_callback_error(event, error)
        finally:
            self._emitting = False

    def _keep_callback_error(self, event: BindingEvent, error: Exception) -> None:
        self.callback_errors.append((event, error))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("location store is closed")


def _lookup_order(binding: Binding) -> tuple[float, float, str]:
    return (-binding.q, -binding.refreshed_at, binding.contact)


def _delay_until(deadline: float, now: float) -> float:
    """The largest delay that a clock adding it to ``now`` does not place after ``deadline``.

    ``now + (deadline - now)`` can round one ulp past ``deadline``, which would
    make a timer armed at ``now`` (for instance by ``restore()``) run late.
    """
    delay = max(0.0, deadline - now)
    while delay > 0.0 and now + delay > deadline:
        delay = math.nextafter(delay, 0.0)
    return delay
