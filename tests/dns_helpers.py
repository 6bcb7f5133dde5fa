"""A twisted.names ``IResolver`` double holding a zone: NAPTR, SRV, A and AAAA records with their TTLs."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.names import dns, error

SOA = dns.RRHeader(
    b"example.com", dns.SOA, ttl=300, payload=dns.Record_SOA(b"ns.example.com", b"root.example.com", minimum=60)
)


def nxdomain() -> error.DNSNameError:
    message = dns.Message(rCode=dns.ENAME)
    message.authority = [SOA]
    return error.DNSNameError(message)


class Zone:
    """``records[(type, name)]``: payloads (or one exception); a name not there is NXDOMAIN with a SOA (60 s)."""

    def __init__(self, ttl: int = 300) -> None:
        self.ttl = ttl
        self.records: dict[tuple[int, str], Any] = {}
        self.asked: list[tuple[str, str]] = []
        self.later = False
        self.pending: list[defer.Deferred[Any]] = []

    def add(self, kind: int, name: str, *payloads: Any) -> Zone:
        self.records.setdefault((kind, name), []).extend(payloads)
        return self

    def naptr(self, name: str, order: int, pref: int, service: str, replacement: str) -> Zone:
        return self.add(
            dns.NAPTR, name, dns.Record_NAPTR(order, pref, b"s", service.encode(), b"", replacement.encode())
        )

    def srv(self, name: str, priority: int, weight: int, port: int, target: str) -> Zone:
        return self.add(dns.SRV, name, dns.Record_SRV(priority, weight, port, target.encode()))

    def a(self, name: str, *addresses: str) -> Zone:
        return self.add(dns.A, name, *(dns.Record_A(a) for a in addresses))

    def aaaa(self, name: str, *addresses: str) -> Zone:
        return self.add(dns.AAAA, name, *(dns.Record_AAAA(a) for a in addresses))

    def _lookup(self, kind: int, name: str) -> defer.Deferred[Any]:
        self.asked.append((dns.QUERY_TYPES[kind], name))
        if self.later:
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append(d)
            return d
        value = self.records.get((kind, name))
        if value is None:
            if any(n == name for _, n in self.records):
                return defer.succeed(([], [SOA], []))  # NODATA
            return defer.fail(nxdomain())
        if isinstance(value, BaseException):
            return defer.fail(value)
        return defer.succeed(([dns.RRHeader(name.encode(), kind, ttl=self.ttl, payload=p) for p in value], [], []))

    def lookupNamingAuthorityPointer(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(dns.NAPTR, name)

    def lookupService(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(dns.SRV, name)

    def lookupAddress(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(dns.A, name)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(dns.AAAA, name)
