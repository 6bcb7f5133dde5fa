"""RFC 3261 §16.7-§16.10: the response context, forking, recursion, Timer C, best response, CANCEL."""

from __future__ import annotations

try:
    from tests.proxy_helpers import Harness, binding, make_request
except ImportError:  # pragma: no cover
    from proxy_helpers import Harness, binding, make_request  # type: ignore[no-redef]

from sipproxy.message import Request, Response, make_response
from sipproxy.proxy import ProxySettings, choose_best
from sipproxy.transaction import Target

BOB_A = "sip:bob@192.0.2.20"
BOB_B = "sip:bob@192.0.2.21"
CAROL = "sip:carol@192.0.2.30"


def _two_phones(q_a: float = 1.0, q_b: float = 1.0, settings: ProxySettings = ProxySettings()) -> Harness:
    h = Harness(settings)
    h.register(
        binding(contact=BOB_A, q=q_a, source=("192.0.2.20", 5060), refreshed_at=1.0),
        binding(contact=BOB_B, q=q_b, source=("192.0.2.21", 5060)),
    )
    return h


def _invite(h: Harness, **kw: object) -> tuple[Request, object]:
    request = make_request("INVITE", "sip:bob@example.test", **kw)  # type: ignore[arg-type]
    return request, h.send(request)


def _cancels(h: Harness) -> list[Target]:
    return [c.target for c in h.branches("CANCEL")]


# -- provisional and 2xx forwarding (§16.7 step 5) ---------------------------


def test_100_is_absorbed_and_180_is_forwarded_without_our_via() -> None:
    h = Harness()
    h.register(binding())
    request, stx = _invite(h)
    (client,) = h.branches()
    h.reply(client, 100)
    assert stx.statuses == []  # type: ignore[attr-defined]
    ringing = h.reply(client, 180)
    (forwarded,) = stx.responses  # type: ignore[attr-defined]
    assert forwarded.status == 180
    assert forwarded.get_all("via") == request.get_all("via")
    assert forwarded.get("to") == ringing.get("to")
    assert forwarded.to.tag == "callee"
    assert len(ringing.vias) == 2  # the response we received is not modified


def test_200_is_forwarded_and_the_context_ends() -> None:
    h = Harness()
    h.register(binding())
    _, stx = _invite(h)
    (client,) = h.branches()
    assert h.proxy.active_contexts() == 1
    ok = h.reply(
        client, 200, headers=(("Contact", "<sip:bob@192.0.2.20>"), ("Record-Route", "<sip:192.0.2.1:5060;lr>"))
    )
    (forwarded,) = stx.responses  # type: ignore[attr-defined]
    assert forwarded.status == 200
    lines = ok.to_bytes().decode().split("\r\n")
    assert forwarded.to_bytes().decode().split("\r\n") == [lines[0]] + lines[2:]  # only our Via line is gone
    assert h.proxy.active_contexts() == 0
    assert h.clock.getDelayedCalls() == []


def test_non_invite_200() -> None:
    h = Harness()
    h.register(binding())
    stx = h.send(make_request("MESSAGE", "sip:bob@example.test", body="hi"))
    (client,) = h.branches("MESSAGE")
    assert h.clock.getDelayedCalls() == []  # no Timer C for non-INVITE
    h.reply(client, 202)
    assert stx.statuses == [202]


# -- sequential and parallel forking (§16.6, the tutorial's setParallel) -------


def test_sequential_q_groups_486_then_next_phone_answers() -> None:
    h = _two_phones(q_a=1.0, q_b=0.5)
    _, stx = _invite(h)
    (first,) = h.branches()
    assert first.request.uri_text == BOB_A
    h.reply(first, 180)
    h.reply(first, 486)
    assert stx.statuses == [180]  # type: ignore[attr-defined]
    second = h.branches()[1]
    assert second.request.uri_text == BOB_B
    h.reply(second, 180, to_tag="b")
    h.reply(second, 200, to_tag="b")
    assert stx.statuses == [180, 180, 200]  # type: ignore[attr-defined]
    assert stx.responses[-1].to.tag == "b"  # type: ignore[attr-defined]
    assert h.proxy.active_contexts() == 0


