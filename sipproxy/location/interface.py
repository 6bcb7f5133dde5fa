# -*- test-case-name: tests.test_location_store -*-
"""The location service's one public face (RFC 3261 §10.3, §16.5): what registrar, proxy, security and web use.

Backends implement :class:`LocationService`: SQLite (the default), memory
only (``--db :memory:``, tests), and later a shared store for several hosts
(Redis; the package docstring says how it plugs in).  Nobody above
``location/`` imports a backend's class for anything but wiring, which also
holds the backend's lifecycle (:class:`LocationBackend`: restore, flush,
close).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple, Protocol

from sipproxy.location.binding import Binding

__all__ = ["BindingEvent", "EventKind", "LocationBackend", "LocationService", "Reason"]

EventKind = Literal["added", "refreshed", "removed", "expired"]
"""What happened to the binding; the page and ``/api/events`` key on these four."""

Reason = Literal[
    "registered", "refreshed", "replaced", "unregistered", "expired", "web", "removed", "reloaded", "flow-lost"
]
"""Why it happened.

- ``registered``: a REGISTER added the contact (``added``);
- ``refreshed``: a REGISTER with the same Call-ID renewed it (``refreshed``);
- ``replaced``: the phone's new registration took its place: another
  Call-ID for the same contact (§10.3 step 7; ``refreshed``), or the same
  ``+sip.instance`` and ``reg-id`` (RFC 5626 §6), or an equal URI written
  differently, under another contact (``removed``);
- ``unregistered``: the phone removed it: expires 0, or ``Contact: *``;
- ``expired``: nobody refreshed it before its expiry;
- ``web``: an operator removed it through the web page or its API;
- ``removed``: removed through :meth:`LocationService.remove` for another reason;
- ``flow-lost``: the connection its REGISTER came on closed (a flow-bound
  binding, RFC 5626 §5.3, :attr:`Binding.flow_bound`), or a request
  towards it found that flow gone;
- ``reloaded``: a commit failed and the view went back to what durable
  storage holds (any kind but ``expired``).
"""


class BindingEvent(NamedTuple):
    """A change of the location service, delivered to subscribers after it is applied."""

    kind: EventKind
    binding: Binding
    """The binding as it is now (``added``, ``refreshed``) or as it was (``removed``, ``expired``)."""
    reason: Reason


class LocationService(Protocol):
    """Address-of-record -> contact -> :class:`Binding`, with expiry, durability and change events.

    Reads answer from the process's own view and never block.  Changes are
    applied to that view as soon as the backend has accepted them, and are
    *durable* once the backend says so through :meth:`when_durable`: a
    REGISTER is answered 200 only then.  A change the backend later loses
    is undone in the view (``reloaded`` events), so the view never claims
    more than durable storage holds.
    """

    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of ``aor``, highest q first, then most recently refreshed first (the §16.6 order)."""

    def get(self, aor: str, contact: str) -> Binding | None:
        """The live binding of ``contact`` under ``aor``, if any."""

    def update(self, aor: str, put: Iterable[Binding] = (), remove: Iterable[str] = ()) -> None:
        """Apply the outcome of one REGISTER to ``aor`` atomically (§10.3 step 7).

        Raises if the backend refuses the change at once (nothing changes
        then); a loss found later reaches :meth:`when_durable`. The events
        say why each binding went (``unregistered``, ``replaced``,
        ``expired``), read from the change itself.
        """

    def when_durable(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(True)`` once every change so far is durable, ``callback(False)`` if it was lost."""

    def remove(self, aor: str, contact: str, *, reason: Reason = "removed") -> bool:
        """Remove one binding (an operator's removal, not a REGISTER); return whether it existed."""

    def remove_aor(self, aor: str, *, reason: Reason = "removed") -> int:
        """Remove every binding of ``aor`` (an operator's removal; ``Contact: *`` goes through ``update``)."""

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


class LocationBackend(LocationService, Protocol):
    """A :class:`LocationService` as wiring sees it: with the lifecycle only wiring uses."""

    @property
    def storage_problem(self) -> str | None:
        """Why durable storage is not healthy, one line (``/healthz`` fails while there is one); ``None`` if it is."""

    def restore(self) -> int:
        """Load what durable storage holds (at start-up); return how many live bindings there are."""

    def flush(self) -> bool:
        """Make the pending changes durable now; return whether they are."""

    def close(self) -> None:
        """Flush, cancel every timer and release durable storage; later changes raise ``RuntimeError``."""
