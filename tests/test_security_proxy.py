"""The proxy's challenge (RFC 3261 §16.3 step 6, §22.3) and the signed Record-Route that marks our dialogs."""

from __future__ import annotations

from sipproxy.message import Response

try:
    from tests.security_fakes import (
        BOB_ADDR,
        PROXY,
        FakeServer,
        authorization,
        challenges,
        request,
        sent_to,
    )
except ImportError:  # pragma: no cover
    from security_fakes import (  # type: ignore[no-redef]
        BOB_ADDR,
        PROXY,
        FakeServer,
        authorization,
        challenges,
        request,
        sent_to,
    )


def registered() -> FakeServer:
    """A server where bob registered (authenticated) from 192.0.2.20."""
    server = FakeServer()
    assert server.register("bob", addr=BOB_ADDR).status == 200
    return server


def test_invite_from_our_user_without_credentials_gets_407() -> None:
    server = registered()
    out = server.send(request())
    [response] = [m for m, a in out if isinstance(m, Response) and m.status >= 200]
    assert response.status == 407
    assert [c["algorithm"] for c in challenges(response, "proxy-authenticate")] == ["MD5"]  # a 407 never probes
    assert not response.has("www-authenticate")
    assert sent_to(server, out, BOB_ADDR) == []


def test_invite_with_credentials_is_proxied_without_our_credentials() -> None:
    server = registered()
    challenge = server.final(request(call_id="c2"))
    auth = authorization(challenge, "alice", "alice-pw", "INVITE", "sip:bob@example.test", header="proxy-authenticate")
    other = 'Digest username="alice", realm="other.test", nonce="n", uri="sip:bob@example.test", response="00"'
    out = server.send(
        request(call_id="c2", cseq=2, headers=(f"Proxy-Authorization: {auth}", f"Proxy-Authorization: {other}"))
    )
    [forwarded] = sent_to(server, out, BOB_ADDR)
    assert forwarded.method == "INVITE"
    assert forwarded.get_all("proxy-authorization") == [other]  # ours consumed (§22.3), others' forwarded
    assert server.metrics.auth_failures._value.get() == 0


def test_invite_with_another_users_credentials_gets_403() -> None:
    server = registered()
    challenge = server.final(request(call_id="c3"))
    auth = authorization(challenge, "bob", "bob-pw", "INVITE", "sip:bob@example.test", header="proxy-authenticate")
    response = server.final(request(call_id="c3", cseq=2, headers=(f"Proxy-Authorization: {auth}",)))
    assert response.status == 403
    assert "From" in response.reason


def test_invite_from_a_foreign_domain_to_our_user_is_not_challenged() -> None:
    server = registered()
    out = server.send(request(from_="sip:carlos@elsewhere.test", addr=("198.51.100.5", 5060)), ("198.51.100.5", 5060))
    assert [m.method for m in sent_to(server, out, BOB_ADDR)] == ["INVITE"]


def test_relaying_from_a_foreign_domain_to_a_foreign_domain_is_challenged() -> None:
    server = registered()
    addr = ("198.51.100.5", 5060)
    response = server.final(
        request(uri="sip:x@third.test", to="sip:x@third.test", from_="sip:y@elsewhere.test", addr=addr), addr
    )
    assert response.status == 407


def test_ack_cancel_and_in_dialog_requests_are_not_challenged() -> None:
    server = registered()
    route = f"Route: <sip:{PROXY}:5060;lr;dt={server.security.dialog_token('call-1')}>"
    # in-dialog BYE: To tag and our Record-Route on top
    out = server.send(request("BYE", "sip:bob@192.0.2.20:5060", to_tag="b1", headers=(route,)))
    assert [m.method for m in sent_to(server, out, BOB_ADDR)] == ["BYE"]
    # ACK for a 2xx: forwarded statelessly, never answered
    out = server.send(request("ACK", "sip:bob@192.0.2.20:5060", to_tag="b1", headers=(route,)))
    assert [m.method for m in sent_to(server, out, BOB_ADDR)] == ["ACK"]
    # CANCEL for an unknown INVITE: 481 from the proxy, not 407
    assert server.final(request("CANCEL", call_id="nothing")).status == 481
    assert server.metrics.auth_failures._value.get() == 0