def test_sequential_all_fail_best_response() -> None:
    h = _two_phones(q_a=1.0, q_b=0.5)
    _, stx = _invite(h)
    h.reply(h.branches()[0], 486)
    h.reply(h.branches()[1], 404)
    assert stx.statuses == [486]  # type: ignore[attr-defined]


def test_parallel_equal_q_first_200_wins_other_gets_cancel_after_provisional() -> None:
    h = _two_phones()
    _, stx = _invite(h)
    a, b = h.branches()
    assert {a.request.uri_text, b.request.uri_text} == {BOB_A, BOB_B}
    h.reply(a, 200, to_tag="a")
    assert stx.statuses == [200]  # type: ignore[attr-defined]
    assert _cancels(h) == []  # §9.1: b has sent nothing yet, so no CANCEL yet
    h.reply(b, 180, to_tag="b")
    assert stx.statuses == [200]  # type: ignore[attr-defined]  # no 180 after the final
    (cancel,) = h.branches("CANCEL")
    assert cancel.target == b.target
    assert cancel.request.top_via.branch == b.request.top_via.branch
    assert cancel.request.uri_text == b.request.uri_text
    h.reply(b, 487, to_tag="b")
    assert stx.statuses == [200]  # type: ignore[attr-defined]


def test_parallel_branch_with_provisional_is_cancelled_at_once() -> None:
    h = _two_phones()
    _, stx = _invite(h)
    a, b = h.branches()
    h.reply(b, 180, to_tag="b")
    h.reply(a, 200, to_tag="a")
    assert _cancels(h) == [b.target]
    assert stx.statuses == [180, 200]  # type: ignore[attr-defined]


def test_two_200s_from_parallel_branches_both_reach_the_caller() -> None:
    h = _two_phones()
    request, stx = _invite(h)
    a, b = h.branches()
    h.reply(a, 180, to_tag="a")
    h.reply(b, 180, to_tag="b")
    h.reply(a, 200, to_tag="a")
    h.reply(b, 200, to_tag="b")  # crossed our CANCEL
    assert stx.statuses == [180, 180, 200]  # type: ignore[attr-defined]
    ((second, target),) = h.stateless
    assert target is None
    assert isinstance(second, Response) and second.status == 200 and second.to.tag == "b"
    assert second.get_all("via") == request.get_all("via")
    # a retransmission of a's 200 (RFC 6026: the client transaction passes it up) goes the same way
    h.reply(a, 200, to_tag="a")
    assert [m.to.tag for m, _ in h.stateless] == ["b", "a"]  # type: ignore[union-attr]


def test_non_invite_fork_forwards_only_the_first_2xx_and_cancels_nothing() -> None:
    h = _two_phones()
    stx = h.send(make_request("MESSAGE", "sip:bob@example.test", body="hi"))
    a, b = h.branches("MESSAGE")
    h.reply(a, 200)
    h.reply(b, 200)
    assert stx.statuses == [200]
    assert h.stateless == []
    assert h.branches("CANCEL") == []


# -- 3xx recursion (§16.5, §16.7 step 4) -----------------------------------------


def test_302_contact_is_followed() -> None:
    h = Harness()
    h.register(binding())
    _, stx = _invite(h)
    (first,) = h.branches()
    h.reply(first, 302, headers=(("Contact", f"<{CAROL}>"),))
    assert stx.statuses == []  # type: ignore[attr-defined]
    second = h.branches()[1]
    assert second.request.uri_text == CAROL
    assert second.target == Target("UDP", "192.0.2.30", 5060)
    h.reply(second, 200)
    assert stx.statuses == [200]  # type: ignore[attr-defined]


def test_302_to_an_already_tried_contact_is_not_followed() -> None:
    h = Harness()
    h.register(binding())
    _, stx = _invite(h)
    (first,) = h.branches()
    h.reply(first, 302, headers=(("Contact", "<sip:bob@192.0.2.20:5060>"),))
    assert len(h.branches()) == 1
    assert stx.statuses == [302]  # type: ignore[attr-defined]


