"""REGISTER with ``--users``: RFC 3261 §10.3 step 3 (401, stale nonces, unknown users) through the real registrar."""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, capturedLogs

from sipproxy.auth import parse_auth_params
from sipproxy.message import Response

try:
    from tests.security_fakes import (
        BOB_ADDR,
        PASSWORDS,
        REALM,
        FakeServer,
        authorization,
        challenges,
        register,
        request,
        sent_to,
        settings,
    )
except ImportError:  # pragma: no cover
    from security_fakes import (  # type: ignore[no-redef]
        BOB_ADDR,
        PASSWORDS,
        REALM,
        FakeServer,
        authorization,
        challenges,
        register,
        request,
        sent_to,
        settings,
    )


def test_register_without_credentials_gets_401_offering_md5_alone_to_a_new_phone() -> None:
    """Issue 13 item 1: clients reading only the first challenge (sipsak, sipp) and baresip 1.0 register."""
    server = FakeServer()
    response = server.final(register("alice"))
    assert response.status == 401
    offered = challenges(response)
    assert [c["algorithm"] for c in offered] == ["MD5"]
    assert all(c["qop"] == "auth" and c["realm"] == REALM and "stale" not in c for c in offered)
    assert response.to.tag is not None
    assert server.store.lookup("sip:alice@example.test") == []
    assert server.metrics.auth_failures._value.get() == 0


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_register_with_valid_credentials_is_accepted_by_the_real_registrar(algorithm: str) -> None:
    server = FakeServer()
    if algorithm != "MD5":  # SHA-256 is offered from a phone's second REGISTER challenge on
        assert server.register("alice", call_id="earlier").status == 200
    challenge = server.final(register("alice"))
    assert algorithm in [c["algorithm"] for c in challenges(challenge)]
    auth = authorization(challenge, "alice", "alice-pw", "REGISTER", "sip:example.test", algorithm=algorithm)
    response = server.final(register("alice", cseq=2, authorization=auth))
    assert response.status == 200
    [binding] = server.store.lookup("sip:alice@example.test")
    assert binding.contact == "sip:alice@192.0.2.7:5060"
    assert response.get_all("contact") == ["<sip:alice@192.0.2.7:5060>;expires=3600"]


def test_md5_only_user_registers_with_md5() -> None:
    server = FakeServer()
    addr = ("192.0.2.9", 5060)
    assert server.register("carol", addr=addr).status == 200  # MD5 offered first to a new phone
    challenge = server.final(register("carol", addr=addr, cseq=3), addr)  # the next challenge: SHA-256 first
    auth = authorization(challenge, "carol", "carol-pw", "REGISTER", "sip:example.test", algorithm="SHA-256")
    assert server.final(register("carol", addr=addr, cseq=4, authorization=auth), addr).status == 401
    assert server.metrics.auth_failures._value.get() == 0  # no SHA-256 HA1 on file: no guess
    auth = authorization(challenge, "carol", "carol-pw", "REGISTER", "sip:example.test", algorithm="MD5")
    assert server.final(register("carol", addr=addr, cseq=5, authorization=auth), addr).status == 200


def test_wrong_password_is_challenged_again_and_counted() -> None:
    server = FakeServer()
    with capturedLogs() as events:
        response = server.register("alice", password="guess")
    assert response.status == 401
    assert [c["algorithm"] for c in challenges(response)] == ["MD5"]
    assert server.metrics.auth_failures._value.get() == 1
    assert server.store.lookup("sip:alice@example.test") == []
    [failed] = [e for e in events if e.get("reason") == "wrong password"]
    assert failed["user"] == "alice" and failed["host"] == "192.0.2.7" and failed["method"] == "REGISTER"
    assert "log_failure" not in failed


def test_user_registering_someone_elses_aor_gets_403() -> None:
    server = FakeServer()
    challenge = server.final(register("bob", aor_user="alice"))
    auth = authorization(challenge, "bob", "bob-pw", "REGISTER", "sip:example.test")
    response = server.final(register("bob", aor_user="alice", cseq=2, authorization=auth))
    assert response.status == 403
    assert server.store.lookup("sip:alice@example.test") == []
    assert server.metrics.auth_failures._value.get() == 0  # right password: not a guess


def test_stale_nonce_gets_401_stale_true_and_is_no_failure() -> None:
    server = FakeServer()
    challenge = server.final(register("alice"))
    server.clock.advance(301)
    auth = authorization(challenge, "alice", "alice-pw", "REGISTER", "sip:example.test")
    response = server.final(register("alice", cseq=2, authorization=auth))
    assert response.status == 401
    assert all(c.get("stale") == "true" for c in challenges(response))
    assert server.metrics.auth_failures._value.get() == 0
    fresh = authorization(response, "alice", "alice-pw", "REGISTER", "sip:example.test")
    assert server.final(register("alice", cseq=3, authorization=fresh)).status == 200


