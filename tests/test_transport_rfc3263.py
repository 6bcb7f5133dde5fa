"""RFC 3263 §4.1 NAPTR choice and RFC 2782 SRV order, on fixed random seeds."""

from __future__ import annotations

from collections import Counter
from random import Random

from sipproxy.transport.rfc3263 import NaptrRecord, SrvRecord, naptr_choices, srv_name, srv_order

NAPTRS = [
    NaptrRecord(50, 50, "s", "SIP+D2U", "_sip._udp.example.com"),
    NaptrRecord(90, 50, "s", "SIP+D2T", "_sip._tcp.example.com"),
    NaptrRecord(30, 50, "s", "SIPS+D2T", "_sips._tcp.example.com"),
    NaptrRecord(10, 10, "u", "E2U+sip", ""),  # ENUM, not for us
    NaptrRecord(20, 10, "s", "SIP+D2S", "_sip._sctp.example.com"),  # no SCTP here
]


def test_naptr_records_by_order_among_the_transports_we_have() -> None:
    assert naptr_choices(NAPTRS, secure=False, supported=("UDP", "TCP")) == [
        ("UDP", "_sip._udp.example.com"),
        ("TCP", "_sip._tcp.example.com"),
    ]


def test_a_sip_uri_may_take_tls_when_it_is_preferred_and_we_have_it() -> None:
    assert naptr_choices(NAPTRS, secure=False, supported=("UDP", "TCP", "TLS"))[0] == ("TLS", "_sips._tcp.example.com")


def test_a_sips_uri_takes_only_the_secure_services() -> None:
    assert naptr_choices(NAPTRS, secure=True, supported=("UDP", "TCP", "TLS")) == [("TLS", "_sips._tcp.example.com")]
    assert naptr_choices(NAPTRS, secure=True, supported=("UDP", "TCP")) == []


def test_preference_breaks_ties_within_an_order() -> None:
    records = [
        NaptrRecord(10, 20, "S", "SIP+D2T", "_sip._tcp.example.com."),
        NaptrRecord(10, 10, "S", "sip+d2u", "_sip._udp.example.com."),
    ]
    assert naptr_choices(records, False, ("UDP", "TCP")) == [
        ("UDP", "_sip._udp.example.com"),
        ("TCP", "_sip._tcp.example.com"),
    ]


def test_srv_names() -> None:
    assert srv_name("UDP", "example.com") == "_sip._udp.example.com"
    assert srv_name("tcp", "example.com") == "_sip._tcp.example.com"
    assert srv_name("TLS", "example.com") == "_sips._tcp.example.com"


def test_lower_priority_first_whatever_the_weights() -> None:
    records = [SrvRecord(20, 1000, 5060, "b.example.com"), SrvRecord(10, 0, 5060, "a.example.com")]
    for seed in range(20):
        assert [r.target for r in srv_order(records, Random(seed))] == ["a.example.com", "b.example.com"]


def test_weights_share_the_first_place_within_a_priority() -> None:
    """RFC 2782: weight 30 against weight 10 comes first about three times in four.

    Exactly 30 in 41: the number drawn runs from 0 to 40 inclusive, and 0 to
    10 pick the first record, as RFC 2782 words it.
    """
    records = [SrvRecord(10, 10, 5060, "light.example.com"), SrvRecord(10, 30, 5060, "heavy.example.com")]
    rng = Random(1234)
    firsts = Counter(srv_order(records, rng)[0].target for _ in range(4000))
    assert 0.70 < firsts["heavy.example.com"] / 4000 < 0.77
    assert firsts["heavy.example.com"] + firsts["light.example.com"] == 4000


def test_the_same_seed_gives_the_same_order() -> None:
    records = [SrvRecord(10, w, 5060, f"s{w}.example.com") for w in (5, 10, 20, 40)]
    assert srv_order(records, Random(7)) == srv_order(records, Random(7))
    orders = {tuple(r.target for r in srv_order(records, Random(seed))) for seed in range(50)}
    assert len(orders) > 3  # really random across seeds


def test_weight_zero_is_rarely_first_but_never_lost() -> None:
    records = [SrvRecord(10, 0, 5060, "zero.example.com"), SrvRecord(10, 100, 5060, "hundred.example.com")]
    rng = Random(99)
    orders = [srv_order(records, rng) for _ in range(1000)]
    assert all(len(o) == 2 for o in orders)
    assert sum(o[0].target == "zero.example.com" for o in orders) < 30  # 1 chance in 101


def test_a_dot_target_means_no_service() -> None:
    assert srv_order([SrvRecord(0, 0, 0, ".")], Random(1)) == []