def test_302_loop_between_two_redirects_stops() -> None:
    h = Harness()
    h.send(make_request("INVITE", CAROL))
    first = h.branches()[0]
    h.reply(first, 302, headers=(("Contact", "<sip:dave@192.0.2.31>"),))
    second = h.branches()[1]
    h.reply(second, 302, headers=(("Contact", f"<{CAROL}>"),))
    assert len(h.branches()) == 2
    assert h.tx.servers[0].statuses == [302]


def test_recursion_depth_limit() -> None:
    h = Harness(ProxySettings(max_recursion=1))
    stx = h.send(make_request("INVITE", CAROL))
    h.reply(h.branches()[0], 302, headers=(("Contact", "<sip:dave@192.0.2.31>"),))
    h.reply(h.branches()[1], 302, headers=(("Contact", "<sip:erin@192.0.2.32>"),))
    assert len(h.branches()) == 2
    assert stx.statuses == [302]
    assert stx.responses[0].get("contact") == "<sip:erin@192.0.2.32>"


def test_302_to_one_of_our_users_goes_to_the_registered_contacts() -> None:
    h = Harness()
    h.register(binding())
    stx = h.send(make_request("INVITE", CAROL))
    h.reply(h.branches()[0], 302, headers=(("Contact", "<sip:bob@example.test>"),))
    assert h.branches()[1].request.uri_text == "sip:bob@192.0.2.20:5060"
    assert stx.statuses == []


def test_302_with_several_contacts_forks_them_best_q_first() -> None:
    h = Harness()
    stx = h.send(make_request("INVITE", CAROL))
    h.reply(
        h.branches()[0],
        302,
        headers=(("Contact", "<sip:x@192.0.2.40>;q=0.2, <sip:y@192.0.2.41>;q=0.9"),),
    )
    assert [c.request.uri_text for c in h.branches()[1:]] == ["sip:y@192.0.2.41", "sip:x@192.0.2.40"]
    h.reply(h.branches()[1], 404)
    assert stx.statuses == []
    h.reply(h.branches()[2], 486)
    assert stx.statuses == [404]  # the first 4xx: none of them is one §16.7 step 6 prefers


# -- 6xx (§16.7 step 5) ----------------------------------------------------------------


def test_6xx_is_forwarded_at_once_and_cancels_the_others() -> None:
    h = _two_phones()
    _, stx = _invite(h)
    a, b = h.branches()
    h.reply(b, 180, to_tag="b")
    h.reply(a, 603, to_tag="a")
    assert stx.statuses == [180, 603]  # type: ignore[attr-defined]
    assert _cancels(h) == [b.target]
    h.reply(b, 487, to_tag="b")
    assert stx.statuses == [180, 603]  # type: ignore[attr-defined]


def test_6xx_stops_the_next_groups() -> None:
    h = _two_phones(q_a=1.0, q_b=0.5)
    _, stx = _invite(h)
    h.reply(h.branches()[0], 600)
    assert stx.statuses == [600]  # type: ignore[attr-defined]
    assert len(h.branches()) == 1


# -- best response (§16.7 step 6) ----------------------------------------------------


def _resp(request: Request, status: int, *headers: tuple[str, str]) -> Response:
    response = make_response(request, status, to_tag=f"t{status}")
    for name, value in headers:
        response.add(name, value)
    return response


def test_choose_best_rules() -> None:
    req = make_request()
    r = lambda *a: _resp(req, *a)  # noqa: E731
    assert choose_best([], req, "x").status == 408
    assert choose_best([r(503)], req, "x").status == 500
    assert choose_best([r(503), r(502)], req, "x").status == 502
    assert choose_best([r(500), r(404)], req, "x").status == 404
    assert choose_best([r(302), r(486)], req, "x").status == 486
    assert choose_best([r(302)], req, "x").status == 302
    assert choose_best([r(404), r(603), r(200 + 300)], req, "x").status == 603
    assert choose_best([r(404), r(420), r(486)], req, "x").status == 420
    assert choose_best([r(404), r(486)], req, "x").status == 404
    assert choose_best([r(486)], req, "x", cancelled=True).status == 487
    assert choose_best([r(487)], req, "x", cancelled=True).to.tag == "t487"
    assert choose_best([r(487), r(600)], req, "x", cancelled=True).status == 600