def test_cancel_of_an_authenticated_invite_is_not_challenged() -> None:
    server = registered()
    challenge = server.final(request(call_id="c4"))
    auth = authorization(challenge, "alice", "alice-pw", "INVITE", "sip:bob@example.test", header="proxy-authenticate")
    server.send(request(call_id="c4", cseq=2, branch="z9hG4bKinv4", headers=(f"Proxy-Authorization: {auth}",)))
    responses = server.responses(request("CANCEL", call_id="c4", cseq=2, branch="z9hG4bKinv4"))
    assert [r.status for r in responses if r.cseq.method == "CANCEL"] == [200]


def test_to_tag_without_our_route_is_treated_as_out_of_dialog() -> None:
    server = registered()
    assert server.final(request("BYE", "sip:bob@192.0.2.20:5060", to_tag="b1")).status == 407
    other_route = "Route: <sip:198.51.100.9;lr>"
    assert server.final(request("MESSAGE", to_tag="b1", headers=(other_route,))).status == 407


def test_a_forged_route_to_us_does_not_skip_the_challenge() -> None:
    """Only the Record-Route we placed for this Call-ID (signed) marks a request as in-dialog."""
    server = registered()
    unsigned = f"Route: <sip:{PROXY}:5060;lr>"
    other_dialog = f"Route: <sip:{PROXY}:5060;lr;dt={server.security.dialog_token('another-call')}>"
    for route in (unsigned, other_dialog):
        forged = request("MESSAGE", "sip:bob@192.0.2.20:5060", to_tag="b1", call_id="forged", headers=(route,))
        assert server.final(forged).status == 407


def test_record_route_carries_the_dialog_token() -> None:
    server = registered()
    challenge = server.final(request(call_id="rr-1"))
    auth = authorization(challenge, "alice", "alice-pw", "INVITE", "sip:bob@example.test", header="proxy-authenticate")
    out = server.send(request(call_id="rr-1", cseq=2, headers=(f"Proxy-Authorization: {auth}",)))
    [invite] = [m for m in sent_to(server, out, BOB_ADDR) if m.method == "INVITE"]
    [record_route] = invite.addresses("record-route")
    assert record_route.uri.params["dt"] == server.security.dialog_token("rr-1")
    bye = request(
        "BYE", "sip:bob@192.0.2.20:5060", to_tag="b1", call_id="rr-1", headers=(f"Route: <{record_route.uri}>",)
    )
    assert [m.method for m in sent_to(server, server.send(bye), BOB_ADDR)] == ["BYE"]


def test_options_to_the_server_is_answered_without_a_challenge() -> None:
    server = FakeServer()
    assert server.final(request("OPTIONS", "sip:example.test", to="sip:example.test")).status == 200


# -- Issue "Hardening" item 9: OPTIONS must not tell a scanner who exists ------------------------------------------


def shape(response: Response) -> tuple[int, str, list[str]]:
    """Status, reason and header names in order: what a scanner compares."""
    return response.status, response.reason, [h.key for h in response.headers]


def test_options_to_a_registered_and_an_unknown_user_get_the_same_407() -> None:
    server = registered()
    to_bob = server.final(request("OPTIONS", "sip:bob@example.test", call_id="o1"))
    to_nobody = server.final(request("OPTIONS", "sip:nobody@example.test", to="sip:nobody@example.test", call_id="o2"))
    assert to_bob.status == 407
    assert shape(to_bob) == shape(to_nobody)
    assert [sorted(c) for c in challenges(to_bob, "proxy-authenticate")] == [
        sorted(c) for c in challenges(to_nobody, "proxy-authenticate")
    ]


def test_authenticated_options_reach_the_phone_or_get_480() -> None:
    server = registered()
    for uri, call_id in (("sip:bob@example.test", "o3"), ("sip:nobody@example.test", "o4")):
        challenge = server.final(request("OPTIONS", uri, to=uri, call_id=call_id))
        auth = authorization(challenge, "alice", "alice-pw", "OPTIONS", uri, header="proxy-authenticate")
        out = server.send(
            request("OPTIONS", uri, to=uri, call_id=call_id, cseq=2, headers=(f"Proxy-Authorization: {auth}",))
        )
        if uri.startswith("sip:bob"):
            assert [m.method for m in sent_to(server, out, BOB_ADDR)] == ["OPTIONS"]
        else:
            [response] = [m for m, _ in out if isinstance(m, Response) and m.status >= 200]
            assert response.status == 480


def test_options_from_another_domain_to_an_unknown_user_is_still_a_ping_answered_200() -> None:
    """Not challenged (that is how other domains reach our users): the monitoring ping ``sip:ping@proxy``."""
    server = registered()
    ping = request("OPTIONS", "sip:ping@example.test", to="sip:ping@example.test", from_="sip:monitor@other.test")
    assert server.final(ping).status == 200
