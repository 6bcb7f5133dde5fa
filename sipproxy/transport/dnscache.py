# -*- test-case-name: tests.test_transport_dnscache -*-
"""DNS answers kept for their TTL, negative answers too (RFC 1035 §3.2.1, RFC 2308 §5), one query per name at a time.

Every call through the proxy resolves its next hop; without a cache each
one would wait for NAPTR, SRV and A/AAAA answers again.  An answer is kept
for the smallest TTL of its records (at most a day); "no such domain" and
"no such record" are kept for the TTL of the zone's SOA in the authority
section, bounded by the SOA's minimum field (RFC 2308 §5), or
``negative_ttl`` when the server gave no SOA.  Timeouts and server failures
are not kept: the next call asks again, so one bad moment of a DNS server
never stays beyond the call that saw it.  Lookups of the same name and type
while one is under way wait for that one.

The answers are lists of ``twisted.names`` ``RRHeader`` (the answer section,
CNAMEs included); failures are twisted.names' own (``DNSNameError``,
``TimeoutError``...), which ``resolve.describe_failure`` puts into words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.python.failure import Failure

from sipproxy.net import Clock

__all__ = ["DNSCache"]

Answer = list[dns.RRHeader]

_METHODS = {
    dns.NAPTR: "lookupNamingAuthorityPointer",
    dns.SRV: "lookupService",
    dns.A: "lookupAddress",
    dns.AAAA: "lookupIPV6Address",
}
MAX_TTL = 86400


class DNSCache:
    """``lookup(kind, name)``: the answer section for ``name``'s records of ``kind`` (NAPTR, SRV, A, AAAA).

    ``names`` gives the twisted.names ``IResolver`` asked (made on first
    use); ``timeout`` is its retry schedule.  At most ``max_entries`` names
    are kept; beyond that the oldest go first.
    """

    log = Logger(namespace="sipproxy.transport.resolve")

    def __init__(
        self,
        names: Callable[[], Any],
        clock: Clock,
        timeout: Sequence[int] | None = None,
        *,
        negative_ttl: float = 30.0,
        max_entries: int = 10000,
    ) -> None:
        self._names = names
        self.clock = clock
        self.timeout = tuple(timeout) if timeout is not None else None
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._entries: dict[tuple[int, str], tuple[float, Answer | Failure]] = {}
        self._pending: dict[tuple[int, str], list[Deferred[Answer]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, kind: int, name: str) -> Deferred[Answer]:
        key = (kind, name.lower().rstrip("."))
        entry = self._entries.get(key)
        if entry is not None:
            expires, value = entry
            if expires > self.clock.seconds():
                return fail(value) if isinstance(value, Failure) else succeed(list(value))
            del self._entries[key]
        waiting: Deferred[Answer] = Deferred()
        if key in self._pending:
            self._pending[key].append(waiting)
            return waiting
        self._pending[key] = [waiting]
        try:
            asked: Deferred[Any] = getattr(self._names(), _METHODS[kind])(key[1], self.timeout)
        except Exception:
            self.log.failure("Bug starting the DNS lookup of {name}", name=key[1])
            asked = fail()
        asked.addCallbacks(self._answered, self._failed, callbackArgs=(key,), errbackArgs=(key,))
        return waiting

    def _answered(self, result: tuple[Answer, Answer, Answer], key: tuple[int, str]) -> None:
        answers, authority, _additional = result
        wanted = [r for r in answers if r.type == key[0]]
        if wanted:
            ttl: float = min([MAX_TTL, *(r.ttl for r in answers)])
        else:  # NODATA (RFC 2308 §2.2): the name exists, without records of that type
            ttl = self._negative_ttl(authority)
        self._keep(key, ttl, list(answers))
        for waiting in self._pending.pop(key, []):
            waiting.callback(list(answers))

    def _failed(self, failure: Failure, key: tuple[int, str]) -> None:
        if failure.check(error.DNSNameError):  # NXDOMAIN (RFC 2308 §2.1)
            message = failure.value.args[0] if failure.value.args else None
            self._keep(key, self._negative_ttl(getattr(message, "authority", [])), failure)
        elif failure.check(error.DomainError, error.AuthoritativeDomainError):
            self._keep(key, self.negative_ttl, failure)
        for waiting in self._pending.pop(key, []):
            waiting.errback(failure)

    def _negative_ttl(self, authority: Sequence[dns.RRHeader]) -> float:
        """RFC 2308 §5: the SOA record's TTL, at most its minimum field; ``negative_ttl`` without a SOA."""
        for record in authority:
            if record.type == dns.SOA:
                return float(min(record.ttl, record.payload.minimum, MAX_TTL))
        return self.negative_ttl

    def _keep(self, key: tuple[int, str], ttl: float, value: Answer | Failure) -> None:
        if ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            now = self.clock.seconds()
            for stale in [k for k, (expires, _) in self._entries.items() if expires <= now]:
                del self._entries[stale]
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (self.clock.seconds() + ttl, value)
