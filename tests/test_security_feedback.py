"""RFC 7339 towards the clients that ask: the share refused in the ``oc`` parameter of their Via."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipproxy.message import Request, Response, make_response, parse_message, parse_via
from sipproxy.security import Congestion, OverloadFeedback

try:
    from tests.security_fakes import ALICE_ADDR, BOB_ADDR, START, FakeServer, register, request
except ImportError:  # pragma: no cover
    from security_fakes import ALICE_ADDR, BOB_ADDR, START, FakeServer, register, request  # type: ignore[no-redef]

CLIENT = 'SIP/2.0/UDP proxy.upstream.test:5060;branch=z9hG4bKup1;oc;oc-algo="loss,A"'


def _feedback() -> tuple[OverloadFeedback, Congestion, Clock]:
    clock = Clock()
    clock.advance(START)
    congestion = Congestion(clock, 0.5, dwell=0)
    return OverloadFeedback(congestion), congestion, clock


def _overload(congestion: Congestion, clock: Clock) -> None:
    congestion.datagram_waited(0.45)
    clock.advance(0.11)
    congestion.datagram_waited(0.9)  # rising fast: a quarter of what was admitted
    assert congestion.shedding and congestion.refusing > 0.5


def test_a_client_without_oc_gets_its_via_as_it_was() -> None:
    feedback, _, _ = _feedback()
    assert feedback(parse_via("SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1;rport")) is None


def test_not_overloaded_a_client_that_asks_learns_there_is_nothing_to_hold_back() -> None:
    feedback, _, _ = _feedback()
    via = parse_via(CLIENT)
    stamped = feedback(via)
    assert stamped is not None
    assert stamped.params["oc"] == "0" and stamped.params["oc-validity"] == "0"
    assert stamped.params["oc-algo"] == '"loss"'
    assert stamped.params["oc-seq"] == f"{START:.3f}"
    assert stamped.branch == "z9hG4bKup1" and via.params["oc"] is None  # a copy: the request's Via is untouched


def test_overloaded_the_value_is_the_share_refused_with_its_validity_and_a_newer_sequence() -> None:
    feedback, congestion, clock = _feedback()
    _overload(congestion, clock)
    first = feedback(parse_via(CLIENT))
    assert first is not None
    assert first.params["oc"] == str(round(congestion.refusing * 100))
    assert first.params["oc-validity"] == "1000"
    clock.advance(0.11)
    congestion.datagram_waited(1.2)  # the next step sets a new share: a newer oc-seq
    second = feedback(parse_via(CLIENT))
    assert second is not None
    assert float(second.params["oc-seq"] or 0) > float(first.params["oc-seq"] or 0)


@pytest.mark.parametrize(("algorithms", "answered"), [('"loss"', True), ('"A, Loss"', True), ('"rate,A"', False)])
def test_only_a_client_that_knows_the_loss_algorithm_is_answered(algorithms: str, answered: bool) -> None:
    feedback, _, _ = _feedback()
    via = parse_via(f"SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK2;oc;oc-algo={algorithms}")
    assert (feedback(via) is not None) is answered


# -- through the server: every response to such a client, the 503s too --------------------------------


def _top_via(response: Response) -> dict[str, str | None]:
    return response.top_via.params


def test_the_registrars_answers_carry_oc_to_a_client_that_asks_and_not_to_others() -> None:
    server = FakeServer(users=None)
    asking = register("alice").replace(b";branch=", b";oc;branch=", 1)
    response = server.final(asking)
    assert response.status == 200
    params = _top_via(response)
    assert params["oc"] == "0" and params["oc-algo"] == '"loss"' and "oc-seq" in params
    plain = server.final(register("bob", addr=("192.0.2.20", 5060)), ("192.0.2.20", 5060))
    assert plain.status == 200 and "oc" not in _top_via(plain)


def test_under_overload_the_503_tells_the_client_how_much_to_hold_back() -> None:
    server = FakeServer(users=None)
    congestion = server.security.congestion
    assert congestion is not None
    _overload(congestion, server.clock)
    invite = request("INVITE", call_id="held-back").replace(b";branch=", b';oc;oc-algo="loss";branch=', 1)
    response = server.final(invite)
    assert response.status == 503
    params = _top_via(response)
    assert params["oc"] == str(round(congestion.refusing * 100)) and params["oc-validity"] == "1000"


def test_a_proxied_response_carries_oc_to_the_client_that_asked() -> None:
    server = FakeServer(users=None)
    assert server.final(register("bob", addr=BOB_ADDR), BOB_ADDR).status == 200
    invite = request("INVITE", call_id="through").replace(b";branch=", b";oc;branch=", 1)
    [forwarded] = [m for m, a in server.send(invite) if isinstance(m, Request) and a == BOB_ADDR]
    assert "oc" not in forwarded.top_via.params  # our own Via: we do not ask the next hop (no client side)
    ringing = make_response(forwarded, 180, to_tag="callee")
    [relayed] = [m for m, a in server.send(ringing.to_bytes(), BOB_ADDR) if a == ALICE_ADDR]
    assert isinstance(relayed, Response) and relayed.status == 180
    assert _top_via(relayed)["oc"] == "0"


def test_the_503s_of_an_overload_are_the_responses_of_8_2_6_2_whether_serialized_in_one_pass_or_built() -> None:
    """The refusals without ``oc`` are written in one pass (``response_bytes``); they say what a built one says."""
    server = FakeServer(users=None)
    congestion = server.security.congestion
    assert congestion is not None
    _overload(congestion, server.clock)
    refusals = []
    for via_params in (b";rport", b';rport;oc;oc-algo="loss"'):
        for n in range(10):  # the admitted share is spread evenly: the next new one is refused
            invite = request("INVITE", call_id=f"new-{n}").replace(b";branch=", via_params + b";branch=", 1)
            out = [m for m, _ in server.send(invite, ("198.51.100.9", 40000)) if isinstance(m, Response)]
            if out and out[-1].status == 503:
                refusals.append((parse_message(invite), out[-1]))
                break
    assert len(refusals) == 2
    for sent, response in refusals:
        via = parse_via(response.get("via"))
        assert via.params["received"] == "198.51.100.9" and via.params["rport"] == "40000"
        assert via.params["branch"] == sent.top_via.params["branch"]
        assert (response.call_id, response.get("cseq"), response.get("from")) == (
            sent.call_id,
            sent.get("cseq"),
            sent.get("from"),
        )
        assert response.to.tag is not None and response.to.tag.startswith("sg.")
        assert response.reason == "Service Unavailable" and 5 <= int(response.get("retry-after")) <= 10
    assert "oc" not in parse_via(refusals[0][1].get("via")).params
    assert parse_via(refusals[1][1].get("via")).params["oc"] == str(round(congestion.refusing * 100))
