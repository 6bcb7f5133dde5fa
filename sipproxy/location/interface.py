# -*- test-case-name: tests.test_location_store -*-
"""The location service's one public face (RFC 3261 §10.3, §16.5): what registrar, proxy, security and web use.

Backends implement :class:`LocationService`: the in-memory index with
SQLite behind it (the default), in memory only (``--db :memory:``, tests),
and a shared store for several hosts (Redis).  Nobody above ``location/``
imports a backend's class for anything but wiring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple, Protocol

from sipproxy.location.binding import Binding

__all__ = ["BindingEvent", "EventKind", "LocationService"]

EventKind = Literal["added", "refreshed", "removed", "expired"]


class BindingEvent(NamedTuple):
    """A change of the location service, delivered to subscribers after it is applied."""

    kind: EventKind
    binding: Binding


class LocationService(Protocol):
    """Address-of-record -> contact -> :class:`Binding`, with expiry, durability and change events."""

    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of ``aor``, highest q first, then most recently refreshed first (the §16.6 order)."""

    def get(self, aor: str, contact: str) -> Binding | None:
        """The live binding of ``contact`` under ``aor``, if any."""

    def update(self, aor: str, put: Iterable[Binding] = (), remove: Iterable[str] = ()) -> None:
        """Apply the outcome of one REGISTER to ``aor`` atomically (§10.3 step 7); raises if it cannot be stored."""

    def when_durable(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(True)`` once every change so far is durable, ``callback(False)`` if it was lost."""

    def remove(self, aor: str, contact: str) -> bool:
        """Remove one binding; return whether it existed."""

    def remove_aor(self, aor: str) -> int:
        """Remove every binding of ``aor`` (§10.3 step 6, ``Contact: *``); return how many."""

    def subscribe(self, callback: Callable[[BindingEvent], None]) -> Callable[[], None]:
        """Call ``callback`` with every change from now on; return a function that stops it."""

    def aors(self) -> list[str]:
        """Addresses-of-record with at least one live binding, sorted."""

    def all_bindings(self) -> list[Binding]:
        """Every live binding, by address-of-record and then in ``lookup()`` order."""

    def count(self) -> int:
        """Number of live bindings."""

    def aor_count(self) -> int:
        """Number of addresses-of-record with at least one live binding."""

    @property
    def last_commit_failed(self) -> bool:
        """Whether the most recent write to durable storage failed (``/healthz`` reports it)."""
