"""RFC 3261 §16.3: request validation, loop detection, Max-Forwards."""

from __future__ import annotations

import pytest

try:
    from tests.proxy_helpers import LOCAL, Harness, binding, make_request
except ImportError:  # pragma: no cover - pytest's rootdir-less import mode
    from proxy_helpers import LOCAL, Harness, binding, make_request  # type: ignore[no-redef]

from sipproxy.errors import SipError
from sipproxy.proxy import ALLOW, ProxySettings
from sipproxy.proxy.routing import Locality
from sipproxy.proxy.validate import check_request, loop_part, make_branch, split_branch, validate_request


def test_unsupported_scheme_is_416() -> None:
    h = Harness()
    stx = h.send(make_request("INVITE", "tel:+15551234567"))
    assert stx.statuses == [416]
    assert stx.responses[0].to.tag  # a final response of ours carries a To tag
    assert h.tx.sent == []


def test_sips_is_accepted_as_a_scheme() -> None:
    h = Harness()
    stx = h.send(make_request("INVITE", "sips:carol@192.0.2.30"))
    assert stx.statuses == []
    (client,) = h.branches()
    assert client.target.transport == "TLS" and client.target.port == 5061


def test_max_forwards_zero_is_483() -> None:
    h = Harness()
    stx = h.send(make_request("INVITE", "sip:carol@192.0.2.30", max_forwards=0))
    assert stx.statuses == [483]
    assert h.tx.sent == []


def test_options_with_max_forwards_zero_is_answered_200_by_the_proxy() -> None:
    h = Harness()
    stx = h.send(make_request("OPTIONS", "sip:carol@192.0.2.30", max_forwards=0))
    (response,) = stx.responses
    assert response.status == 200
    assert response.get("Allow") == ALLOW
    assert response.to.tag
    assert h.tx.sent == []


def test_options_with_max_forwards_zero_is_the_same_200_as_the_servers_own() -> None:
    """§11.2 built once: the proxy's answer carries Supported and Server like the stack's."""
    h = Harness()
    stx = h.send(make_request("OPTIONS", "sip:carol@192.0.2.30", max_forwards=0))
    (response,) = stx.responses
    assert response.get("Accept") == "application/sdp"
    assert response.get("Supported") == "outbound, path"
    assert response.get("Server") == "sipproxy"


def test_options_with_max_forwards_zero_and_unknown_require_is_420() -> None:
    """As the final recipient the proxy is the OPTIONS's UAS (§8.2.2.3)."""
    h = Harness()
    stx = h.send(make_request("OPTIONS", "sip:carol@192.0.2.30", max_forwards=0, headers=("Require: foo",)))
    (response,) = stx.responses
    assert (response.status, response.get("Unsupported")) == (420, "foo")
    assert h.tx.sent == []


@pytest.mark.parametrize(
    ("uri", "max_forwards", "headers", "status"),
    [
        ("tel:+15551234567", 70, (), 416),
        ("sip:carol@192.0.2.30", 0, (), 483),
        ("sip:carol@192.0.2.30", 70, ("Proxy-Require: foo",), 420),
    ],
)
def test_check_request_refuses_by_raising_sip_error(
    uri: str, max_forwards: int, headers: tuple[str, ...], status: int
) -> None:
    locality = Locality(LOCAL, {"example.test"})
    request = make_request("INVITE", uri, max_forwards=max_forwards, headers=headers)
    with pytest.raises(SipError) as raised:
        check_request(request, locality, frozenset())
    assert raised.value.status == status
    assert check_request(make_request("OPTIONS", "sip:carol@192.0.2.30", max_forwards=0), locality, ()) is True
    assert check_request(make_request("INVITE", "sip:carol@192.0.2.30"), locality, ()) is False


def test_max_forwards_is_decremented() -> None:
    h = Harness()
    h.send(make_request("MESSAGE", "sip:carol@192.0.2.30", max_forwards=7))
    (client,) = h.branches("MESSAGE")
    assert client.request.max_forwards == 6


def test_missing_max_forwards_becomes_70() -> None:
    h = Harness()
    h.send(make_request("MESSAGE", "sip:carol@192.0.2.30", max_forwards=None))
    (client,) = h.branches("MESSAGE")
    assert client.request.max_forwards == 70


def test_default_max_forwards_is_a_setting() -> None:
    h = Harness(ProxySettings(default_max_forwards=20))
    h.send(make_request("MESSAGE", "sip:carol@192.0.2.30", max_forwards=None))
    assert h.branches("MESSAGE")[0].request.max_forwards == 20


