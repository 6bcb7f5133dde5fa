"""Failed authentications and what they block: a phone, a user name, a scanner's address (issues 13 and 19)."""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs

from sipproxy.message import Response, parse_message
from sipproxy.net import Source

try:
    from tests.security_fakes import (
        ALICE_ADDR,
        BOB_ADDR,
        REALM,
        FakeServer,
        authorization,
        challenges,
        register,
        request,
        settings,
    )
except ImportError:  # pragma: no cover
    from security_fakes import (  # type: ignore[no-redef]
        ALICE_ADDR,
        BOB_ADDR,
        REALM,
        FakeServer,
        authorization,
        challenges,
        register,
        request,
        settings,
    )


def test_repeated_failures_of_one_phone_block_it_until_block_for() -> None:
    server = FakeServer()
    with capturedLogs() as events:
        assert server.register("alice", password="1").status == 401
        assert server.register("alice", password="2", cseq=3).status == 401
        assert server.register("alice", password="3", cseq=5).status == 403  # the third failure blocks
    [blocked] = [e for e in events if "Blocked user {user} at {key}" in e["log_format"]]
    assert blocked["log_level"] == LogLevel.warn and blocked["key"] == "192.0.2.7" and blocked["failures"] == 3
    assert blocked["user"] == "alice"
    assert server.metrics.auth_failures._value.get() == 3
    # blocked: even the right password is refused (and, through the transport's guard, everything else)
    assert server.register("alice", cseq=7).status == 403
    # another address is not affected
    assert server.register("bob", addr=BOB_ADDR).status == 200
    server.clock.advance(121)
    assert server.register("alice", cseq=9).status == 200


def test_blocked_address_through_the_guard_gets_a_few_403s_then_silence() -> None:
    server = FakeServer(security_settings=settings(reply_burst=2))
    for n, user in enumerate(("alice", "bob", "carol")):  # three user names failing: a scanner
        server.register(user, password=str(n), cseq=2 * n + 1)
    guard = server.security.guard
    replies: list[Response] = []
    source = Source("UDP", *ALICE_ADDR)
    for n in range(5):
        message = parse_message(request("OPTIONS", "sip:example.test", to="sip:example.test", call_id=f"o{n}"))
        assert guard.admit(message, source, 100, lambda r, s: replies.append(r)) is False
    assert [r.status for r in replies] == [403, 403]
    ack = parse_message(request("ACK", to_tag="x"))
    assert guard.admit(ack, source, 100, lambda r, s: replies.append(r)) is False
    assert guard.admit(None, source, 100, lambda r, s: replies.append(r)) is False
    assert len(replies) == 2
    assert server.metrics.value(server.metrics.blocked, "auth") >= 7


def test_failures_for_one_user_from_many_addresses_block_the_user_but_not_its_phones() -> None:
    server = FakeServer()
    assert server.register("bob", addr=BOB_ADDR).status == 200
    with capturedLogs() as events:
        for n in range(3):
            addr = (f"198.51.100.{n + 1}", 5060)
            assert server.register("bob", addr=addr, password="guess").status == 401, n
    assert any("Blocked user" in e["log_format"] and e["user"] == "bob" for e in events)
    # a new address with the right password: refused without checking
    assert server.register("bob", addr=("203.0.113.50", 5060)).status == 403
    # bob's registered phone refreshes: fine
    assert server.register("bob", addr=BOB_ADDR, cseq=11).status == 200
    # alice is not affected
    assert server.register("alice").status == 200


def test_a_success_does_not_erase_earlier_failures() -> None:
    server = FakeServer()
    assert server.register("alice", password="1").status == 401
    assert server.register("alice", password="2", cseq=3).status == 401
    challenge = server.final(request(call_id="ok"))  # alice calls, authenticated: a success (and no binding)
    auth = authorization(challenge, "alice", "alice-pw", "INVITE", "sip:bob@example.test", header="proxy-authenticate")
    assert server.final(request(call_id="ok", cseq=2, headers=(f"Proxy-Authorization: {auth}",))).status == 480
    assert server.register("alice", password="3", cseq=5).status == 403


def test_failures_age_out_after_the_window() -> None:
    server = FakeServer()
    assert server.register("alice", password="1").status == 401
    assert server.register("alice", password="2", cseq=3).status == 401
    server.clock.advance(61)
    assert server.register("alice", password="3", cseq=5).status == 401
    assert server.register("alice", cseq=7).status == 200


