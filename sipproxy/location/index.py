# -*- test-case-name: tests.test_location_index -*-
"""A process's view of the bindings: address-of-record -> contact -> binding, and their expiry.

The index is the tutorial's ``Map<AOR, Map<Contact, Binding>>``. It is not
where bindings are kept: it holds what the backend's durable storage holds
(a backend changes it only with changes that storage accepted, and replaces
it with what storage holds when a change was lost), so that reads never
wait for storage.

Each binding leaves the view exactly at ``expires_at``, the expiration the
registrar computed in RFC 3261 §10.3 step 7: the index keeps a heap of
deadlines and one timer on the injected clock for the earliest (a refresh
pushes a new deadline and the old one is skipped when it comes up), so
thirty thousand bindings cost one reactor timer, not thirty thousand.
Reads return live bindings only, so a binding disappears at its deadline
even when the reactor runs the timer late. When the timer runs, the index
drops the bindings that are due and hands them to its owner, which removes
them from storage (or not: a store that expires keys itself need not) and
tells the subscribers.

:meth:`BindingIndex.plan` turns one REGISTER's outcome into a
:class:`Change`: the bindings to store, the ones that go, and the events
with their reasons. It reads the view and changes nothing, so a backend
can have the change accepted before applying it.

Pure: no I/O, and time only from the injected clock (Twisted's reactor in
production, ``twisted.internet.task.Clock`` in tests).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

from sipproxy.location.binding import Binding
from sipproxy.location.interface import BindingEvent, Reason
from sipproxy.message import ParseError, parse_uri
from sipproxy.net import Clock, DelayedCall

__all__ = ["BindingIndex", "Change"]

_COMPACT_AT = 1024
"""The deadline heap is rebuilt when it holds this many entries more than four per address-of-record."""


class Change(NamedTuple):
    """What one update does to the view: store ``stored``, drop ``dropped``, then tell ``events``."""

    stored: list[Binding]
    dropped: list[Binding]
    events: list[BindingEvent]

    def removed_keys(self) -> list[tuple[str, str]]:
        """``(aor, contact)`` of every dropped binding, as storage deletes them."""
        return [(b.aor, b.contact) for b in self.dropped]


class BindingIndex:
    """Live bindings by address-of-record and contact, with one expiry timer for all of them.

    A binding is live while ``clock.seconds() < expires_at``. ``on_due`` is
    called from the timer with the bindings whose deadline has come, after
    they left the view.
    """

    def __init__(self, clock: Clock, on_due: Callable[[list[Binding]], None]) -> None:
        self._clock = clock
        self._on_due = on_due
        self._map: dict[str, dict[str, Binding]] = {}
        self._deadlines: list[tuple[float, int, str, str]] = []
        """Heap of (expires_at, sequence, aor, contact); entries of refreshed or removed bindings are stale."""
        self._sequence = itertools.count()
        self._timer: DelayedCall | None = None
        self._timer_at = math.inf

    # -- reads ----------------------------------------------------------------

    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of ``aor``, highest q first, then most recently refreshed first.

        This is the order a proxy tries the targets in (RFC 3261 §16.6).
        """
        contacts = self._map.get(aor)
        if not contacts:
            return []
        now = self._clock.seconds()
        if len(contacts) == 1:  # the usual case: one phone per address-of-record
            for b in contacts.values():
                return [b] if b.expires_at > now else []
        return sorted((b for b in contacts.values() if b.expires_at > now), key=_lookup_order)

    def get(self, aor: str, contact: str) -> Binding | None:
        """The live binding of ``contact`` under ``aor``, if any."""
        binding = self._map.get(aor, {}).get(contact)
        if binding is None or binding.expires_at <= self._clock.seconds():
            return None
        return binding

    def aors(self) -> list[str]:
        """Addresses-of-record with at least one live binding, sorted."""
        now = self._clock.seconds()
        return sorted(aor for aor, contacts in self._map.items() if any(b.expires_at > now for b in contacts.values()))

    def all_bindings(self) -> list[Binding]:
        """Every live binding, by address-of-record and then in ``lookup()`` order."""
        return [binding for aor in self.aors() for binding in self.lookup(aor)]

    def count(self) -> int:
        """Number of live bindings."""
        now = self._clock.seconds()
        return sum(1 for contacts in self._map.values() for b in contacts.values() if b.expires_at > now)

    def aor_count(self) -> int:
        """Number of addresses-of-record with at least one live binding."""
        return len(self.aors())

    # -- changes --------------------------------------------------------------

    def plan(
        self, aor: str, put: Iterable[Binding] = (), remove: Iterable[str] = (), removed_as: Reason | None = None
    ) -> Change:
        """The :class:`Change` that applying one REGISTER's outcome to ``aor`` makes (RFC 3261 §10.3 step 7).

        Each binding in ``put`` replaces the binding with the same contact
        (a ``"refreshed"`` event: reason ``refreshed`` under the same
        Call-ID, ``replaced`` under another) or is inserted (``"added"``);
        one whose ``expires_at`` is not in the future removes that contact
        instead (``unregistered``). Each contact in ``remove`` is removed
        (``"removed"``): ``replaced`` when a binding put in the same change
        takes its place (same ``+sip.instance`` and ``reg-id``, or an equal
        URI), ``unregistered`` otherwise, or ``removed_as`` when given.
        Unknown contacts are ignored; when a contact appears more than once
        in ``put`` the last one counts.

        Bindings of ``aor`` whose deadline has passed but whose timer has not
        run yet go first, in the same change (``"expired"``), so an update
        never refreshes or removes a binding that is already gone. Events
        are in that order: expiries, then ``put`` order, then ``remove``
        order. Raises ``ValueError`` for a binding of another AOR or a
        contact both put and removed.
        """
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
        known = self._map.get(aor)
        if known:
            dropped = [b for b in known.values() if b.expires_at <= now]
            events = [BindingEvent("expired", b, "expired") for b in dropped]
            current = {c: b for c, b in known.items() if b.expires_at > now} if dropped else known
        else:  # a new address-of-record: nothing to expire or replace
            dropped, events, current = [], [], {}
        stored: list[Binding] = []
        for contact, binding in puts.items():
            old = current.get(contact)
            if binding.expires_at > now:
                stored.append(binding)
                if old is None:
                    events.append(BindingEvent("added", binding, "registered"))
                else:
                    same_call = old.call_id == binding.call_id
                    events.append(BindingEvent("refreshed", binding, "refreshed" if same_call else "replaced"))
            elif old is not None:
                dropped.append(old)
                events.append(BindingEvent("removed", old, removed_as or "unregistered"))
        for contact in removes:
            old = current.get(contact)
            if old is not None:
                dropped.append(old)
                events.append(BindingEvent("removed", old, removed_as or _why_removed(old, stored)))
        return Change(stored, dropped, events)

    def apply(self, change: Change) -> None:
        """Make the view hold ``change`` (once storage accepted it), with the deadlines and the timer."""
        stored, dropped = change.stored, change.dropped
        if not stored and not dropped:
            return
        now = self._clock.seconds()
        for binding in dropped:
            self._forget(binding.aor, binding.contact)
        for binding in stored:
            self._map.setdefault(binding.aor, {})[binding.contact] = binding
            self._arm(binding, now)
        if not self._map:
            self._cancel_timers()

    def replace(self, bindings: Iterable[Binding]) -> list[BindingEvent]:
        """Make the view exactly the live ones of ``bindings`` (what storage holds); return the difference.

        The events (reason ``reloaded``) turn what the view held into what
        it holds now: a backend that reloads after a lost change emits them,
        one that restores at start-up does not.
        """
        now = self._clock.seconds()
        truth = {(b.aor, b.contact): b for b in bindings if b.expires_at > now}
        held = {(b.aor, b.contact): b for contacts in self._map.values() for b in contacts.values()}
        events = [BindingEvent("removed", b, "reloaded") for key, b in held.items() if key not in truth]
        for key, binding in truth.items():
            old = held.get(key)
            if old is None:
                events.append(BindingEvent("added", binding, "reloaded"))
            elif old != binding:
                events.append(BindingEvent("refreshed", binding, "reloaded"))
        self._cancel_timers()
        self._map.clear()
        for binding in truth.values():
            self._map.setdefault(binding.aor, {})[binding.contact] = binding
        self._rebuild_deadlines(now)
        return events

    def close(self) -> None:
        """Cancel the timer and forget the deadlines (the owner is closing); the bindings stay readable."""
        self._cancel_timers()

    def _forget(self, aor: str, contact: str) -> None:
        contacts = self._map.get(aor)
        if contacts is None or contacts.pop(contact, None) is None:
            return  # already gone (a reload in between)
        if not contacts:
            del self._map[aor]
        # its deadline stays in the heap, stale

    # -- expiry: a heap of deadlines, one timer -------------------------------

    def _arm(self, binding: Binding, now: float) -> None:
        deadlines = self._deadlines
        heapq.heappush(deadlines, (binding.expires_at, next(self._sequence), binding.aor, binding.contact))
        if len(deadlines) > _COMPACT_AT + 4 * len(self._map):
            self._rebuild_deadlines(now)  # mostly stale entries of refreshed bindings
        elif binding.expires_at < self._timer_at:
            self._schedule(now)

    def _rebuild_deadlines(self, now: float) -> None:
        """One live entry per binding, then the timer for the earliest."""
        sequence = self._sequence
        self._deadlines = [
            (b.expires_at, next(sequence), aor, contact)
            for aor, contacts in self._map.items()
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
        """The timer: drop every binding whose deadline has come, arm for the next one, then tell the owner."""
        self._disarm()
        now = self._clock.seconds()
        deadlines, bindings = self._deadlines, self._map
        due: list[Binding] = []
        while deadlines and deadlines[0][0] <= now:
            at, _, aor, contact = heapq.heappop(deadlines)
            binding = bindings.get(aor, {}).get(contact)
            if binding is not None and binding.expires_at == at:
                self._forget(aor, contact)
                due.append(binding)
        if self._map:
            self._schedule(now)
        else:
            self._deadlines.clear()
        if due:
            self._on_due(due)

    def _cancel_timers(self) -> None:
        self._disarm()
        self._deadlines = []

    def _disarm(self) -> None:
        """No timer armed (the one that was is cancelled, unless it is the one firing)."""
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer, self._timer_at = None, math.inf


def _why_removed(old: Binding, stored: list[Binding]) -> Reason:
    """``replaced`` when a binding stored by the same REGISTER takes ``old``'s place, else ``unregistered``.

    It does when it has the same ``+sip.instance`` and ``reg-id`` (RFC 5626
    §6), or a URI equal to ``old``'s by RFC 3261 §19.1.4 written another way.
    """
    for new in stored:
        if old.instance is not None and (new.instance, new.reg_id) == (old.instance, old.reg_id):
            return "replaced"
        if _same_uri(old.contact, new.contact):
            return "replaced"
    return "unregistered"


def _same_uri(a: str, b: str) -> bool:
    try:
        return parse_uri(a) == parse_uri(b)
    except ParseError:
        return False


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