def test_401_and_407_challenges_are_merged() -> None:
    req = make_request()
    a = _resp(req, 401, ("WWW-Authenticate", 'Digest realm="a", nonce="1"'))
    b = _resp(req, 407, ("Proxy-Authenticate", 'Digest realm="b", nonce="2"'))
    c = _resp(req, 404)
    best = choose_best([c, a, b], req, "x")
    assert best.status == 401
    assert best.get_all("WWW-Authenticate") == ['Digest realm="a", nonce="1"']
    assert best.get_all("Proxy-Authenticate") == ['Digest realm="b", nonce="2"']
    assert a.get_all("Proxy-Authenticate") == []  # the stored response itself is not changed


def test_best_response_through_the_proxy_merges_challenges() -> None:
    h = _two_phones()
    _, stx = _invite(h)
    a, b = h.branches()
    h.reply(a, 407, headers=(("Proxy-Authenticate", 'Digest realm="a", nonce="1"'),))
    h.reply(b, 407, headers=(("Proxy-Authenticate", 'Digest realm="b", nonce="2"'),))
    (best,) = stx.responses  # type: ignore[attr-defined]
    assert best.status == 407
    assert best.get_all("Proxy-Authenticate") == ['Digest realm="a", nonce="1"', 'Digest realm="b", nonce="2"']
    assert len(best.vias) == 1


def test_503_from_the_only_branch_becomes_500() -> None:
    h = Harness()
    h.register(binding())
    _, stx = _invite(h)
    h.reply(h.branches()[0], 503, headers=(("Retry-After", "30"),))
    (best,) = stx.responses  # type: ignore[attr-defined]
    assert best.status == 500
    assert not best.has("Retry-After")


def test_all_branches_time_out_408() -> None:
    h = _two_phones()
    _, stx = _invite(h)
    for client in h.branches():
        client.owner.timed_out(client)
    assert stx.statuses == [408]  # type: ignore[attr-defined]
    assert stx.responses[0].to.tag  # type: ignore[attr-defined]
    assert h.clock.getDelayedCalls() == []


def test_transport_failure_counts_as_503_and_the_next_group_is_tried() -> None:
    h = _two_phones(q_a=1.0, q_b=0.5)
    _, stx = _invite(h)
    first = h.branches()[0]
    first.owner.transport_failed(first, "connection refused")
    assert len(h.branches()) == 2
    h.branches()[1].owner.transport_failed(h.branches()[1], "connection refused")
    assert stx.statuses == [500]  # type: ignore[attr-defined]


def test_transaction_layer_refusing_to_send_is_a_failed_branch() -> None:
    h = Harness()
    h.register(binding())
    h.tx.fail_next = "closed"
    _, stx = _invite(h)
    assert stx.statuses == [500]  # type: ignore[attr-defined]


def test_lowest_class_wins_over_5xx() -> None:
    h = _two_phones()
    _, stx = _invite(h)
    a, b = h.branches()
    h.reply(a, 500)
    h.reply(b, 486)
    assert stx.statuses == [486]  # type: ignore[attr-defined]


# -- Timer C (§16.6 step 11, §16.8) ---------------------------------------------------


def test_timer_c_with_provisional_cancels_the_branch() -> None:
    h = Harness(ProxySettings(timer_c=181.0))
    h.register(binding())
    _, stx = _invite(h)
    (client,) = h.branches()
    h.clock.advance(100)
    h.reply(client, 180)  # resets Timer C
    h.clock.advance(100)
    assert _cancels(h) == []
    h.clock.advance(81)
    assert _cancels(h) == [client.target]
    h.reply(client, 487)
    assert stx.statuses == [180, 487]  # type: ignore[attr-defined]
    assert h.clock.getDelayedCalls() == []


