"""sipproxy.security: digest authentication wired to the registrar and the proxy, blocks and limits.

Everything runs in memory on a ``task.Clock``: the real TransportLayer,
TransactionLayer, SipStack, Registrar, Proxy and LocationStore, with a fake
UDP socket (``FakeServer``, also used by ``test_fuzz_stack``).  The guard is
also driven directly, so these tests do not depend on where the transport
calls it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from sipproxy.auth import UserDB, UserEntry, compute_response, ha1, parse_auth_params
from sipproxy.location import LocationStore
from sipproxy.message import Request, Response, parse_message
from sipproxy.metrics import Metrics
from sipproxy.proxy import LocalAddress
from sipproxy.registrar import RegistrarSettings
from sipproxy.security import DEFAULT_RATE, Guard, Security, SecuritySettings, build_security, source_key
from sipproxy.service import build_core
from sipproxy.stack import Domains
from sipproxy.transaction import Source
from sipproxy.transport import SipDatagramProtocol, TransportLayer

try:
    from tests.fakes import Connector, FakeUDP
except ImportError:  # pragma: no cover
    from fakes import Connector, FakeUDP  # type: ignore[no-redef]

REALM = "example.test"
START = 1_000_000.0
SECRET = b"s" * 32
PROXY = "192.0.2.1"
LOCAL = LocalAddress(PROXY, 5060)
DOMAINS = ("example.test", PROXY)
ALICE_ADDR = ("192.0.2.7", 5060)
BOB_ADDR = ("192.0.2.20", 5060)
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


def _entry(user: str, password: str, sha256: bool = True) -> UserEntry:
    return UserEntry(
        user=user,
        realm=REALM,
        ha1_md5=ha1("MD5", user, REALM, password),
        ha1_sha256=ha1("SHA-256", user, REALM, password) if sha256 else None,
    )


USERS = UserDB([_entry("alice", "alice-pw"), _entry("bob", "bob-pw"), _entry("carol", "carol-pw", sha256=False)])


def settings(**kw: Any) -> SecuritySettings:
    kw.setdefault("realm", REALM)
    kw.setdefault("max_failures", 3)
    kw.setdefault("failure_window", 60.0)
    kw.setdefault("block_for", 120.0)
    kw.setdefault("rate", None)
    return SecuritySettings(**kw)


# -- a whole server in memory ----------------------------------------------------


class FakeServer:
    """The SIP core as ``service.build_core`` wires it, with a fake UDP socket and a ``task.Clock``."""

    def __init__(
        self,
        users: UserDB | None = USERS,
        security_settings: SecuritySettings | None = None,
        *,
        max_contacts: int = 10,
        secret: bytes = SECRET,
        random_bytes: Any = None,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.metrics = Metrics()
        self.store = LocationStore(self.clock)
        self.domains = Domains(DOMAINS)
        self.security = Security(
            users,
            security_settings or settings(),
            self.domains,
            LOCAL,
            self.clock,
            self.metrics,
            store=self.store,
            secret=secret,
            random_bytes=random_bytes,
        )
        self.connector = Connector()
        core = build_core(
            self.clock,
            self.store,
            self.domains,
            LOCAL,
            self.security,
            self.metrics,
            connect_tcp=self.connector,
            resolve=lambda host, callback: callback(None),
            registrar_settings=RegistrarSettings(domains=frozenset(self.domains.names), max_contacts=max_contacts),
        )
        self.registrar, self.transport, self.stack = core.registrar, core.transport, core.stack
        self.transactions = core.transactions
        self.udp = FakeUDP()
        self.protocol = SipDatagramProtocol(self.transport, 4)
        self.protocol.transport = self.udp  # type: ignore[assignment]
        self.protocol.startProtocol()

    def send(self, data: bytes, addr: tuple[str, int] = ALICE_ADDR) -> list[tuple[Request | Response, tuple[str, int]]]:
        """One datagram in; every message written out because of it."""
        mark = len(self.udp.written)
        self.protocol.datagramReceived(data, addr)
        return [(parse_message(d), a) for d, a in self.udp.written[mark:]]

    def responses(self, data: bytes, addr: tuple[str, int] = ALICE_ADDR) -> list[Response]:
        return [m for m, a in self.send(data, addr) if isinstance(m, Response) and a == addr and m.status >= 200]

    def final(self, data: bytes, addr: tuple[str, int] = ALICE_ADDR) -> Response:
        [response] = self.responses(data, addr)
        return response

    def register(
        self, user: str, addr: tuple[str, int] = ALICE_ADDR, password: str | None = None, **kw: Any
    ) -> Response:
        """REGISTER, answer the 401, return the final response."""
        challenge = self.final(register(user, addr=addr, **kw), addr)
        if challenge.status != 401:
            return challenge
        kw["cseq"] = kw.get("cseq", 1) + 1
        auth = authorization(challenge, user, password or PASSWORDS.get(user, "x"), "REGISTER", "sip:example.test")
        return self.final(register(user, addr=addr, authorization=auth, **kw), addr)


_branches = iter(range(1, 10**9))


def register(
    user: str,
    *,
    aor_user: str | None = None,
    addr: tuple[str, int] = ALICE_ADDR,
    cseq: int = 1,
    call_id: str | None = None,
    authorization: str | None = None,
    contact_user: str | None = None,
) -> bytes:
    host, port = addr
    aor = aor_user or user
    lines = [
        "REGISTER sip:example.test SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKreg{next(_branches)}",
        "Max-Forwards: 70",
        f"From: <sip:{aor}@example.test>;tag=r{aor}",
        f"To: <sip:{aor}@example.test>",
        f"Call-ID: {call_id or f'reg-{aor}-{host}'}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{contact_user or aor}@{host}:{port}>",
        "Expires: 3600",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def request(
    method: str = "INVITE",
    uri: str = "sip:bob@example.test",
    *,
    from_: str = "sip:alice@example.test",
    to: str = "sip:bob@example.test",
    to_tag: str | None = None,
    addr: tuple[str, int] = ALICE_ADDR,
    cseq: int = 1,
    call_id: str = "call-1",
    branch: str | None = None,
    headers: Iterable[str] = (),
) -> bytes:
    host, port = addr
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch={branch or f'z9hG4bKr{next(_branches)}'}",
        "Max-Forwards: 70",
        f"From: <{from_}>;tag=f1",
        f"To: <{to}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:{host}:{port}>",
        *headers,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def challenges(response: Response, header: str = "www-authenticate") -> list[dict[str, str]]:
    out = []
    for value in response.get_all(header):
        scheme, params = parse_auth_params(value)
        assert scheme == "Digest"
        out.append(params)
    return out


def authorization(
    challenge: Response,
    user: str,
    password: str,
    method: str,
    uri: str,
    *,
    algorithm: str | None = None,
    nc: int = 1,
    header: str = "www-authenticate",
    realm: str | None = None,
) -> str:
    """What a UAC answers the challenge with (RFC 7616 §3.4), the first offered algorithm unless told."""
    offered = challenges(challenge, header)
    chosen = next(c for c in offered if algorithm is None or c["algorithm"] == algorithm)
    realm = realm or chosen["realm"]
    cnonce, nc_text = "0a4f113b", f"{nc:08x}"
    response = compute_response(
        chosen["algorithm"],
        ha1(chosen["algorithm"], user, realm, password),
        method,
        uri,
        chosen["nonce"],
        nc_text,
        cnonce,
        "auth",
    )
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{chosen["nonce"]}", uri="{uri}", '
        f'response="{response}", algorithm={chosen["algorithm"]}, cnonce="{cnonce}", nc={nc_text}, qop=auth, '
        f'opaque="{chosen["opaque"]}"'
    )


def sent_to(
    server: FakeServer, out: list[tuple[Request | Response, tuple[str, int]]], addr: tuple[str, int]
) -> list[Request]:
    return [m for m, a in out if isinstance(m, Request) and a == addr]


# -- REGISTER -----------------------------------------------------------------------


def test_register_without_credentials_gets_401_offering_md5_then_sha256_to_a_new_phone() -> None:
    """Issue 13 item 1: MD5 on top, so that clients reading only the first challenge (sipsak, sipp) register."""
    server = FakeServer()
    response = server.final(register("alice"))
    assert response.status == 401
    offered = challenges(response)
    assert [c["algorithm"] for c in offered] == ["MD5", "SHA-256"]
    assert all(c["qop"] == "auth" and c["realm"] == REALM and "stale" not in c for c in offered)
    assert offered[0]["nonce"] == offered[1]["nonce"]
    assert response.to.tag is not None
    assert server.store.lookup("sip:alice@example.test") == []
    assert server.metrics.auth_failures._value.get() == 0


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_register_with_valid_credentials_is_accepted_by_the_real_registrar(algorithm: str) -> None:
    server = FakeServer()
    challenge = server.final(register("alice"))
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
    assert [c["algorithm"] for c in challenges(response)] == ["MD5", "SHA-256"]
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


# -- the proxy ----------------------------------------------------------------------


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
    assert [c["algorithm"] for c in challenges(response, "proxy-authenticate")] == ["MD5", "SHA-256"]
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


# -- failures and blocks -----------------------------------------------------------------


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
    assert server.metrics.blocked.labels("auth")._value.get() >= 7


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


# -- limits (the guard) ---------------------------------------------------------------------


def _guard(**kw: Any) -> tuple[Guard, Clock, Metrics, list[tuple[Response, Source]]]:
    clock = Clock()
    clock.advance(START)
    metrics = Metrics()
    holds = kw.pop("holds", lambda key: False)
    in_flight = kw.pop("in_flight", lambda: 0)
    guard = Guard(settings(**kw), clock, metrics, holds_binding=holds, in_flight=in_flight)
    return guard, clock, metrics, []


def _flood(guard: Guard, source: Source, count: int, out: list[tuple[Response, Source]]) -> int:
    admitted = 0
    for n in range(count):
        message = parse_message(request("MESSAGE", call_id=f"m{n}", addr=(source.host, source.port)))
        admitted += guard.admit(message, source, 300, lambda r, s: out.append((r, s)))
    return admitted


def test_a_flood_from_one_address_gets_503_then_silence_another_address_is_unaffected() -> None:
    guard, clock, metrics, out = _guard(rate=10, burst=20, reply_rate=1, reply_burst=3)
    flooder, other = Source("UDP", "192.0.2.66", 5060), Source("UDP", "192.0.2.67", 5060)
    with capturedLogs() as events:
        assert _flood(guard, flooder, 100, out) == 20
    assert [r.status for r, _ in out] == [503, 503, 503]
    assert all(r.get("retry-after") == "2" for r, _ in out)
    assert all(s == flooder for _, s in out)
    assert metrics.blocked.labels("rate")._value.get() == 80
    [logged] = [e for e in events if "Rate limit" in e["log_format"]]
    assert logged["key"] == "192.0.2.66"
    assert _flood(guard, other, 20, out) == 20
    clock.advance(1)
    assert _flood(guard, flooder, 100, out) == 10


def test_an_address_holding_an_authenticated_binding_gets_a_higher_limit() -> None:
    guard, _, _, out = _guard(rate=10, burst=20, bound_factor=10, holds=lambda key: key == "203.0.113.7")
    assert _flood(guard, Source("UDP", "203.0.113.7", 5060), 300, out) == 200
    assert _flood(guard, Source("UDP", "203.0.113.8", 5060), 300, out) == 20


def test_holding_a_binding_is_known_from_the_location_store() -> None:
    server = FakeServer(security_settings=settings(rate=1, burst=4, bound_factor=10))
    office = ("203.0.113.7", 5060)
    assert server.security.guard.holds_binding("203.0.113.7") is False
    assert server.register("alice", addr=office).status == 200  # 2 requests
    assert server.security.guard.holds_binding("203.0.113.7") is True
    guard = server.security.guard
    server.clock.advance(4)  # the bucket refills at ten times the rate, up to ten times the burst
    assert _flood(guard, Source("UDP", *office), 100, []) == 40
    server.clock.advance(3601)  # the binding expired
    assert guard.holds_binding("203.0.113.7") is False


def test_unparseable_messages_count_against_the_rate_and_are_dropped_when_over() -> None:
    guard, _, _, out = _guard(rate=1, burst=2)
    source = Source("UDP", "192.0.2.66", 5060)
    assert [guard.admit(None, source, 10, lambda r, s: out.append((r, s))) for _ in range(4)] == [
        True,
        True,
        False,
        False,
    ]
    assert out == []


def test_oversized_request_gets_513_and_oversized_response_is_dropped() -> None:
    guard, _, metrics, out = _guard(max_message_size=1000)
    source = Source("TCP", "192.0.2.66", 40000)
    message = parse_message(request("MESSAGE"))
    assert guard.admit(message, source, 1001, lambda r, s: out.append((r, s))) is False
    assert guard.admit(message, source, 1000, lambda r, s: out.append((r, s))) is True
    [(response, _)] = out
    assert response.status == 513 and response.reason == "Message Too Large"
    assert metrics.blocked.labels("size")._value.get() == 1
    ok = parse_message(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
        b"To: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    )
    assert guard.admit(ok, source, 5000, lambda r, s: out.append((r, s))) is False
    assert len(out) == 1


def test_too_many_transactions_in_flight_gets_503_but_ack_and_cancel_pass() -> None:
    count = [5]
    guard, _, metrics, out = _guard(max_transactions=5, in_flight=lambda: count[0])
    source = Source("UDP", "192.0.2.66", 5060)
    assert guard.admit(parse_message(request("INVITE")), source, 100, lambda r, s: out.append((r, s))) is False
    assert guard.admit(parse_message(request("CANCEL")), source, 100, lambda r, s: out.append((r, s))) is True
    assert guard.admit(parse_message(request("ACK", to_tag="t")), source, 100, lambda r, s: out.append((r, s))) is True
    [(response, _)] = out
    assert response.status == 503 and response.get("retry-after") == "5"
    assert metrics.blocked.labels("transactions")._value.get() == 1
    count[0] = 4
    assert guard.admit(parse_message(request("INVITE")), source, 100, lambda r, s: out.append((r, s))) is True


def test_a_lagging_reactor_sheds_new_requests_but_not_dialogs_retransmissions_or_acks() -> None:
    lag: list[float | None] = [0.3]
    guard, _, metrics, out = _guard()
    guard.lagging = lambda: lag[0]
    dialogs = Security(None, settings(), DOMAINS, LOCAL, Clock(), Metrics(), secret=SECRET).dialogs
    guard.in_dialog = dialogs.follows_our_record_route
    route = f"Route: <sip:{PROXY}:5060;lr;dt={dialogs.token('call-1')}>"
    retransmitted = parse_message(request("INVITE", call_id="old"))
    guard.is_retransmission = lambda r: r.call_id == "old"
    source = Source("UDP", "192.0.2.66", 5060)

    def admit(data: bytes) -> bool:
        return guard.admit(parse_message(data), source, 100, lambda r, s: out.append((r, s)))

    with capturedLogs() as events:
        assert admit(request("INVITE")) is False
        assert admit(request("REGISTER")) is False
    assert admit(request("BYE", to_tag="t", headers=(route,))) is True  # ends a call that is up
    assert admit(request("BYE", to_tag="t")) is False  # a To tag alone is no dialog of ours
    assert admit(request("ACK", to_tag="t")) is True
    assert admit(request("CANCEL")) is True
    assert guard.admit(retransmitted, source, 100, lambda r, s: out.append((r, s))) is True
    assert [(r.status, r.get("retry-after")) for r, _ in out] == [(503, "5")] * 3
    assert metrics.blocked.labels("lag")._value.get() == 3
    [logged] = [e for e in events if "behind" in e["log_format"]]
    assert logged["lag"] == 300
    lag[0] = None
    assert admit(request("INVITE")) is True


def test_reactor_lag_needs_three_late_runs_in_a_row_and_ends_with_one_on_time() -> None:
    from sipproxy.security import ReactorLag

    clock = Clock()
    lag = ReactorLag(clock, threshold=0.1)
    lag.start()
    for _ in range(10):
        clock.advance(0.05)  # on time
    assert lag() is None
    clock.advance(0.8)  # one long pause (a full garbage collection)
    clock.advance(0.05)
    assert lag() is None
    for _ in range(3):  # every turn late: the reactor cannot keep up
        clock.advance(0.35)
    assert lag() == pytest.approx(0.3)
    clock.advance(0.05)
    assert lag() is None
    lag.stop()
    assert clock.getDelayedCalls() == []


def test_the_guard_never_raises() -> None:
    def broken(key: str, now: float) -> bool:
        raise RuntimeError("boom")

    guard = Guard(settings(), Clock(), Metrics(), is_blocked=broken)
    with capturedLogs() as events:
        assert guard.admit(parse_message(request()), Source("UDP", "192.0.2.1", 5060), 10, lambda r, s: None)
    assert any("log_failure" in e for e in events)


GUARDED = "guard" in TransportLayer.received.__code__.co_names
"""Does the transport call ``guard.admit`` (the lead's patch to transport/layer.py)?"""


@pytest.mark.skipif(not GUARDED, reason="TransportLayer.received does not call the guard yet")
def test_the_transport_consults_the_guard_before_any_transaction() -> None:
    server = FakeServer(security_settings=settings(rate=1, burst=3, reply_burst=2))
    statuses = []
    for n in range(8):
        options = request("OPTIONS", "sip:example.test", to="sip:example.test", call_id=f"o{n}")
        statuses += [r.status for r in server.responses(options)]
    assert statuses == [200, 200, 200, 503, 503]
    assert server.transactions.server_transaction_count() == 3
    assert server.metrics.blocked.labels("rate")._value.get() == 5
    # garbage over the limit is dropped without the 400
    assert server.send(b"NONSENSE\r\n\r\n") == []


@pytest.mark.skipif(not GUARDED, reason="TransportLayer.received does not call the guard yet")
def test_a_blocked_address_is_refused_everything_through_the_transport() -> None:
    server = FakeServer()
    for n, user in enumerate(("alice", "bob", "carol")):  # a scanner
        server.register(user, password=str(n), cseq=2 * n + 1)
    count = server.transactions.server_transaction_count()
    assert server.final(request("OPTIONS", "sip:example.test", to="sip:example.test")).status == 403
    assert server.transactions.server_transaction_count() == count  # stateless
    assert server.final(request("OPTIONS", "sip:example.test", to="sip:example.test"), BOB_ADDR).status == 200


@pytest.mark.skipif(not GUARDED, reason="TransportLayer.received does not call the guard yet")
def test_oversized_request_through_the_transport_gets_513() -> None:
    server = FakeServer(security_settings=settings(max_message_size=600))
    big = request("MESSAGE", headers=("Subject: " + "x" * 600,))
    assert server.final(big).status == 513


def test_source_key_counts_ipv6_per_64() -> None:
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert source_key("2001:db8:1:2::7") == source_key("[2001:db8:1:2:ffff::1]") == "2001:db8:1:2::/64"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"


# -- open mode, options, start-up log ------------------------------------------------------


def test_without_users_nothing_is_challenged() -> None:
    server = FakeServer(users=None)
    assert server.final(register("bob", addr=BOB_ADDR), BOB_ADDR).status == 200
    assert server.final(register("alice", aor_user="carol")).status == 200  # anybody registers anything
    out = server.send(request())
    assert [m.method for m in sent_to(server, out, BOB_ADDR)] == ["INVITE"]


def test_startup_log_says_whether_authentication_is_on() -> None:
    with capturedLogs() as events:
        FakeServer(users=None).security.announce()
    assert any(e["log_level"] == LogLevel.warn and "Authentication is off" in e["log_format"] for e in events)
    with capturedLogs() as events:
        FakeServer().security.announce()
    [on] = [e for e in events if "Digest authentication on" in e["log_format"]]
    assert on["count"] == 3 and on["realm"] == REALM
    assert any("no SHA-256 HA1" in e["log_format"] and e["count"] == 1 for e in events)


def test_build_security_from_options(tmp_path: Any) -> None:
    from sipproxy.auth import write_user

    path = tmp_path / "users"
    write_user(path, "alice", "example.test", "pw")
    common: dict[str, Any] = {"domains": ["example.test", "other.test"], "realm": None}
    open_ = build_security(dict(common, users=None), Clock(), Metrics(), Domains(DOMAINS), LOCAL)
    assert not open_.enabled and open_.guard.rate is None
    on = build_security(dict(common, users=str(path)), Clock(), Metrics(), Domains(DOMAINS), LOCAL)
    assert on.enabled and on.realm == "example.test" and on.guard.rate is not None
    assert on.guard.rate.rate == DEFAULT_RATE and on.guard.rate.burst == 5 * DEFAULT_RATE
    tuned = build_security(
        dict(
            common, users=str(path), realm="r", **{"rate-limit": 0.0, "digest-algorithms": ("MD5",), "max-failures": 7}
        ),
        Clock(),
        Metrics(),
        Domains(DOMAINS),
        LOCAL,
    )
    assert tuned.realm == "r" and tuned.guard.rate is None and tuned.settings.max_failures == 7
    assert tuned.digest is not None and tuned.digest.algorithms == ("MD5",)
    secrets_differ = build_security(dict(common, users=str(path)), Clock(), Metrics(), Domains(DOMAINS), LOCAL)
    assert secrets_differ.digest._secret != on.digest._secret  # type: ignore[union-attr]  # os.urandom per start
    assert len(on.digest._secret) == 32  # type: ignore[union-attr]


def test_build_security_refuses_a_bad_users_file(tmp_path: Any) -> None:
    path = tmp_path / "users"
    path.write_text("alice:example.test:nothex\n")
    with pytest.raises(ValueError, match="line 1"):
        build_security({"users": str(path), "domains": []}, Clock(), Metrics(), Domains(DOMAINS), LOCAL)
    with pytest.raises(OSError):
        build_security(
            {"users": os.fspath(tmp_path / "missing"), "domains": []}, Clock(), Metrics(), Domains(DOMAINS), LOCAL
        )


# -- the command line (once tap.py has the options) ---------------------------------------------

try:
    from sipproxy.tap import Options

    OPTIONS = {name for name, *_ in Options.optParameters}
except ImportError:  # pragma: no cover
    OPTIONS = set()
TAPPED = {
    "rate-limit",
    "max-failures",
    "block-time",
    "max-message-size",
    "max-transactions",
    "digest-algorithms",
} <= OPTIONS


@pytest.mark.skipif(not TAPPED, reason="tap.py has no security options yet")
def test_security_options_are_parsed_and_checked(tmp_path: Any) -> None:
    from twisted.python import usage

    from sipproxy.auth import write_user

    path = tmp_path / "users"
    write_user(path, "alice", "example.test", "pw")
    options = Options()
    options.parseOptions(
        ["--users", str(path), "--rate-limit", "2.5", "--digest-algorithms", "md5", "--max-failures", "3"]
    )
    assert options["rate-limit"] == 2.5 and options["digest-algorithms"] == ("MD5",) and options["max-failures"] == 3
    security = build_security(options, Clock(), Metrics(), Domains(DOMAINS), LOCAL)
    assert security.guard.rate is not None and security.guard.rate.rate == 2.5
    assert Options().parseOptions([]) is None  # defaults are valid
    bad = tmp_path / "bad"
    bad.write_text("alice:example.test:nothex\n")
    for argv, message in [
        (["--rate-limit", "fast"], "--rate-limit"),
        (["--rate-limit", "-1"], "--rate-limit"),
        (["--digest-algorithms", "SHA-512"], "--digest-algorithms"),
        (["--max-message-size", "0"], "--max-message-size"),
        (["--users", str(bad)], "line 1"),
        (["--users", str(tmp_path / "missing")], "--users"),
    ]:
        with pytest.raises(usage.UsageError, match=message):
            Options().parseOptions(argv)


def test_finished_transactions_do_not_count_as_load() -> None:
    """Transactions that only absorb retransmissions (Timer J) are no reason for 503."""
    server = FakeServer(None, settings(max_transactions=3))
    statuses = [server.final(register(f"user{i}", call_id=f"load-{i}")).status for i in range(10)]
    assert statuses == [200] * 10
    assert server.transactions.server_transaction_count() == 10


def test_overload_refuses_new_requests_but_not_retransmissions() -> None:
    server = FakeServer(None, settings(max_transactions=1))
    assert server.register("bob", addr=BOB_ADDR).status == 200
    invite = request(call_id="busy-1", branch="z9hG4bKbusy1")
    assert [m.method for m in sent_to(server, server.send(invite), BOB_ADDR)] == ["INVITE"]
    retransmitted = server.send(invite)  # bob has not answered: the request is still in flight
    assert not any(isinstance(m, Response) and m.status == 503 for m, _ in retransmitted)
    assert server.final(request(call_id="busy-2", branch="z9hG4bKbusy2")).status == 503


def test_a_registrations_401_and_200_carry_the_same_to_tag() -> None:
    server = FakeServer()
    challenge = server.final(register("alice", call_id="one-registration"))
    auth = authorization(challenge, "alice", PASSWORDS["alice"], "REGISTER", "sip:example.test")
    ok = server.final(register("alice", call_id="one-registration", cseq=2, authorization=auth))
    other = server.final(register("bob", call_id="another-registration"))
    assert (challenge.status, ok.status) == (401, 200)
    assert challenge.to.tag == ok.to.tag != other.to.tag
