"""Routing explain (``Proxy.explain``): the §16 steps for a request, through the real proxy, nothing sent."""

from __future__ import annotations

from sipproxy.net import Target

try:
    from tests.proxy_helpers import Harness, binding
except ImportError:  # pragma: no cover
    from proxy_helpers import Harness, binding  # type: ignore[no-redef]

BOB = "sip:bob@example.test"


def bob_on_three_phones(**options: object) -> Harness:
    h = Harness(**options)  # type: ignore[arg-type]
    h.register(
        binding(contact="sip:bob@192.0.2.22:5060;transport=tcp", q=0.5, transport="TCP", source=("192.0.2.22", 40000)),
        binding(contact="sip:bob@192.0.2.20:5060", q=1.0),
        binding(contact="sip:bob@192.0.2.21:5060", q=1.0, source=("192.0.2.21", 5060)),
    )
    return h


def test_a_registered_aor_lists_its_contacts_in_q_order_and_sends_nothing() -> None:
    h = bob_on_three_phones()
    answer = h.proxy.explain(BOB, "sip:alice@example.test")
    assert [(t["group"], t["q"], t["target"]) for t in answer["targets"]] == [
        (1, 1.0, "sip:bob@192.0.2.20:5060"),
        (1, 1.0, "sip:bob@192.0.2.21:5060"),
        (2, 0.5, "sip:bob@192.0.2.22:5060;transport=tcp"),
    ]
    assert answer["result"] == "would fork: 2 in parallel (q 1), then 1 (q 0.5)"
    assert [s["section"] for s in answer["steps"]] == ["§7, §25", "§16.3", "§16.4", "§16.5", "§16.6"]
    assert answer["steps"][3]["details"] == [
        "sip:bob@example.test, in q order:",
        "q 1: 2 contacts in parallel",
        "q 0.5: 1 contact",
    ]
    assert answer["targets"][2]["how"] == "over the TCP connection its REGISTER came on (192.0.2.22:40000)"
    assert answer["targets"][2]["next_hop"] == {"transport": "TCP", "host": "192.0.2.22", "port": 40000}
    assert "Record-Route added" in answer["steps"][4]["details"][0]
    assert h.tx.sent == [] and h.stateless == [] and h.dns_queries == []


def test_a_closed_flow_falls_back_to_the_contact() -> None:
    h = bob_on_three_phones(flow_open=lambda target: target != Target("TCP", "192.0.2.22", 40000))
    tcp = h.proxy.explain(BOB)["targets"][2]
    assert tcp["how"] == "its TCP connection is closed: the Contact, TCP 192.0.2.22:5060"


def test_no_binding_is_480() -> None:
    answer = Harness().proxy.explain("sip:carol@example.test")
    assert answer["result"] == "would answer 480 Temporarily Unavailable: no binding for sip:carol@example.test"
    assert answer["targets"] == []


def test_a_foreign_domain_goes_to_the_request_uri_through_dns() -> None:
    h = Harness()
    answer = h.proxy.explain("sip:carol@far.example.net;transport=tcp", method="MESSAGE")
    (target,) = answer["targets"]
    assert target["next_hop"] == {"transport": "TCP", "host": "far.example.net", "port": 5060}
    assert target["how"] == (
        "TCP to far.example.net:5060 (DNS: SRV for TCP at far.example.net, else A/AAAA port 5060 (RFC 3263 §4.1, §4.2))"
    )
    naptr = h.proxy.explain("sip:carol@far.example.net")["targets"][0]["how"]
    assert naptr.endswith("(DNS: NAPTR of far.example.net, then SRV, else A/AAAA port 5060 (RFC 3263 §4.1, §4.2))")
    a_only = h.proxy.explain("sip:carol@far.example.net:5080")["targets"][0]["how"]
    assert a_only.endswith("(DNS: A/AAAA of far.example.net (RFC 3263 §4.2))")
    assert "no Record-Route (MESSAGE creates no dialog)" in answer["steps"][4]["details"][0]
    assert h.dns_queries == []


def test_refusals_say_what_the_caller_would_get() -> None:
    proxy = Harness().proxy
    assert proxy.explain("tel:+15551234")["result"] == "would answer 416 Unsupported URI Scheme"
    assert proxy.explain(BOB, method="REGISTER")["result"] == "answered by the registrar (§10.3), not proxied"
    assert proxy.explain("sip:bob@[::1")["result"] == "would answer 400 Bad Request-URI"
    assert proxy.explain("sip:bob@example.test\r\nX: injected")["steps"][0]["outcome"] == "refused"
    assert proxy.explain(BOB, method="IN VITE")["steps"][0]["outcome"] == "refused"


def test_the_authorization_hook_is_named_when_it_asks_for_credentials() -> None:
    details = Harness().proxy.explain(BOB, authorizes=True)["steps"][1]["details"]
    assert "step 6: the authorization hook asks for credentials first (digest, --users)" in details
