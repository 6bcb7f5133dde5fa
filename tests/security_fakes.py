"""What the security tests share: users, a whole server in memory (``FakeServer``), request builders.

``FakeServer`` is the SIP core as ``service.build_core`` wires it -- the
real TransportLayer, TransactionLayer, SipStack, Registrar, Proxy and
LocationStore with ``sipproxy.security.Security`` -- on a fake UDP socket
and a ``task.Clock`` (also used by ``test_fuzz_stack``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.task import Clock

from sipproxy.auth import UserDB, UserEntry, compute_response, ha1, parse_auth_params
from sipproxy.location import LocationStore
from sipproxy.message import Request, Response, parse_message
from sipproxy.metrics import Metrics
from sipproxy.proxy import LocalAddress
from sipproxy.registrar import RegistrarSettings
from sipproxy.security import Security, SecuritySettings
from sipproxy.service import build_core
from sipproxy.stack import Domains
from sipproxy.transport import SipDatagramProtocol

try:
    from tests import messages
    from tests.fakes import Connector, FakeUDP
except ImportError:  # pragma: no cover
    import messages  # type: ignore[no-redef]
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
        history: Any = None,
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
        self.history = history(self.clock, self.store) if history is not None else None
        """``history(clock, store)`` builds a binding history to wire (``service._binding_history``'s job)."""
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
            history=self.history,
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
    """A REGISTER from ``addr`` for the AOR of ``user`` (or ``aor_user``), its Contact at ``addr``, for an hour."""
    host, port = addr
    aor = aor_user or user
    return messages.make_request(
        "REGISTER",
        "sip:example.test",
        via=f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKreg{next(_branches)}",
        from_=f"<sip:{aor}@example.test>;tag=r{aor}",
        to=f"<sip:{aor}@example.test>",
        call_id=call_id or f"reg-{aor}-{host}",
        cseq=f"{cseq} REGISTER",
        contact=f"<sip:{contact_user or aor}@{host}:{port}>",
        expires="3600",
        authorization=authorization,
    )


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
    """A request from ``addr`` (From tag ``f1``, a Contact at ``addr``), the raw ``headers`` lines after the rest."""
    host, port = addr
    return messages.make_request(
        method,
        uri,
        via=f"SIP/2.0/UDP {host}:{port};branch={branch or f'z9hG4bKr{next(_branches)}'}",
        from_=f"<{from_}>;tag=f1",
        to=f"<{to}>" + (f";tag={to_tag}" if to_tag else ""),
        call_id=call_id,
        cseq=f"{cseq} {method}",
        contact=f"<sip:{host}:{port}>",
        extra=headers,
    )


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