def test_timer_c_is_not_reset_by_100() -> None:
    h = Harness()
    h.register(binding())
    _invite(h)
    (client,) = h.branches()
    h.reply(client, 100)
    h.clock.advance(179)
    h.reply(client, 100)
    h.clock.advance(1)
    assert _cancels(h) == [client.target]


def test_timer_c_without_provisional_is_a_408() -> None:
    h = Harness()
    h.register(binding())
    _, stx = _invite(h)
    (client,) = h.branches()
    h.clock.advance(180)
    assert stx.statuses == [408]  # type: ignore[attr-defined]
    assert _cancels(h) == []
    h.reply(client, 180)  # wakes up late: now it may be, and is, cancelled
    assert _cancels(h) == [client.target]
    assert stx.statuses == [408]  # type: ignore[attr-defined]


def test_cancelled_branch_that_never_answers_is_given_up_after_64_t1() -> None:
    h = Harness()
    h.register(binding())
    _, stx = _invite(h)
    (client,) = h.branches()
    h.reply(client, 180)
    h.clock.advance(180)
    assert _cancels(h) == [client.target]
    h.clock.advance(32)
    assert stx.statuses == [180, 408]  # type: ignore[attr-defined]
    assert h.clock.getDelayedCalls() == []


# -- CANCEL from the caller (§16.10) ---------------------------------------------------


def test_cancel_is_answered_200_and_cancels_every_branch_then_487() -> None:
    h = _two_phones()
    invite, stx = _invite(h)
    a, b = h.branches()
    h.reply(a, 180, to_tag="a")
    cancel_stx = h.send(h.tx.build_cancel(invite))
    assert cancel_stx.statuses == [200]
    assert _cancels(h) == [a.target]  # b gave no provisional: its CANCEL waits
    assert stx.statuses == [180]  # type: ignore[attr-defined]
    h.reply(a, 487, to_tag="a")
    assert stx.statuses == [180, 487]  # type: ignore[attr-defined]
    assert stx.responses[-1].to.tag == "a"  # type: ignore[attr-defined]  # the callee's 487 is forwarded
    h.reply(b, 180, to_tag="b")
    assert _cancels(h) == [a.target, b.target]
    assert stx.statuses == [180, 487]  # type: ignore[attr-defined]
    assert h.proxy.active_contexts() == 0


def test_cancel_before_any_provisional_gives_our_own_487_at_once() -> None:
    h = _two_phones(q_a=1.0, q_b=0.5)
    invite, stx = _invite(h)
    cancel_stx = h.send(h.tx.build_cancel(invite))
    assert cancel_stx.statuses == [200]
    assert stx.statuses == [487]  # type: ignore[attr-defined]
    assert stx.responses[0].to.tag == cancel_stx.responses[0].to.tag  # type: ignore[attr-defined]  # §9.2
    assert len(h.branches()) == 1  # the next group is not tried
    assert _cancels(h) == []


def test_cancel_stops_the_sequential_search() -> None:
    h = _two_phones(q_a=1.0, q_b=0.5)
    invite, stx = _invite(h)
    first = h.branches()[0]
    h.reply(first, 180)
    h.send(h.tx.build_cancel(invite))
    h.reply(first, 487)
    assert len(h.branches()) == 1
    assert stx.statuses == [180, 487]  # type: ignore[attr-defined]


def test_cancel_matching_nothing_is_481() -> None:
    h = Harness()
    cancel = make_request("CANCEL", "sip:bob@example.test")
    stx = h.send(cancel)
    assert stx.statuses == [481]
    assert h.tx.sent == []


def test_cancel_and_200_crossing_the_200_wins() -> None:
    h = Harness()
    h.register(binding())
    invite, stx = _invite(h)
    (client,) = h.branches()
    h.reply(client, 180)
    h.send(h.tx.build_cancel(invite))
    assert _cancels(h) == [client.target]
    h.reply(client, 200)  # sent before our CANCEL arrived
    assert stx.statuses == [180, 200]  # type: ignore[attr-defined]  # no 487 after a 2xx