def test_stale_nonce_with_wrong_password_is_neither_stale_nor_a_failure() -> None:
    """Issue 19 item 4: only an answer to a fresh nonce of ours counts (an old one may be anybody's)."""
    server = FakeServer()
    challenge = server.final(register("alice"))
    server.clock.advance(301)
    auth = authorization(challenge, "alice", "nope", "REGISTER", "sip:example.test")
    response = server.final(register("alice", cseq=2, authorization=auth))
    assert response.status == 401 and all("stale" not in c for c in challenges(response))
    assert server.metrics.auth_failures._value.get() == 0


def test_nonce_from_before_a_restart_with_the_right_password_is_stale() -> None:
    before = FakeServer(secret=b"a" * 32)
    challenge = before.final(register("alice"))
    after = FakeServer(secret=b"b" * 32)  # a restart: a new secret
    auth = authorization(challenge, "alice", "alice-pw", "REGISTER", "sip:example.test")
    response = after.final(register("alice", cseq=2, authorization=auth))
    assert response.status == 401
    assert all(c.get("stale") == "true" for c in challenges(response))
    assert after.metrics.auth_failures._value.get() == 0
    wrong = authorization(challenge, "alice", "nope", "REGISTER", "sip:example.test")
    response = after.final(register("alice", cseq=3, authorization=wrong))
    assert all("stale" not in c for c in challenges(response))
    assert after.metrics.auth_failures._value.get() == 0  # not a nonce of this server: no guess


def test_replayed_nonce_count_is_challenged_stale_not_counted() -> None:
    server = FakeServer()
    challenge = server.final(register("alice"))
    auth = authorization(challenge, "alice", "alice-pw", "REGISTER", "sip:example.test")
    assert server.final(register("alice", cseq=2, authorization=auth)).status == 200
    replay = server.final(register("alice", cseq=3, authorization=auth))
    assert replay.status == 401 and all(c.get("stale") == "true" for c in challenges(replay))
    assert server.metrics.auth_failures._value.get() == 0


def _shape(response: Response) -> list[tuple[str, list[str]]]:
    """Header names in order, and for challenges the parameter names in order and the values but the nonce."""
    shape: list[tuple[str, list[str]]] = [("status", [str(response.status), response.reason])]
    for name, value in response:
        if name.lower() == "www-authenticate":
            _, params = parse_auth_params(value)
            shape.append((name, [f"{k}={v}" if k != "nonce" else k for k, v in params.items()]))
            shape.append((name + " text", [value.replace(params["nonce"], "N")]))
        else:
            shape.append((name, []))
    return shape


def test_unknown_user_gets_a_challenge_identical_in_form_to_a_known_users() -> None:
    server = FakeServer()
    known = server.final(register("alice", addr=("192.0.2.30", 5060), call_id="same"), ("192.0.2.30", 5060))
    unknown = server.final(register("mallory", addr=("192.0.2.31", 5060), call_id="same"), ("192.0.2.31", 5060))
    assert _shape(known) == _shape(unknown)
    # and with (wrong) credentials: the same answer again, both counted alike
    k = server.final(
        register(
            "alice",
            addr=("192.0.2.30", 5060),
            call_id="same",
            cseq=2,
            authorization=authorization(known, "alice", "x", "REGISTER", "sip:example.test"),
        ),
        ("192.0.2.30", 5060),
    )
    u = server.final(
        register(
            "mallory",
            addr=("192.0.2.31", 5060),
            call_id="same",
            cseq=2,
            authorization=authorization(unknown, "mallory", "x", "REGISTER", "sip:example.test"),
        ),
        ("192.0.2.31", 5060),
    )
    assert _shape(k) == _shape(u) and k.status == 401
    assert server.metrics.auth_failures._value.get() == 2


def test_credentials_for_another_realm_are_challenged_not_counted() -> None:
    server = FakeServer()
    challenge = server.final(register("alice"))
    other = authorization(challenge, "alice", "alice-pw", "REGISTER", "sip:example.test", realm="elsewhere.test")
    assert server.final(register("alice", cseq=2, authorization=other)).status == 401
    assert server.metrics.auth_failures._value.get() == 0


def test_malformed_credentials_are_challenged_not_counted() -> None:
    """Issue 19 item 4: no nonce of ours, no failure (anybody can send these from any address)."""
    server = FakeServer()
    response = server.final(register("alice", authorization='Digest username="alice", realm="example.test"'))
    assert response.status == 401
    response = server.final(register("alice", cseq=2, authorization="Digest ,,,=garbage"))
    assert response.status == 401
    assert server.metrics.auth_failures._value.get() == 0


