"""Who we are when the operator did not say: the advertised host and the default domains."""

from __future__ import annotations

from sipproxy.transport.hosts import advertised_host, default_domains, listens_everywhere


def test_advertised_host_is_the_interface_when_one_is_given() -> None:
    assert advertised_host("192.0.2.5") == "192.0.2.5"
    assert advertised_host("2001:db8::5") == "2001:db8::5"


def test_listening_everywhere_advertises_a_routable_address_when_there_is_one() -> None:
    advertised = advertised_host("")
    assert advertised not in ("0.0.0.0", "::") and advertised == advertised_host("0.0.0.0") == advertised_host("::")


def test_default_domains_hold_localhost_the_interface_and_the_advertised_host() -> None:
    domains = default_domains("192.0.2.5", "sip.example.test")
    assert {"localhost", "127.0.0.1", "::1", "192.0.2.5", "sip.example.test"} <= set(domains)
    assert domains == sorted(domains) and all(d == d.lower() for d in domains)
    assert "192.0.2.5" not in default_domains("", "198.51.100.1")


def test_no_interface_or_a_wildcard_listens_everywhere() -> None:
    assert listens_everywhere("") and listens_everywhere("0.0.0.0") and listens_everywhere("::")
    assert not listens_everywhere("127.0.0.1") and not listens_everywhere("::1")
