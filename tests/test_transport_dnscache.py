"""The DNS cache: TTLs, negative answers (RFC 2308), failures not kept, one query per name at a time; task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns, error

from sipproxy.transport.dnscache import DNSCache
from tests.dns_helpers import Zone


def _cache(zone: Zone) -> tuple[DNSCache, Clock]:
    clock = Clock()
    return DNSCache(lambda: zone, clock), clock


def _result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    [value] = out
    return value


def test_an_answer_is_kept_for_its_ttl() -> None:
    zone = Zone(ttl=120).a("sip.example.com", "192.0.2.1")
    cache, clock = _cache(zone)
    [record] = _result(cache.lookup(dns.A, "sip.example.com"))
    assert record.payload.dottedQuad() == "192.0.2.1"
    clock.advance(119)
    _result(cache.lookup(dns.A, "SIP.example.com."))
    assert zone.asked == [("A", "sip.example.com")]
    clock.advance(1)
    _result(cache.lookup(dns.A, "sip.example.com"))
    assert zone.asked == [("A", "sip.example.com")] * 2


def test_no_such_domain_is_kept_for_the_soa_minimum() -> None:
    zone = Zone()
    cache, clock = _cache(zone)
    assert _result(cache.lookup(dns.SRV, "_sip._udp.gone.example.com")).check(error.DNSNameError)
    clock.advance(59)
    assert _result(cache.lookup(dns.SRV, "_sip._udp.gone.example.com")).check(error.DNSNameError)
    assert len(zone.asked) == 1
    clock.advance(1)  # RFC 2308 §5: min(SOA TTL 300, minimum 60)
    _result(cache.lookup(dns.SRV, "_sip._udp.gone.example.com")).trap(error.DNSNameError)
    assert len(zone.asked) == 2


def test_no_such_record_is_kept_too() -> None:
    zone = Zone().a("sip.example.com", "192.0.2.1")
    cache, clock = _cache(zone)
    assert _result(cache.lookup(dns.AAAA, "sip.example.com")) == []
    clock.advance(30)
    assert _result(cache.lookup(dns.AAAA, "sip.example.com")) == []
    assert zone.asked == [("AAAA", "sip.example.com")]


def test_a_timeout_is_not_kept_the_next_call_asks_again() -> None:
    zone = Zone()
    zone.records[(dns.A, "slow.example.com")] = defer.TimeoutError()
    cache, _ = _cache(zone)
    _result(cache.lookup(dns.A, "slow.example.com")).trap(defer.TimeoutError)
    _result(cache.lookup(dns.A, "slow.example.com")).trap(defer.TimeoutError)
    assert len(zone.asked) == 2


def test_lookups_while_one_is_under_way_wait_for_it() -> None:
    zone = Zone()
    zone.later = True
    cache, _ = _cache(zone)
    first, second = cache.lookup(dns.A, "sip.example.com"), cache.lookup(dns.A, "sip.example.com")
    assert len(zone.asked) == 1
    record = dns.RRHeader(b"sip.example.com", dns.A, ttl=60, payload=dns.Record_A("192.0.2.7"))
    zone.pending[0].callback(([record], [], []))
    assert _result(first) == _result(second) == [record]


def test_a_ttl_of_zero_is_not_kept() -> None:
    zone = Zone(ttl=0).a("sip.example.com", "192.0.2.1")
    cache, _ = _cache(zone)
    _result(cache.lookup(dns.A, "sip.example.com"))
    _result(cache.lookup(dns.A, "sip.example.com"))
    assert len(zone.asked) == 2
    assert len(cache) == 0


def test_bounded() -> None:
    zone = Zone()
    for n in range(5):
        zone.a(f"h{n}.example.com", "192.0.2.1")
    clock = Clock()
    cache = DNSCache(lambda: zone, clock, max_entries=3)
    for n in range(5):
        _result(cache.lookup(dns.A, f"h{n}.example.com"))
    assert len(cache) == 3
