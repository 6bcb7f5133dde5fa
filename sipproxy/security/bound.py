# -*- test-case-name: tests.test_security_blocks -*-
"""Who holds a binding: the location service's bindings by source, for the limits (RFC 3261 §10.3 step 7).

An address that holds authenticated bindings is an office or a home, not a
scanner: it may send and fail more (``bound_factor``), a user name blocked
for failures elsewhere stays usable from the addresses holding that user's
bindings, and the exact source (address and port) of a registered phone is
never blocked because of failures that came from somewhere else.
"""

from __future__ import annotations

from collections import Counter
from typing import TypeVar

from sipproxy.location import Binding, BindingEvent, LocationService
from sipproxy.security.sources import aor_user, source_key

__all__ = ["BoundSources"]

_K = TypeVar("_K")


class BoundSources:
    """Which source addresses (and exact sources) hold bindings, kept up to date from the location service.

    Built from ``all_bindings()`` the first time it is asked (after the
    service restored its bindings at start-up), then maintained from
    :class:`~sipproxy.location.BindingEvent` s.
    """

    def __init__(self, location: LocationService) -> None:
        self._location = location
        self._where: dict[tuple[str, str], tuple[str, tuple[str, int]]] = {}
        self._aors: dict[str, Counter[str]] = {}
        self._exact: dict[tuple[str, int], Counter[str]] = {}
        self._ready = False
        location.subscribe(self._event)

    def holds_any(self, key: str) -> bool:
        """Does the address ``key`` (see :func:`source_key`) hold any binding?"""
        self._ensure()
        return key in self._aors

    def holds_user(self, key: str, user: str) -> bool:
        """Does the address ``key`` hold a binding of an address-of-record whose user part is ``user``?"""
        self._ensure()
        return any(aor_user(aor) == user for aor in self._aors.get(key, ()))

    def holds_any_at(self, host: str, port: int) -> bool:
        """Did a binding come from exactly ``host:port``?"""
        self._ensure()
        return (host, port) in self._exact

    def holds_user_at(self, host: str, port: int, user: str) -> bool:
        """Did a binding of ``user`` come from exactly ``host:port``?"""
        self._ensure()
        return any(aor_user(aor) == user for aor in self._exact.get((host, port), ()))

    def _ensure(self) -> None:
        if self._ready:
            return
        self._ready = True
        self._where.clear()
        self._aors.clear()
        self._exact.clear()
        for binding in self._location.all_bindings():
            self._put(binding)

    def _event(self, event: BindingEvent) -> None:
        if not self._ready:
            return  # the first question rebuilds from the service, which includes this change
        if event.kind in ("added", "refreshed"):
            self._put(event.binding)
        else:
            self._drop(event.binding.aor, event.binding.contact)

    def _put(self, binding: Binding) -> None:
        self._drop(binding.aor, binding.contact)
        if not binding.source_host:
            return
        key, exact = source_key(binding.source_host), (binding.source_host, binding.source_port)
        self._where[(binding.aor, binding.contact)] = (key, exact)
        self._aors.setdefault(key, Counter())[binding.aor] += 1
        self._exact.setdefault(exact, Counter())[binding.aor] += 1

    def _drop(self, aor: str, contact: str) -> None:
        where = self._where.pop((aor, contact), None)
        if where is None:
            return
        key, exact = where
        _decrement(self._aors, key, aor)
        _decrement(self._exact, exact, aor)


def _decrement(table: dict[_K, Counter[str]], key: _K, aor: str) -> None:
    counts = table[key]
    counts[aor] -= 1
    if counts[aor] <= 0:
        del counts[aor]
    if not counts:
        del table[key]
