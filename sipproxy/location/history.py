# -*- test-case-name: tests.test_location_history -*-
"""Binding history: per address-of-record, what happened to its bindings and why ("why did it vanish").

The location service's change events (:class:`~sipproxy.location.interface.
BindingEvent`) already say why a binding came or went; :class:`BindingHistory`
subscribes to them and turns each into a :class:`HistoryEvent`, adding what
only the layers around know, through narrow hooks that import nothing of
this module:

- who removed a binding through the web page or its API
  (:meth:`BindingHistory.acting`, around the removal);
- REGISTERs refused: 401 (wrong credentials) and 403 (blocked) by the
  authentication hook, 403 and 423 Interval Too Brief by the registrar
  (:meth:`BindingHistory.refused`, RFC 3261 §10.3 steps 3, 4 and 6).

A flow-bound binding whose connection closed (RFC 5626 §5.3) is removed by
the registrar with the reason ``flow-lost``: that is an event like the
others.

History is not the binding: a store that fails to keep an event never
touches the REGISTER, it logs why.  Stores keep a bounded history: events
older than ``max_age`` and beyond ``max_per_aor`` per address-of-record go,
and so do the addresses-of-record touched longest ago beyond a total bound
(rejected REGISTERs name whatever AOR a stranger writes in To).
:class:`MemoryHistory` is for ``--db :memory:``; the SQLite file keeps it
otherwise (:mod:`sipproxy.location.historydb`).

A refresh of the same contact from the same place as the newest event of
its AOR is counted into that event (``count``, ``last_at``) instead of
adding one: a phone refreshing every minute would otherwise push out, within
the hour, the registration that says where it came from.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from twisted.application.service import Service
from twisted.logger import Logger

from sipproxy.location.interface import BindingEvent
from sipproxy.message import ParseError, Request
from sipproxy.net import Clock, Source

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_PER_AOR",
    "MAX_AORS",
    "BindingHistory",
    "HistoryEvent",
    "HistoryService",
    "HistoryStore",
    "MemoryHistory",
    "source_text",
]

DEFAULT_MAX_AGE = 7 * 86400.0
"""``--history-age``: seconds an event is kept."""

DEFAULT_MAX_PER_AOR = 50
"""``--history-events``: events kept per address-of-record."""

MAX_AORS = 10_000
"""Addresses-of-record with a history, at most; the one touched longest ago goes first."""

log = Logger(namespace="sipproxy.location")


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One entry of an address-of-record's timeline.

    ``kind`` is one of ``registered``, ``refreshed``, ``replaced``,
    ``unregistered``, ``expired``, ``removed``, ``flow-lost``, ``rejected``,
    ``reloaded``.  ``source`` is where the REGISTER came from
    (``"UDP 192.0.2.7:5062"``), ``detail`` says the rest in words (who
    removed it, the refusal's status and reason), ``status`` is the refusal's
    status code (0 for the rest).  ``count`` refreshes are folded into one
    event, the last at ``last_at``.
    """

    at: float
    aor: str
    kind: str
    contact: str = ""
    source: str = ""
    user_agent: str = ""
    detail: str = ""
    status: int = 0
    count: int = 1
    last_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.last_at:
            object.__setattr__(self, "last_at", self.at)

    def folds(self, newer: HistoryEvent) -> bool:
        """Is ``newer`` a refresh to count into this event (same contact, from the same place)?"""
        return (
            newer.kind == self.kind == "refreshed"
            and newer.contact == self.contact
            and newer.source == self.source
            and newer.user_agent == self.user_agent
        )

    def folded(self, newer: HistoryEvent) -> HistoryEvent:
        """This event with ``newer`` counted into it."""
        return replace(self, count=self.count + newer.count, last_at=newer.last_at)


class HistoryStore(Protocol):
    """Where the events are kept, bounded by age and count."""

    max_age: float
    max_per_aor: int

    def add(self, event: HistoryEvent) -> None:
        """Keep ``event`` (folded into the newest event of its AOR when that one :meth:`~HistoryEvent.folds` it).

        Never raises: a store that cannot keep it logs why.
        """

    def events(self, aor: str) -> list[HistoryEvent]:
        """The kept events of ``aor``, newest first, none older than ``max_age``."""

    def close(self) -> None:
        """Write what is still pending and release the storage."""


