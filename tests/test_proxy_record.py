"""The proxy's finished-call records (``Proxy(on_call=...)``), through the real proxy core on a task.Clock.

Each test plays a call through :class:`~tests.proxy_helpers.Harness` and
reads the one :class:`~sipproxy.calls.CallRecord` the proxy handed over,
and its log line.
"""

from __future__ import annotations

from typing import Any

from sipproxy.calls import CallRecord, call_line
from sipproxy.proxy import ProxySettings
from sipproxy.transaction import build_cancel

try:
    from tests.proxy_helpers import ALICE_TCP, Harness, binding, make_request
except ImportError:  # pragma: no cover
    from proxy_helpers import ALICE_TCP, Harness, binding, make_request  # type: ignore[no-redef]

BOB = "sip:bob@example.test"


def harness(**options: object) -> tuple[Harness, list[CallRecord]]:
    records: list[CallRecord] = []
    h = Harness(on_call=records.append, **options)  # type: ignore[arg-type]
    h.clock.advance(1000)
    return h, records


def test_a_forked_call_answered_by_one_phone_names_it_and_its_setup_time() -> None:
    h, records = harness()
    h.register(
        binding(contact="sip:bob@192.0.2.20:5060"),
        binding(contact="sip:bob@192.0.2.21:5062", source=("192.0.2.21", 5062)),
    )
    h.send(make_request("INVITE", BOB))
    one, two = h.branches()
    h.reply(one, 180)
    h.reply(two, 180)
    h.clock.advance(2.1)
    assert records == []  # nothing until the final response
    h.reply(two, 200)
    (record,) = records
    assert (record.method, record.caller, record.callee, record.status) == (
        "INVITE",
        "sip:alice@example.test",
        BOB,
        200,
    )
    assert record.call_id == "call-1@192.0.2.7"
    assert record.source == "UDP 192.0.2.7:5060"
    assert round(record.setup, 6) == 2.1 and record.started == 1000
    assert [b.outcome for b in record.branches] == ["cancelled", "answered"]
    assert record.answered is not None and record.answered.host == "192.0.2.21" and record.answered.port == 5062
    assert call_line(record) == (
        "Call sip:alice@example.test -> sip:bob@example.test: 200 after 2.1 s, 2 branches, "
        "answered by sip:bob@192.0.2.21:5062 (UDP)"
    )


def test_no_binding_is_a_480_without_branches() -> None:
    h, records = harness()
    h.send(make_request("INVITE", "sip:carol@example.test"))
    (record,) = records
    assert call_line(record) == (
        "Call sip:alice@example.test -> sip:carol@example.test: 480 Temporarily Unavailable after 0.0 s, "
        "no branches: no binding for sip:carol@example.test"
    )


def test_every_branch_busy() -> None:
    h, records = harness()
    h.register(binding(contact="sip:bob@192.0.2.20:5060"), binding(contact="sip:bob@192.0.2.21:5060"))
    h.send(make_request("INVITE", BOB))
    for client in h.branches():
        h.reply(client, 486)
    (record,) = records
    assert record.status == 486 and record.why == "all branches busy"
    assert call_line(record).endswith("486 Busy Here after 0.0 s, 2 branches: all branches busy")


def test_a_timeout_says_no_answer() -> None:
    h, records = harness(settings=ProxySettings(timer_c=200))
    h.register(binding())
    h.send(make_request("INVITE", BOB))
    (client,) = h.branches()
    client.owner.timed_out(client)
    (record,) = records
    assert (record.status, record.why) == (408, "no answer")


def test_a_transport_error_says_so() -> None:
    h, records = harness()
    h.register(binding())
    h.send(make_request("MESSAGE", BOB))
    (client,) = h.branches("MESSAGE")
    client.owner.transport_failed(client, "connection refused")
    (record,) = records
    assert record.method == "MESSAGE"
    assert record.why == "transport error: connection refused"
    assert call_line(record).startswith("MESSAGE sip:alice@example.test -> sip:bob@example.test: 500 ")


