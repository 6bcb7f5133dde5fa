# -*- test-case-name: tests.test_security_blocks -*-
"""Failed authentications and what they block: a phone, a user name, a scanner's address.

RFC 3261 §26.1.5 and §26.4.4 leave guessing and denial of service to the
implementation.  What counts as a failure is decided by the digest check
(``AuthResult.failure``): a wrong answer to a fresh nonce we issued to that
address, so packets with made-up nonces -- anybody can spoof a UDP source
(RFC 3261 §26.1.5) -- count for nothing.  Within ``failure_window`` seconds:

- ``max_failures`` failures of one (address, user name) pair block that
  pair: one phone with a wrong password locks out itself, not the other
  phones behind its NAT;
- ``max_failures`` failures for one user name, from any addresses, block
  the name, except from an address holding one of that user's bindings
  (guessing bob's password does not lock out bob's registered phones);
- failures for ``max_failures`` *different* user names from one address
  (``max_failures * bound_factor`` while it holds an authenticated binding)
  look like a scanner: the whole address is blocked, and the guard answers
  it ``403`` a few times and then not at all.

None of these blocks a source (address and port) holding a binding of the
user concerned (any binding, for the address block) unless that very
source failed too: its blocks come from packets sent from elsewhere.
A block lasts ``block_for`` seconds; a success forgets nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

from sipproxy.auth import FailureTracker
from sipproxy.security.bound import BoundSources
from sipproxy.security.settings import SecuritySettings
from sipproxy.security.sources import source_key

__all__ = ["BlockStarted", "Blocks"]


class BlockStarted(NamedTuple):
    """A block that a failure just started: ``kind`` is ``"phone"``, ``"user"`` or ``"address"``."""

    kind: str
    key: str
    user: str | None
    block_for: float
    failures: int
    window: float


class Blocks:
    """The failure counters of :mod:`sipproxy.security.blocks` and the questions asked of them."""

    def __init__(self, settings: SecuritySettings, bound: BoundSources | None = None) -> None:
        n, window, block = settings.max_failures, settings.failure_window, settings.block_for
        self.window = window
        self.bound = bound
        self.phones = FailureTracker(n, window, block)
        self.users = FailureTracker(n, window, block)
        self.addresses = FailureTracker(n, window, block)
        self.bound_addresses = FailureTracker(max(n, math.ceil(n * settings.bound_factor)), window, block)
        self._failed_at: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._max_sources = 100_000

    def record(self, host: str, port: int, user: str | None, now: float) -> list[BlockStarted]:
        """Count one failure from ``host:port`` for ``user``; the blocks it starts."""
        key = source_key(host)
        self._failed_at.pop((host, port), None)
        self._failed_at[(host, port)] = now
        while len(self._failed_at) > self._max_sources:
            self._failed_at.popitem(last=False)
        started: list[BlockStarted] = []
        name = user or ""
        phone = _phone_key(key, name)
        first_for_pair = self.phones.failures(phone, now) == 0 and not self.phones.is_blocked(phone, now)
        if self.phones.record_failure(phone, now):
            started.append(self._started("phone", key, user, self.phones))
        if user is not None and self.users.record_failure(user, now):
            started.append(self._started("user", key, user, self.users))
        if first_for_pair:  # one more user name failing from this address
            plain = self.addresses.record_failure(key, now)
            bound = self.bound_addresses.record_failure(key, now)
            holds = self._holds_any(key)
            if (bound if holds else plain) and self.address_blocked_key(key, now):
                started.append(self._started("address", key, None, self.bound_addresses if holds else self.addresses))
        return started

    def address_blocked(self, host: str, port: int, now: float) -> bool:
        """Is ``host:port`` refused as (behind) a scanner's address?  The guard's question."""
        if not self.address_blocked_key(source_key(host), now):
            return False
        return not (
            self._bound_exempt(host, port, now) and self.bound is not None and self.bound.holds_any_at(host, port)
        )

    def address_blocked_key(self, key: str, now: float) -> bool:
        if self.bound_addresses.is_blocked(key, now):
            return True
        return self.addresses.is_blocked(key, now) and not self._holds_any(key)

    def refused(self, host: str, port: int, users: Iterable[str | None], now: float) -> str | None:
        """Why a request from ``host:port`` about ``users`` is refused (``"phone"``/``"user"``), or ``None``."""
        key = source_key(host)
        for user in dict.fromkeys(u for u in users if u is not None):
            if self._holds_user_here(host, port, user, now):
                continue
            if self.phones.is_blocked(_phone_key(key, user), now):
                return "phone"
            if self.users.is_blocked(user, now) and not (self.bound is not None and self.bound.holds_user(key, user)):
                return "user"
        return None

    def _holds_user_here(self, host: str, port: int, user: str, now: float) -> bool:
        """A registered phone of ``user`` at exactly ``host:port`` that did not fail itself."""
        return (
            self.bound is not None
            and self.bound.holds_user_at(host, port, user)
            and self._bound_exempt(host, port, now)
        )

    def _bound_exempt(self, host: str, port: int, now: float) -> bool:
        failed = self._failed_at.get((host, port))
        return failed is None or now - failed >= self.window

    def _holds_any(self, key: str) -> bool:
        return self.bound is not None and self.bound.holds_any(key)

    @staticmethod
    def _started(kind: str, key: str, user: str | None, tracker: FailureTracker) -> BlockStarted:
        return BlockStarted(kind, key, user, tracker.block_for, tracker.max_failures, tracker.window)


def _phone_key(key: str, user: str) -> str:
    return f"{key}\x00{user}"