def test_cancel_after_the_final_response_is_answered_200_and_changes_nothing() -> None:
    h = Harness()
    h.register(binding())
    invite, stx = _invite(h)
    h.reply(h.branches()[0], 200)
    cancel_stx = h.send(h.tx.build_cancel(invite))
    assert cancel_stx.statuses == [200]
    assert stx.statuses == [200]  # type: ignore[attr-defined]
    assert _cancels(h) == []


def test_caller_transaction_gone_does_not_raise() -> None:
    h = Harness()
    h.register(binding())
    _, stx = _invite(h)

    def refuse(response: Response) -> None:
        from sipproxy.transaction import TransactionError

        raise TransactionError("terminated")

    stx.respond = refuse  # type: ignore[attr-defined]
    h.reply(h.branches()[0], 180)
    h.reply(h.branches()[0], 486)
    assert h.log.failures == []
    assert any("Could not" in fmt for _, fmt, _ in h.log.events)


def test_a_response_without_the_callers_via_is_never_forwarded() -> None:
    """§16.7 step 3: with our Via gone and none left, the response was meant for us."""
    h = Harness()
    h.register(binding())
    _, stx = _invite(h)
    (client,) = h.branches()
    bare = make_response(client.request, 200, to_tag="callee")
    bare.remove("via")
    bare.add("Via", client.request.get_all("via")[0])  # ours only: the callee dropped the caller's
    client.final_response = bare
    client.owner.response_received(client, bare)
    assert 200 not in stx.statuses  # type: ignore[attr-defined]
    assert stx.statuses == [502]  # type: ignore[attr-defined]


# -- RFC 5393 §5.3: Max-Breadth -------------------------------------------------------


def _phones(n: int, settings: ProxySettings = ProxySettings()) -> Harness:
    h = Harness(settings)
    h.register(*(binding(contact=f"sip:bob@192.0.2.{20 + i}", source=(f"192.0.2.{20 + i}", 5060)) for i in range(n)))
    return h


def test_parallel_branches_share_the_max_breadth() -> None:
    h = _phones(3)
    _invite(h, headers=("Max-Breadth: 10",))
    assert sorted(c.request.get("max-breadth") for c in h.branches()) == ["3", "3", "4"]  # sum <= 10


def test_without_max_breadth_60_is_shared_and_a_lone_branch_passes_nothing_new() -> None:
    h = _phones(2)
    _invite(h)
    assert [c.request.get("max-breadth") for c in h.branches()] == ["30", "30"]
    h = _phones(1)
    _invite(h)
    assert [c.request.get("max-breadth") for c in h.branches()] == [None]
    h = _phones(1)
    _invite(h, headers=("Max-Breadth: 7",))
    assert [c.request.get("max-breadth") for c in h.branches()] == ["7"]


def test_more_parallel_targets_than_the_breadth_is_440() -> None:
    h = _phones(3)
    _, stx = _invite(h, headers=("Max-Breadth: 2",))
    assert h.branches() == []
    assert stx.statuses == [440]  # type: ignore[attr-defined]
    assert stx.last_response.reason == "Max-Breadth Exceeded"  # type: ignore[attr-defined]


def test_our_limit_lowers_the_incoming_breadth() -> None:
    h = _phones(3, ProxySettings(max_breadth=2))
    _, stx = _invite(h, headers=("Max-Breadth: 70",))
    assert stx.statuses == [440]  # type: ignore[attr-defined]


def test_sequential_groups_each_get_the_whole_breadth() -> None:
    h = _two_phones(q_a=1.0, q_b=0.5)
    _invite(h, headers=("Max-Breadth: 1",))
    (first,) = h.branches()
    h.reply(first, 486, to_tag="a")
    _, second = h.branches()
    assert second.request.get("max-breadth") == "1"


def test_a_bad_max_breadth_is_400_naming_it() -> None:
    h = _phones(1)
    _, stx = _invite(h, headers=("Max-Breadth: lots",))
    assert stx.statuses == [400]  # type: ignore[attr-defined]
    assert stx.last_response.reason == "Invalid Max-Breadth"  # type: ignore[attr-defined]
    assert h.branches() == []