def test_a_host_that_does_not_resolve_is_a_dns_failure() -> None:
    h, records = harness()
    h.send(make_request("INVITE", "sip:carol@nowhere.example.net"))
    (record,) = records
    assert record.why == "DNS: nowhere.example.net does not resolve"
    assert record.branches[0].target == "sip:carol@nowhere.example.net"


def test_a_closed_flow_is_flow_gone() -> None:
    h, records = harness(flow_open=lambda target: False)
    h.register(binding(transport="TCP", source=(ALICE_TCP.host, ALICE_TCP.port)))
    h.send(make_request("INVITE", BOB))
    (client,) = h.branches()
    client.owner.transport_failed(client, "connection refused")
    (record,) = records
    assert record.status == 480
    assert record.why.startswith("flow gone: the TCP connection of its REGISTER is closed")


def test_the_callers_cancel() -> None:
    h, records = harness()
    h.register(binding())
    invite = make_request("INVITE", BOB)
    h.send(invite)
    (client,) = h.branches()
    h.reply(client, 180)
    h.clock.advance(4)
    h.send(build_cancel(invite))
    assert records == []  # the callee's 487 is still to come
    h.reply(client, 487)
    (record,) = records
    assert (record.status, record.why, record.setup) == (487, "cancelled by the caller", 4.0)


def test_a_challenge_by_the_proxy_is_recorded_as_such() -> None:
    from sipproxy.message import make_response

    h, records = harness(authorize=lambda request, source: make_response(request, 407))
    h.send(make_request("INVITE", BOB))
    (record,) = records
    assert (record.status, record.why, record.branches) == (407, "credentials requested", ())


def test_a_successful_message_and_an_in_dialog_bye_are_not_calls() -> None:
    h, records = harness()
    h.register(binding())
    h.send(make_request("MESSAGE", BOB))
    h.reply(h.branches("MESSAGE")[0], 200)
    h.send(make_request("BYE", "sip:bob@192.0.2.20:5060", to="Bob <sip:bob@example.test>;tag=b1"))
    h.reply(h.branches("BYE")[0], 481)
    assert records == []


def test_a_reinvite_is_logged_as_one() -> None:
    h, records = harness()
    h.send(make_request("INVITE", "sip:bob@192.0.2.20:5060", to="Bob <sip:bob@example.test>;tag=b1"))
    h.reply(h.branches()[0], 200)
    (record,) = records
    assert record.in_dialog and call_line(record).startswith("Re-INVITE ")


def test_an_observer_that_raises_does_not_break_the_call() -> None:
    def broken(record: CallRecord) -> None:
        raise RuntimeError("observer bug")

    h = Harness(on_call=broken)
    h.register(binding())
    stx = h.send(make_request("INVITE", BOB))
    h.reply(h.branches()[0], 200)
    assert stx.statuses == [200]
    assert h.log.failures == ["Bug in the proxy: {what}"]


def test_a_message_refused_before_routing_is_not_a_call_but_one_without_binding_is() -> None:
    from sipproxy.message import make_response

    h, records = harness(authorize=lambda request, source: make_response(request, 407))
    h.send(make_request("MESSAGE", BOB))
    assert records == []
    h, records = harness()
    h.send(make_request("MESSAGE", "sip:carol@example.test", max_forwards=0))
    assert records == []  # 483 Too Many Hops: refused in §16.3
    h.send(make_request("MESSAGE", "sip:carol@example.test"))
    (record,) = records
    assert (record.status, record.why) == (480, "no binding for sip:carol@example.test")


def test_a_failed_message_is_recorded_after_its_server_transaction_let_go_of_the_request() -> None:
    """The real non-INVITE server transaction keeps only the bytes once it has answered (Timer J)."""
    h, records = harness()
    h.register(binding())
    stx = h.send(make_request("MESSAGE", BOB))
    respond = stx.respond

    def letting_go(response: Any) -> None:
        respond(response)
        if response.status >= 200:
            stx.request = None  # type: ignore[assignment]

    stx.respond = letting_go  # type: ignore[method-assign]
    (client,) = h.branches("MESSAGE")
    h.reply(client, 486)
    (record,) = records
    assert (record.method, record.status, record.callee) == ("MESSAGE", 486, BOB)
    assert h.log.failures == []