def test_an_address_holding_a_binding_may_fail_more_often() -> None:
    server = FakeServer(security_settings=settings(bound_factor=2))
    nat = ("203.0.113.7", 5060)
    assert server.register("alice", addr=nat).status == 200
    for n in range(5):  # five phones behind the NAT, each with a wrong password (no user is blocked)
        assert server.register(f"phone{n}", addr=nat, password="wrong").status == 401, n
    assert server.register("phone5", addr=nat, password="wrong").status == 403
    assert server.register("alice", addr=nat, cseq=20).status == 403


def test_a_blocked_address_is_refused_everything_through_the_transport() -> None:
    server = FakeServer()
    for n, user in enumerate(("alice", "bob", "carol")):  # a scanner
        server.register(user, password=str(n), cseq=2 * n + 1)
    count = server.transactions.server_transaction_count()
    assert server.final(request("OPTIONS", "sip:example.test", to="sip:example.test")).status == 403
    assert server.transactions.server_transaction_count() == count  # stateless
    assert server.final(request("OPTIONS", "sip:example.test", to="sip:example.test"), BOB_ADDR).status == 200


# -- a phone, not its neighbours (issue 13 item 2) ---------------------------------------------


def test_two_users_behind_one_address_a_wrong_password_blocks_only_its_own_phone() -> None:
    server = FakeServer()  # max_failures=3
    alice_phone, bob_phone = ("203.0.113.7", 5060), ("203.0.113.7", 5062)  # one office NAT
    with capturedLogs() as events:
        assert server.register("alice", addr=alice_phone, password="wrong").status == 401
        assert server.register("alice", addr=alice_phone, password="wrong", cseq=3).status == 401
        assert server.register("alice", addr=alice_phone, password="wrong", cseq=5).status == 403
    assert server.register("alice", addr=alice_phone, cseq=7).status == 403  # blocked, even with the password
    assert server.register("bob", addr=bob_phone).status == 200  # its neighbour is not
    assert not any("Blocked source" in e["log_format"] for e in events)
    assert any("Blocked user {user} at {key}" in e["log_format"] and e["user"] == "alice" for e in events)


def test_many_user_names_failing_from_one_address_block_the_address() -> None:
    server = FakeServer()
    scanner = ("198.51.100.66", 5060)
    with capturedLogs() as events:
        for n, user in enumerate(("101", "102", "103")):
            server.register(user, addr=scanner, password="1234", cseq=2 * n + 1)
    [blocked] = [e for e in events if "Blocked source" in e["log_format"]]
    assert blocked["key"] == "198.51.100.66" and blocked["failures"] == 3
    assert server.final(register("bob", addr=("198.51.100.66", 5099)), ("198.51.100.66", 5099)).status == 403


# -- spoofed packets count for nothing (issue 19 item 4) ---------------------------------------


def _forged(user: str, nonce: str, addr: tuple[str, int], cseq: int) -> bytes:
    value = (
        f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="sip:example.test", '
        f'response="{"0" * 32}", algorithm=MD5, cnonce="c", nc=00000001, qop=auth'
    )
    return register(user, addr=addr, cseq=cseq, authorization=value)


def test_made_up_nonces_from_many_addresses_do_not_lock_a_user_out() -> None:
    server = FakeServer()  # max_failures=3
    for n in range(10):
        addr = (f"198.51.100.{n + 1}", 5060)
        assert server.final(_forged("bob", f"made-up-{n}", addr, 1), addr).status == 401
    assert server.metrics.auth_failures._value.get() == 0
    assert server.register("bob", addr=("203.0.113.50", 5060)).status == 200  # bob from a new address


def test_a_nonce_issued_to_one_address_counts_for_nothing_from_another() -> None:
    server = FakeServer()
    attacker = ("198.51.100.200", 5060)
    challenge = server.final(register("bob", addr=attacker), attacker)  # a real nonce, for the attacker's address
    nonce = challenges(challenge)[0]["nonce"]
    for n in range(10):  # spoofed from bob's phone's address and from others
        addr = BOB_ADDR if n % 2 else (f"198.51.100.{n + 1}", 5060)
        assert server.final(_forged("bob", nonce, addr, n + 2), addr).status == 401
    assert server.metrics.auth_failures._value.get() == 0
    assert server.register("bob", addr=BOB_ADDR, cseq=20).status == 200
    assert server.register("bob", addr=("203.0.113.51", 5060), cseq=22).status == 200


def test_failures_from_elsewhere_never_block_a_registered_phone() -> None:
    server = FakeServer()
    phone, other = ("203.0.113.9", 5060), ("203.0.113.9", 5070)  # bob's phone, and another port at its address
    assert server.register("bob", addr=phone).status == 200
    statuses = [server.register("bob", addr=other, password="guess", cseq=2 * n + 1).status for n in range(3)]
    assert statuses == [401, 401, 403]  # that source is blocked for bob
    assert server.register("bob", addr=phone, cseq=11).status == 200  # the registered phone is not