def test_loop_is_482() -> None:
    """A request that comes back with our Via carrying the same loop part has looped."""
    h = Harness()
    h.send(make_request("INVITE", "sip:carol@192.0.2.30", call_id="loop@x"))
    (first,) = h.branches()
    looped = first.request.copy()
    looped.add("Via", "SIP/2.0/UDP 192.0.2.30:5060;branch=z9hG4bKback", first=True)
    # the far end sends it back unchanged (same Request-URI, tags, Call-ID, CSeq)
    looped.uri_text = "sip:carol@192.0.2.30"
    stx = h.send(looped)
    assert stx.statuses == [482]
    assert len(h.branches()) == 1


def test_spiral_is_not_a_loop() -> None:
    """Our Via with another loop part (the Request-URI changed): a spiral, forwarded again."""
    h = Harness()
    h.register(binding(contact="sip:bob@192.0.2.20"))
    h.send(make_request("INVITE", "sip:carol@192.0.2.30", call_id="spiral@x"))
    (first,) = h.branches()
    spiral = first.request.copy()
    spiral.add("Via", "SIP/2.0/UDP 192.0.2.30:5060;branch=z9hG4bKfwd", first=True)
    spiral.uri_text = "sip:bob@example.test"  # a forwarding service sent it to Bob, through us again
    stx = h.send(spiral)
    assert stx.statuses == []
    assert h.branches()[1].request.uri_text == "sip:bob@192.0.2.20"


def test_loop_part_ignores_max_forwards_and_top_via() -> None:
    a = make_request("INVITE", "sip:carol@192.0.2.30", max_forwards=70, branch="z9hG4bK1")
    b = make_request("INVITE", "sip:carol@192.0.2.30", max_forwards=12, branch="z9hG4bK2")
    assert loop_part(a) == loop_part(b)
    c = make_request("INVITE", "sip:dave@192.0.2.30")
    assert loop_part(a) != loop_part(c)
    d = make_request("INVITE", "sip:carol@192.0.2.30", cseq=2)
    assert loop_part(a) != loop_part(d)


def test_branch_round_trip() -> None:
    branch = make_branch("0123456789abcdef", "1f00")
    assert branch.startswith("z9hG4bK")
    assert split_branch(branch) == ("0123456789abcdef", "1f00")
    assert split_branch("z9hG4bKother") is None
    assert split_branch(None) is None


def test_unknown_proxy_require_is_420_with_unsupported() -> None:
    h = Harness()
    stx = h.send(make_request("INVITE", "sip:carol@192.0.2.30", headers=("Proxy-Require: foo, bar",)))
    (response,) = stx.responses
    assert response.status == 420
    assert response.get("Unsupported") == "foo, bar"


def test_supported_proxy_require_passes() -> None:
    h = Harness(ProxySettings(extensions=frozenset({"foo"})))
    stx = h.send(make_request("INVITE", "sip:carol@192.0.2.30", headers=("Proxy-Require: foo",)))
    assert stx.statuses == []
    assert len(h.branches()) == 1


def test_malformed_route_is_400_with_reason() -> None:
    h = Harness()
    stx = h.send(make_request("INVITE", "sip:carol@192.0.2.30", headers=("Route: <sip:bad host;lr>",)))
    (response,) = stx.responses
    assert response.status == 400
    assert "URI" in response.reason


def test_malformed_proxy_require_does_not_raise() -> None:
    h = Harness()
    stx = h.send(make_request("INVITE", "sip:carol@192.0.2.30", headers=("Route: <sip:192.0.2.9;lr",)))
    assert stx.statuses[0] == 400


def test_validate_request_returns_none_for_a_good_request() -> None:
    locality = Locality(LOCAL, {"example.test"})
    assert validate_request(make_request(), locality, frozenset(), "t") is None


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE", "SUBSCRIBE"])
def test_authorize_hook_runs_after_validation(method: str) -> None:
    calls = []

    def authorize(request, source):  # type: ignore[no-untyped-def]
        calls.append(request.method)
        from sipproxy.message import make_response

        return make_response(request, 407, to_tag="x")

    h = Harness(authorize=authorize)
    stx = h.send(make_request(method, "sip:carol@192.0.2.30"))
    assert stx.statuses == [407]
    assert calls == [method]
    assert h.tx.sent == []
    stx = h.send(make_request(method, "sip:carol@192.0.2.30", max_forwards=0))
    assert calls == [method]  # a 483 is decided before the hook runs