class MemoryHistory:
    """The history in memory (``--db :memory:``), bounded like the SQLite one."""

    def __init__(
        self,
        clock: Clock,
        max_age: float = DEFAULT_MAX_AGE,
        max_per_aor: int = DEFAULT_MAX_PER_AOR,
        max_aors: int = MAX_AORS,
    ) -> None:
        self.clock = clock
        self.max_age = max_age
        self.max_per_aor = max_per_aor
        self.max_aors = max_aors
        self._by_aor: OrderedDict[str, deque[HistoryEvent]] = OrderedDict()

    def add(self, event: HistoryEvent) -> None:
        kept = self._by_aor.get(event.aor)
        if kept is None:
            kept = self._by_aor[event.aor] = deque(maxlen=self.max_per_aor)
            while len(self._by_aor) > self.max_aors:
                self._by_aor.popitem(last=False)
        else:
            self._by_aor.move_to_end(event.aor)
        if kept and kept[-1].folds(event):
            kept[-1] = kept[-1].folded(event)
        else:
            kept.append(event)

    def events(self, aor: str) -> list[HistoryEvent]:
        kept = self._by_aor.get(aor)
        if kept is None:
            return []
        oldest = self.clock.seconds() - self.max_age
        while kept and kept[0].last_at < oldest:
            kept.popleft()
        if not kept:
            del self._by_aor[aor]
            return []
        return list(reversed(kept))

    def close(self) -> None:
        pass


class HistoryService(Service):
    """Closes the history's store at shutdown (writing what is pending)."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    def stopService(self) -> None:
        super().stopService()
        try:
            self.store.close()
        except Exception:
            log.failure("Binding history: closing failed")


def source_text(transport: str, host: str, port: int) -> str:
    """Where a message came from, as :meth:`Binding.source` says it: ``"UDP 192.0.2.7:5062"``."""
    if not host:
        return transport.upper()
    shown = f"[{host}]" if ":" in host else host
    return f"{transport.upper()} {shown}:{port}"


_KINDS = {
    ("added", "registered"): "registered",
    ("refreshed", "refreshed"): "refreshed",
    ("refreshed", "replaced"): "refreshed",
    ("removed", "replaced"): "replaced",
    ("removed", "unregistered"): "unregistered",
    ("expired", "expired"): "expired",
    ("removed", "web"): "removed",
    ("removed", "removed"): "removed",
    ("removed", "flow-lost"): "flow-lost",
}
"""(event kind, reason) -> history kind; ``reloaded`` and anything new keep their reason."""

_DETAILS = {
    ("refreshed", "replaced"): "under a new Call-ID (the phone restarted or re-registered)",
    ("removed", "replaced"): "by the phone's new registration (same +sip.instance, or the same URI written anew)",
    ("removed", "unregistered"): "by the phone (Expires 0 or Contact: *)",
    ("expired", "expired"): "not refreshed before it expired",
    ("removed", "web"): "through the page/API",
    ("removed", "removed"): "by the operator",
    ("removed", "flow-lost"): "its flow is gone: the connection it registered over closed (RFC 5626 §5.3)",
    ("added", "reloaded"): "back from the database: the last commit failed",
    ("refreshed", "reloaded"): "back to what the database holds: the last commit failed",
    ("removed", "reloaded"): "gone: the database lost it (the last commit failed)",
}


class BindingHistory:
    """Records the history of every address-of-record into a :class:`HistoryStore` (see the module docstring).

    Subscribe :meth:`changed` to the location service; give :meth:`refused`
    to the registrar and the authentication as their refusal hook.
    """

    def __init__(self, store: HistoryStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._who: str | None = None

    @contextmanager
    def acting(self, who: str) -> Iterator[None]:
        """Removals made inside are recorded as made by ``who`` (``"admin from 192.0.2.1"``)."""
        before, self._who = self._who, who
        try:
            yield
        finally:
            self._who = before

    def events(self, aor: str) -> list[HistoryEvent]:
        """The history of ``aor``, newest first."""
        return self.store.events(aor)

    # -- the hooks --------------------------------------------------------------

    def changed(self, event: BindingEvent) -> None:
        """A location service change (subscribed): one event, never raising."""
        try:
            self.store.add(self._from_change(event))
        except Exception:
            log.failure("Binding history: recording a change of {aor} failed", aor=event.binding.aor)

    def refused(self, aor: str, request: Request, source: Source, status: int, reason: str) -> None:
        """A REGISTER for ``aor`` refused with ``status`` for ``reason`` (registrar, authentication)."""
        try:
            self.store.add(
                HistoryEvent(
                    self.clock.seconds(),
                    aor,
                    "rejected",
                    contact=_first_contact(request),
                    source=source_text(source.transport, source.host, source.port),
                    user_agent=request.get("user-agent") or "",
                    detail=f"{status} {reason}",
                    status=status,
                )
            )
        except Exception:
            log.failure("Binding history: recording a refused REGISTER for {aor} failed", aor=aor)

    def _from_change(self, event: BindingEvent) -> HistoryEvent:
        b, pair = event.binding, (event.kind, event.reason)
        detail = _DETAILS.get(pair, "")
        if event.reason == "web":
            detail = f"through the page by {self._who}" if self._who else detail
        at = self.clock.seconds()
        return HistoryEvent(
            at,
            b.aor,
            _KINDS.get(pair, event.reason),
            contact=b.contact,
            source=b.source(),
            user_agent=b.user_agent,
            detail=detail,
        )


def _first_contact(request: Request) -> str:
    try:
        return (request.get("contact") or "").strip()
    except ParseError:
        return ""