def test_without_users_nothing_is_challenged() -> None:
    server = FakeServer(users=None)
    assert server.final(register("bob", addr=BOB_ADDR), BOB_ADDR).status == 200
    assert server.final(register("alice", aor_user="carol")).status == 200  # anybody registers anything
    out = server.send(request())
    assert [m.method for m in sent_to(server, out, BOB_ADDR)] == ["INVITE"]


def test_a_registrations_401_and_200_carry_the_same_to_tag() -> None:
    server = FakeServer()
    challenge = server.final(register("alice", call_id="one-registration"))
    auth = authorization(challenge, "alice", PASSWORDS["alice"], "REGISTER", "sip:example.test")
    ok = server.final(register("alice", call_id="one-registration", cseq=2, authorization=auth))
    other = server.final(register("bob", call_id="another-registration"))
    assert (challenge.status, ok.status) == (401, 200)
    assert challenge.to.tag == ok.to.tag != other.to.tag


# -- the order of challenges (issue 13 item 1) ------------------------------------------------


def test_a_phone_that_fails_on_any_sha256_challenge_registers_at_once_and_keeps_md5_alone() -> None:
    """baresip 1.0 (libre 1.1) gives up on a 401 holding any SHA-256 challenge and retries 30-60 s later."""
    server = FakeServer()
    first = server.final(register("alice", call_id="baresip"))
    assert [c["algorithm"] for c in challenges(first)] == ["MD5"]  # a new phone: nothing it could fail on
    auth = authorization(first, "alice", "alice-pw", "REGISTER", "sip:example.test")
    assert server.final(register("alice", call_id="baresip", cseq=2, authorization=auth)).status == 200
    server.clock.advance(400)  # its refresh, the nonce gone stale: the probe, SHA-256 on top
    probe = server.final(register("alice", call_id="baresip", cseq=3, authorization=auth))
    assert [c["algorithm"] for c in challenges(probe)] == ["SHA-256", "MD5"]
    server.clock.advance(45)
    with capturedLogs() as events:
        retry = server.final(register("alice", call_id="baresip", cseq=4))  # again without credentials
    assert [c["algorithm"] for c in challenges(retry)] == ["MD5"]
    [said] = [e for e in events if "did not answer" in e["log_format"]]
    assert said["log_level"] == LogLevel.info
    assert (said["user"], said["host"], said["port"], said["offered"]) == ("alice", "192.0.2.7", 5060, "SHA-256, MD5")
    auth = authorization(retry, "alice", "alice-pw", "REGISTER", "sip:example.test")
    assert server.final(register("alice", call_id="baresip", cseq=5, authorization=auth)).status == 200
    assert server.store.lookup("sip:alice@example.test") != []  # the binding held all along
    server.clock.advance(3000)
    refresh = server.final(register("alice", call_id="baresip", cseq=6))
    assert [c["algorithm"] for c in challenges(refresh)] == ["MD5"]  # remembered for its refreshes
    assert server.metrics.auth_failures._value.get() == 0


def test_a_phone_that_answered_md5_is_offered_sha256_first_next_time_and_keeps_it() -> None:
    """A client taking the topmost challenge it supports (pjsua2) moves to SHA-256 at its second authentication."""
    server = FakeServer()
    assert server.register("alice").status == 200  # answered the topmost: MD5
    refresh = server.final(register("alice", cseq=3))
    assert [c["algorithm"] for c in challenges(refresh)] == ["SHA-256", "MD5"]
    auth = authorization(refresh, "alice", "alice-pw", "REGISTER", "sip:example.test")  # the topmost: SHA-256
    assert "algorithm=SHA-256" in auth
    assert server.final(register("alice", cseq=4, authorization=auth)).status == 200
    again = server.final(register("alice", cseq=5))
    assert [c["algorithm"] for c in challenges(again)] == ["SHA-256", "MD5"]


def test_a_phone_that_never_answers_a_challenge_is_logged_once() -> None:
    server = FakeServer(security_settings=settings(unanswered_challenges=3))
    with capturedLogs() as events:
        for n in range(6):
            assert server.final(register("alice", call_id="no-password", cseq=n + 1)).status == 401
            server.clock.advance(30)
    said = [e for e in events if "unanswered" in e["log_format"] or "did not answer" in e["log_format"]]
    assert all(e["log_level"] == LogLevel.info for e in said)
    assert [e["times"] for e in said] == [3]  # said once, at the third in a row
    assert "has left {times} challenges" in said[0]["log_format"]


def test_sha256_alone_is_offered_when_configured() -> None:
    server = FakeServer(security_settings=settings(algorithms=("SHA-256",)))
    response = server.final(register("alice"))
    assert [c["algorithm"] for c in challenges(response)] == ["SHA-256"]
    assert server.register("alice", cseq=3).status == 200
