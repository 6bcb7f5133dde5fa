"""The next-hop resolver (RFC 3263 §4.2, A/AAAA) against an in-process twisted.names double.

The double answers with the records and raises the errors a real
``twisted.names`` client does (``tests/integration/test_transport_dns.py``
runs the same resolver against a real DNS server on loopback).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs
from twisted.names import dns, error

from sipproxy.net import Target
from sipproxy.transport import Resolver

HOP = Target("TCP", "far.example.net", 5070)


def _nxdomain() -> error.DNSNameError:
    return error.DNSNameError(dns.Message(rCode=dns.ENAME))


class Names:
    """An ``IResolver`` double: ``a``/``aaaa`` map a name to addresses, or to the exception to fail with."""

    def __init__(self, a: dict[str, Any] | None = None, aaaa: dict[str, Any] | None = None) -> None:
        self.a = a or {}
        self.aaaa = aaaa or {}
        self.asked: list[tuple[str, str]] = []
        self.pending: list[defer.Deferred[Any]] = []

    def _answer(self, table: dict[str, Any], name: str, kind: int, record: Any) -> defer.Deferred[Any]:
        value = table.get(name, _nxdomain())
        if value == "later":
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append(d)
            return d
        if isinstance(value, BaseException):
            return defer.fail(value)
        answers = [dns.RRHeader(name, dns.CNAME, payload=dns.Record_CNAME(b"alias." + name.encode()))]
        answers += [dns.RRHeader(name, kind, payload=record(address)) for address in value]
        return defer.succeed((answers, [], []))

    def lookupAddress(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        self.asked.append(("A", name))
        return self._answer(self.a, name, dns.A, dns.Record_A)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        self.asked.append(("AAAA", name))
        return self._answer(self.aaaa, name, dns.AAAA, dns.Record_AAAA)


def resolve(resolver: Resolver, hop: Target = HOP) -> list[list[Target]]:
    calls: list[list[Target]] = []
    resolver(hop, calls.append)
    return calls


def test_ipv4_addresses_first_then_ipv6_keeping_transport_and_port() -> None:
    names = Names(a={"far.example.net": ["198.51.100.1", "198.51.100.2"]}, aaaa={"far.example.net": ["2001:db8::1"]})
    [targets] = resolve(Resolver(names=names))
    assert targets == [
        Target("TCP", "198.51.100.1", 5070),
        Target("TCP", "198.51.100.2", 5070),
        Target("TCP", "2001:db8::1", 5070),
    ]


def test_only_ipv6() -> None:
    names = Names(a={"far.example.net": []}, aaaa={"far.example.net": ["2001:db8::1"]})
    assert resolve(Resolver(names=names)) == [[Target("TCP", "2001:db8::1", 5070)]]


def test_ip_literals_are_their_own_answer_without_a_lookup() -> None:
    names = Names()
    resolver = Resolver(names=names)
    assert resolve(resolver, Target("UDP", "192.0.2.9", 5060)) == [[Target("UDP", "192.0.2.9", 5060)]]
    assert resolve(resolver, Target("UDP", "[2001:db8::9]", 5060)) == [[Target("UDP", "2001:db8::9", 5060)]]
    assert names.asked == []


def test_an_invalid_name_is_an_empty_list_without_a_lookup() -> None:
    """RFC 6761 §6.4: the Contact host of a WebSocket phone (``df7jal23ls0d.invalid``) is never sent to DNS."""
    names = Names(a={"df7jal23ls0d.invalid": ["192.0.2.66"]})
    with capturedLogs() as events:
        assert resolve(Resolver(names=names), Target("WS", "df7jal23ls0d.INVALID", 443)) == [[]]
    assert names.asked == []
    [warning] = [e for e in events if e["log_level"] >= LogLevel.info]
    assert warning["host"] == "df7jal23ls0d.INVALID"
    assert warning["reason"] == ".invalid is never looked up (RFC 6761 §6.4)"


def test_an_unknown_name_is_an_empty_list_and_one_readable_warning() -> None:
    with capturedLogs() as events:
        assert resolve(Resolver(names=Names())) == [[]]
    [warning] = [e for e in events if e["log_level"] >= LogLevel.info]
    assert warning["log_level"] == LogLevel.warn
    assert warning["log_format"] == "Could not resolve {host}: {reason}"
    assert warning["host"] == "far.example.net"
    assert warning["reason"] == "no such domain (NXDOMAIN)"
    assert "Message" not in repr({k: v for k, v in warning.items() if k != "log_logger"})


def test_each_dns_failure_reads_as_what_happened() -> None:
    cases = [
        (error.DNSServerError(dns.Message(rCode=dns.ESERVER)), "the DNS server failed (SERVFAIL)"),
        (error.DNSQueryRefusedError(dns.Message(rCode=dns.EREFUSED)), "the DNS server refused the query (REFUSED)"),
        (error.DNSQueryTimeoutError(dns.Query(b"far.example.net")), "no answer from the DNS server (timeout)"),
        (defer.TimeoutError(), "no answer from the DNS server (timeout)"),
        (error.DomainError("far.example.net"), "no such domain"),
        (RuntimeError("socket gone"), "RuntimeError while resolving"),
    ]
    for exc, reason in cases:
        names = Names(a={"far.example.net": exc}, aaaa={"far.example.net": exc})
        with capturedLogs() as events:
            assert resolve(Resolver(names=names)) == [[]]
        [warning] = [e for e in events if e["log_level"] >= LogLevel.info]
        assert warning["reason"] == reason


def test_a_name_without_address_records() -> None:
    names = Names(a={"far.example.net": []}, aaaa={"far.example.net": []})
    with capturedLogs() as events:
        assert resolve(Resolver(names=names)) == [[]]
    [warning] = [e for e in events if e["log_level"] >= LogLevel.info]
    assert warning["reason"] == "no A or AAAA record"


def test_one_family_failing_does_not_lose_the_other() -> None:
    names = Names(a={"far.example.net": ["198.51.100.1"]}, aaaa={"far.example.net": defer.TimeoutError()})
    with capturedLogs() as events:
        assert resolve(Resolver(names=names)) == [[Target("TCP", "198.51.100.1", 5070)]]
    assert [e for e in events if e["log_level"] >= LogLevel.info] == []


def test_the_answer_may_come_later_and_comes_once() -> None:
    names = Names(a={"far.example.net": "later"}, aaaa={"far.example.net": "later"})
    calls = resolve(Resolver(names=names))
    assert calls == []
    a, aaaa = names.pending
    aaaa.errback(_nxdomain())
    assert calls == []
    a.callback(([dns.RRHeader(b"far.example.net", dns.A, payload=dns.Record_A("198.51.100.3"))], [], []))
    assert calls == [[Target("TCP", "198.51.100.3", 5070)]]


def test_never_raises_into_the_caller() -> None:
    class Broken:
        def lookupAddress(self, name: str, timeout: Any = None) -> Any:
            raise OSError("no resolver")

    with capturedLogs() as events:
        assert resolve(Resolver(names=Broken())) == [[]]
    assert any("log_failure" in e for e in events)

    def callback(targets: list[Target]) -> None:
        raise RuntimeError("bug above")

    names = Names(a={"far.example.net": ["198.51.100.1"]}, aaaa={"far.example.net": []})
    with capturedLogs() as events:
        Resolver(names=names)(HOP, callback)  # does not raise
    [bug] = [e for e in events if "log_failure" in e]
    assert bug["host"] == "far.example.net"


def test_reading_resolv_conf_logs_at_debug_level_only(tmp_path: Any) -> None:
    from twisted.internet.task import Clock

    from sipproxy.transport.resolve import quiet_resolver

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\n")
    with capturedLogs() as events:
        quiet_resolver(Clock(), resolv_conf=str(conf).encode(), hosts_file=str(tmp_path / "hosts").encode())
    assert events and {e["log_level"] for e in events} == {LogLevel.debug}
    assert any("192.0.2.53" in e.get("log_text", "") for e in events)


# -- RFC 3263 §4.1/§4.2: NAPTR, SRV, then A/AAAA -------------------------------

from random import Random  # noqa: E402

from sipproxy.net import NextHop, Resolved  # noqa: E402
from tests.dns_helpers import Zone  # noqa: E402


def _other() -> Zone:
    """other.example: NAPTR UDP (order 10) then TCP; SRV for UDP in two priorities; A and AAAA."""
    zone = Zone()
    zone.naptr("other.example", 20, 10, "SIP+D2T", "_sip._tcp.other.example")
    zone.naptr("other.example", 10, 10, "SIP+D2U", "_sip._udp.other.example")
    zone.naptr("other.example", 5, 10, "SIPS+D2T", "_sips._tcp.other.example")
    zone.srv("_sip._udp.other.example", 20, 0, 5080, "sip3.other.example")
    zone.srv("_sip._udp.other.example", 10, 10, 5060, "sip1.other.example")
    zone.srv("_sip._tcp.other.example", 10, 10, 5070, "sip1.other.example")
    zone.srv("_sips._tcp.other.example", 10, 10, 5061, "tls.other.example")
    zone.a("sip1.other.example", "192.0.2.1").aaaa("sip1.other.example", "2001:db8::1")
    zone.a("sip3.other.example", "192.0.2.3")
    zone.a("tls.other.example", "192.0.2.9")
    zone.a("other.example", "192.0.2.100")
    return zone


def _hop(uri_part: str) -> NextHop:
    from sipproxy.message import parse_uri
    from sipproxy.proxy.targets import uri_hop

    return uri_hop(parse_uri(uri_part))  # type: ignore[arg-type]


def _resolve(zone: Zone, hop: NextHop | Target, **kw: Any) -> Resolved:
    resolver = Resolver(names=zone, rng=Random(1), **kw)
    [targets] = resolve(resolver, hop)  # type: ignore[arg-type]
    assert isinstance(targets, Resolved)
    return targets


def test_naptr_picks_the_transport_and_srv_the_order() -> None:
    zone = _other()
    targets = _resolve(zone, _hop("sip:bob@other.example"))
    assert targets == [
        Target("UDP", "192.0.2.1", 5060),
        Target("UDP", "2001:db8::1", 5060),
        Target("UDP", "192.0.2.3", 5080),
    ]
    assert targets.how == "SRV _sip._udp.other.example"
    assert targets.names[Target("UDP", "192.0.2.3", 5080)] == "sip3.other.example:5080"
    assert zone.asked[:2] == [("NAPTR", "other.example"), ("SRV", "_sip._udp.other.example")]


def test_the_naptr_record_of_a_transport_we_lack_is_skipped() -> None:
    """SIPS+D2T comes first in the zone; without TLS it is skipped; with it, it is chosen."""
    assert _resolve(_other(), _hop("sip:bob@other.example"))[0].transport == "UDP"
    [first, *_] = _resolve(_other(), _hop("sip:bob@other.example"), transports=("UDP", "TCP", "TLS"))
    assert first == Target("TLS", "192.0.2.9", 5061)


def test_sips_takes_the_tls_target() -> None:
    targets = _resolve(_other(), _hop("sips:bob@other.example"), transports=("UDP", "TCP", "TLS"))
    assert targets == [Target("TLS", "192.0.2.9", 5061)]
    assert targets.how == "SRV _sips._tcp.other.example"


def test_sips_without_tls_here_is_the_default_tls_port_of_the_host() -> None:
    """Nothing secure to use: the A record at 5061 over TLS, which the transport then refuses (§16.9)."""
    assert _resolve(_other(), _hop("sips:bob@other.example")) == [Target("TLS", "192.0.2.100", 5061)]


def test_a_transport_parameter_skips_naptr() -> None:
    zone = _other()
    assert _resolve(zone, _hop("sip:bob@other.example;transport=tcp")) == [
        Target("TCP", "192.0.2.1", 5070),
        Target("TCP", "2001:db8::1", 5070),
    ]
    assert ("NAPTR", "other.example") not in zone.asked


def test_an_explicit_port_skips_naptr_and_srv() -> None:
    zone = _other()
    assert _resolve(zone, _hop("sip:bob@other.example:5099")) == [Target("UDP", "192.0.2.100", 5099)]
    assert {kind for kind, _ in zone.asked} == {"A", "AAAA"}


def test_a_numeric_host_asks_nothing() -> None:
    zone = _other()
    assert _resolve(zone, _hop("sip:bob@[2001:db8::7]")) == [Target("UDP", "2001:db8::7", 5060)]
    assert zone.asked == []


def test_without_naptr_the_srv_names_of_our_transports_in_turn() -> None:
    zone = Zone().srv("_sip._tcp.plain.example", 0, 0, 5062, "sip.plain.example").a("sip.plain.example", "192.0.2.44")
    targets = _resolve(zone, _hop("sip:bob@plain.example"))
    assert targets == [Target("TCP", "192.0.2.44", 5062)]
    assert zone.asked[:3] == [
        ("NAPTR", "plain.example"),
        ("SRV", "_sip._udp.plain.example"),
        ("SRV", "_sip._tcp.plain.example"),
    ]


def test_without_naptr_and_srv_the_address_at_the_default_port() -> None:
    targets = _resolve(Zone().a("plain.example", "192.0.2.45"), _hop("sip:bob@plain.example"))
    assert targets == [Target("UDP", "192.0.2.45", 5060)]
    assert targets.how == "A/AAAA plain.example"


def test_answers_are_cached_the_next_call_asks_nothing() -> None:
    zone = _other()
    resolver = Resolver(names=zone, rng=Random(1))
    first = resolve(resolver, _hop("sip:bob@other.example"))  # type: ignore[arg-type]
    asked = len(zone.asked)
    assert resolve(resolver, _hop("sip:bob@other.example")) == first  # type: ignore[arg-type]
    assert len(zone.asked) == asked


def test_weights_decide_on_a_fixed_seed() -> None:
    zone = Zone().naptr("w.example", 10, 10, "SIP+D2U", "_sip._udp.w.example")
    zone.srv("_sip._udp.w.example", 10, 1, 5060, "a.w.example").srv(
        "_sip._udp.w.example", 10, 1000, 5060, "b.w.example"
    )
    zone.a("a.w.example", "192.0.2.1").a("b.w.example", "192.0.2.2")
    firsts = {seed: [t.host for t in _resolve_seed(zone, seed)] for seed in range(5)}
    assert all(order == ["192.0.2.2", "192.0.2.1"] for order in firsts.values())


def _resolve_seed(zone: Zone, seed: int) -> list[Target]:
    resolver = Resolver(names=zone, rng=Random(seed))
    [targets] = resolve(resolver, _hop("sip:bob@w.example"))  # type: ignore[arg-type]
    return targets


def test_nothing_found_is_one_readable_line_naming_each_step() -> None:
    with capturedLogs() as events:
        assert _resolve(Zone(), _hop("sip:bob@gone.example")) == []
    [warning] = [e for e in events if e["log_level"] >= LogLevel.info]
    assert warning["log_format"].format(**warning) == (
        "Could not resolve gone.example: NAPTR gone.example: no such domain (NXDOMAIN); "
        "SRV _sip._udp.gone.example: no such domain (NXDOMAIN); "
        "SRV _sip._tcp.gone.example: no such domain (NXDOMAIN); no such domain (NXDOMAIN)"
    )


def test_every_query_has_a_timeout_and_a_timeout_is_a_readable_line() -> None:
    timeouts: list[Any] = []

    class Slow(Zone):
        def _lookup(self, kind: int, name: str) -> defer.Deferred[Any]:
            return defer.fail(defer.TimeoutError())

        def lookupAddress(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
            timeouts.append(timeout)
            return super().lookupAddress(name, timeout)

    zone = Slow()
    with capturedLogs() as events:
        assert _resolve(zone, _hop("sip:bob@slow.example:5060")) == []
    assert timeouts == [(1, 3)]  # 1 s, then 3 s more: the lookup has failed
    [warning] = [e for e in events if e["log_level"] >= LogLevel.info]
    assert warning["log_format"].format(**warning) == (
        "Could not resolve slow.example: no answer from the DNS server (timeout)"
    )
