"""sipproxy.locality: the one answer to "is this URI us", and the canonical address-of-record."""

from __future__ import annotations

import pytest

from sipproxy.locality import Domains, LocalAddress, Locality, canonical_aor
from sipproxy.message import SipURI, parse_uri, parse_via

LOCAL = LocalAddress("127.0.0.1", 5070)
#: Started with ``--domain example.test`` only: our address is not one of the domains.
LOCALITY = Locality(LOCAL, Domains(["example.test"]))


def sip(text: str) -> SipURI:
    uri = parse_uri(text)
    assert isinstance(uri, SipURI)
    return uri


@pytest.mark.parametrize(
    ("uri", "us"),
    [
        ("sip:127.0.0.1:5070", True),  # what load balancers and monitoring send
        ("sip:127.0.0.1", True),
        ("sip:ping@127.0.0.1:5070", True),
        ("sip:127.0.0.1:5060", False),  # another server on this host
        ("sip:bob@127.0.0.1:5999", False),  # a user agent next to us
        ("sip:example.test", True),
        ("sip:EXAMPLE.test.:5070", True),
        ("sip:example.test:5080", False),
        ("sips:example.test", True),
        ("sip:other.test", False),
        ("tel:+15551234567", False),
    ],
)
def test_is_us_knows_our_address_and_port_as_well_as_the_domains(uri: str, us: bool) -> None:
    assert LOCALITY.is_us(parse_uri(uri)) is us


@pytest.mark.parametrize(
    ("uri", "ours"),
    [
        ("sip:example.test:5080", True),  # §10.3 step 1: the domain, whatever the port
        ("sip:127.0.0.1:5070", True),  # us
        ("sip:127.0.0.1:5060", False),  # our address but not our port, and not a domain
        ("sip:other.test", False),
        ("tel:+15551234567", False),
    ],
)
def test_is_us_or_our_domain_is_the_registrars_step_1(uri: str, ours: bool) -> None:
    assert LOCALITY.is_us_or_our_domain(parse_uri(uri)) is ours


def test_without_a_local_address_only_the_domains_on_port_5060_are_us() -> None:
    locality = Locality(None, {"example.test"})
    assert locality.is_us(sip("sip:example.test"))
    assert locality.is_us(sip("sip:example.test:5060"))
    assert not locality.is_us(sip("sip:example.test:5070"))
    assert not locality.is_us(sip("sip:127.0.0.1"))
    assert not locality.is_our_via(parse_via("SIP/2.0/UDP example.test;branch=z9hG4bK1"))


def test_our_via_is_our_address_and_port() -> None:
    assert LOCALITY.is_our_via(parse_via("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1"))
    assert not LOCALITY.is_our_via(parse_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"))
    assert not LOCALITY.is_our_via(parse_via("SIP/2.0/UDP example.test:5070;branch=z9hG4bK1"))


def test_ipv6_address_with_or_without_brackets() -> None:
    locality = Locality(LocalAddress("[2001:DB8::1]", 5060), Domains(["example.test"]))
    assert locality.is_us(sip("sip:[2001:db8::1]"))
    assert locality.is_us(sip("sip:[2001:db8::1]:5060"))
    assert LocalAddress("2001:db8::1", 5060).hostport == "[2001:db8::1]:5060"


@pytest.mark.parametrize(
    ("uri", "aor"),
    [
        ("sip:carol@127.0.0.1:5060", "sip:carol@127.0.0.1"),  # baresip's To with the default domains
        ("sip:carol@127.0.0.1", "sip:carol@127.0.0.1"),
        ("sip:Carol:secret@EXAMPLE.test:5070;transport=tcp;user=phone?Subject=x", "sip:Carol@example.test"),
        ("sip:%63arol@example.test", "sip:carol@example.test"),
        ("sips:carol@[2001:DB8::1]:5061", "sips:carol@[2001:db8::1]"),
    ],
)
def test_canonical_aor_is_user_at_domain_without_port_or_parameters(uri: str, aor: str) -> None:
    assert canonical_aor(sip(uri)) == aor


def test_domains_compare_canonical_hosts() -> None:
    domains = Domains(["Example.TEST.", "[2001:db8::1]", ""])
    assert "example.test" in domains and "2001:DB8::1" in domains
    assert 5060 not in domains
    assert list(domains) == ["2001:db8::1", "example.test"]
