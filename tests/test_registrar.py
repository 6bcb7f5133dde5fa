"""Tests for sipproxy.registrar: RFC 3261 §10.3 REGISTER processing, steps 1-8.

Every request goes through the real parser (``parse_message``) and every
response is serialized and parsed again, so what is checked is what the wire
would carry.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from email.utils import formatdate
from typing import Any

import pytest
from twisted.internet.task import Clock

from sipproxy.errors import SipError
from sipproxy.locality import LocalAddress
from sipproxy.location import Binding, LocationStore, SQLitePersistence
from sipproxy.message import Request, Response, make_response, parse_message
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.transaction.interfaces import Source

try:
    from tests.fakes import CommitFailsPersistence
    from tests.messages import make_request, parse_request
except ImportError:  # pragma: no cover
    from fakes import CommitFailsPersistence  # type: ignore[no-redef]
    from messages import make_request, parse_request  # type: ignore[no-redef]

ALICE = "sip:alice@example.test"
BOB = "sip:bob@example.test"
CALL_ID = "843817637684230@998sdasdh09"
PHONE = "sip:alice@192.0.2.7:5062"
LAPTOP = "sip:alice@192.0.2.8:5060"
DESK = "sip:alice@192.0.2.9:5060"
START = 1_000_000.0
SOURCE = Source("UDP", "192.0.2.7", 5062)
SETTINGS = RegistrarSettings(domains=frozenset({"example.test", "192.0.2.1"}))


# -- builders ------------------------------------------------------------------


def register(
    contacts: Sequence[str] = (f"<{PHONE}>",),
    *,
    ruri: str = "sip:example.test",
    to: str = ALICE,
    call_id: str = CALL_ID,
    cseq: int = 1,
    expires: int | str | None = None,
    method: str = "REGISTER",
    headers: Iterable[tuple[str, str]] = (),
) -> Request:
    """A REGISTER as bytes on the wire, parsed by the real parser.

    Each item of ``contacts`` is one Contact header line (it may hold a comma list).
    """
    lines = [f"Contact: {value}" for value in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += [f"{name}: {value}" for name, value in headers]
    return parse_request(
        make_request(
            method,
            ruri,
            via="SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKnashds7",
            from_=f"<{to}>;tag=456248",
            to=f"<{to}>",
            call_id=call_id,
            cseq=f"{cseq} {method}",
            extra=lines,
        )
    )


def wire(response: Response) -> Response:
    """The response as a peer would see it: serialized and parsed again."""
    parsed = parse_message(response.to_bytes())
    assert isinstance(parsed, Response)
    return parsed


def listed(response: Response) -> dict[str, dict[str, str | None]]:
    """Contact URI -> its header parameters, from a 200 OK."""
    return {str(c.uri): c.params for c in wire(response).addresses("contact")}


class SpyStore:
    """A real LocationStore that counts update() calls (one per REGISTER at most)."""

    def __init__(self, store: LocationStore) -> None:
        self.store = store
        self.updates: list[tuple[str, list[Binding], list[str]]] = []

    def lookup(self, aor: str) -> list[Binding]:
        return self.store.lookup(aor)

    def update(self, aor: str, put: Iterable[Binding] = (), remove: Iterable[str] = ()) -> None:
        put, remove = list(put), list(remove)
        self.updates.append((aor, put, remove))
        self.store.update(aor, put=put, remove=remove)


class Log:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def failure(self, format: str, **kwargs: object) -> None:
        self.failures.append(format)


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def store(clock: Clock) -> LocationStore:
    return LocationStore(clock)


@pytest.fixture
def spy(store: LocationStore) -> SpyStore:
    return SpyStore(store)


@pytest.fixture
def registrar(spy: SpyStore, clock: Clock) -> Registrar:
    return Registrar(spy, clock, SETTINGS)


def make_registrar(
    store: Any,
    clock: Clock,
    authenticate: Callable[[Request, str], Response | str | None] | None = None,
    **settings: Any,
) -> Registrar:
    return Registrar(store, clock, RegistrarSettings(domains=frozenset({"example.test"}), **settings), authenticate)


def contacts_of(store: LocationStore, aor: str = ALICE) -> set[str]:
    return {b.contact for b in store.lookup(aor)}


# -- settings --------------------------------------------------------------------


def test_settings_normalise_domains_and_tags() -> None:
    settings = RegistrarSettings(domains=frozenset({"Example.TEST.", "[2001:DB8::1]"}), supported=frozenset({"Path"}))
    assert settings.domains == {"example.test", "2001:db8::1"}
    assert settings.supported == {"path"}


@pytest.mark.parametrize(
    ("fields", "default"),
    [
        ({"max_expires": 1800}, 1800),
        ({"min_expires": 7200, "max_expires": 86400}, 7200),
        ({"default_expires": 0, "min_expires": 0}, 1),
        ({"default_expires": 600}, 600),
    ],
)
def test_settings_bring_default_expires_within_bounds(fields: dict[str, Any], default: int) -> None:
    assert RegistrarSettings(domains=frozenset({"example.test"}), **fields).default_expires == default


@pytest.mark.parametrize(
    "fields",
    [
        {"min_expires": 100, "max_expires": 50},
        {"min_expires": -1},
        {"min_expires": 0, "max_expires": 0},
        {"max_contacts": 0},
    ],
)
def test_settings_reject_inconsistent_values(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RegistrarSettings(domains=frozenset({"example.test"}), **fields)


# -- step 1: Request-URI -------------------------------------------------------------


def test_step1_other_domain_is_404_not_our_domain(registrar: Registrar, spy: SpyStore) -> None:
    request = register(ruri="sip:elsewhere.test")
    assert not registrar.is_for_us(request)
    response = wire(registrar.handle(request, SOURCE))
    assert (response.status, response.reason) == (404, "Not our domain")
    assert spy.updates == []


def test_step1_tel_request_uri_is_416(registrar: Registrar, spy: SpyStore) -> None:
    request = register(ruri="tel:+15551234567")
    assert not registrar.is_for_us(request)
    response = registrar.handle(request, SOURCE)
    assert (response.status, response.reason) == (416, "Unsupported URI Scheme")
    assert spy.updates == []


@pytest.mark.parametrize(
    "ruri",
    [
        "sip:example.test",
        "sip:EXAMPLE.Test:5070",
        "sips:example.test",
        "sip:example.test.",
        "sip:192.0.2.1;transport=tcp",
    ],
)
def test_step1_accepts_our_domains_whatever_the_port_and_case(registrar: Registrar, ruri: str) -> None:
    request = register(ruri=ruri)
    assert registrar.is_for_us(request)
    assert registrar.handle(request, SOURCE).status == 200


def test_step1_ipv6_domain(clock: Clock, store: LocationStore) -> None:
    registrar = Registrar(store, clock, RegistrarSettings(domains=frozenset({"2001:db8::1"})))
    assert registrar.is_for_us(register(ruri="sip:[2001:DB8::1]:5060"))
    assert not registrar.is_for_us(register(ruri="sip:[2001:db8::2]"))


def test_step1_our_address_and_port_is_us_even_when_it_is_not_a_domain(clock: Clock, store: LocationStore) -> None:
    """``REGISTER sip:127.0.0.1:5070`` to a server on 127.0.0.1:5070 started with ``--domain example.test``."""
    settings = RegistrarSettings(domains=frozenset({"example.test"}))
    registrar = Registrar(store, clock, settings, local=LocalAddress("127.0.0.1", 5070))
    for ruri in ("sip:127.0.0.1:5070", "sip:127.0.0.1"):
        assert registrar.is_for_us(register(ruri=ruri))
    assert registrar.handle(register(ruri="sip:127.0.0.1:5070"), SOURCE).status == 200
    assert contacts_of(store) == {PHONE}
    other = wire(registrar.handle(register(ruri="sip:127.0.0.1:5060", cseq=2), SOURCE))
    assert (other.status, other.reason) == (404, "Not our domain")  # another server on this host


# -- step 2: Require ------------------------------------------------------------------


def test_step2_unknown_require_is_420_with_unsupported(registrar: Registrar, spy: SpyStore) -> None:
    request = register(headers=[("Require", "path, foo"), ("Require", "bar, foo")])
    response = wire(registrar.handle(request, SOURCE))
    assert response.status == 420
    assert response.reason == "Bad Extension"
    assert response.get_all("unsupported") == ["foo", "bar"]
    assert spy.updates == []


def test_step2_require_path_is_supported(registrar: Registrar) -> None:
    request = register(headers=[("Require", "Path"), ("Supported", "path")])
    assert registrar.handle(request, SOURCE).status == 200


# -- step 3: authentication -----------------------------------------------------------


def test_step3_hook_response_is_passed_through(clock: Clock, spy: SpyStore) -> None:
    calls: list[tuple[Request, str]] = []

    def challenge(request: Request, aor: str) -> Response:
        calls.append((request, aor))
        response = make_response(request, 401, to_tag="t")
        response.add("WWW-Authenticate", 'Digest realm="example.test", nonce="abc"')
        return response

    registrar = make_registrar(spy, clock, challenge)
    request = register()
    response = registrar.handle(request, SOURCE)
    assert response.status == 401
    assert response.get("www-authenticate") == 'Digest realm="example.test", nonce="abc"'
    assert calls == [(request, ALICE)]
    assert spy.updates == []


def test_step3_hook_runs_after_steps_1_and_2(clock: Clock, spy: SpyStore) -> None:
    calls: list[str] = []
    registrar = make_registrar(spy, clock, lambda request, aor: calls.append(aor))
    assert registrar.handle(register(ruri="sip:elsewhere.test"), SOURCE).status == 404
    assert registrar.handle(register(headers=[("Require", "foo")]), SOURCE).status == 420
    assert calls == []


def test_step3_hook_may_refuse_by_raising_sip_error(clock: Clock, spy: SpyStore) -> None:
    def blocked(request: Request, aor: str) -> None:
        raise SipError(403, "Blocked", [("Retry-After", "120")])

    registrar = make_registrar(spy, clock, blocked)
    response = wire(registrar.handle(register(), SOURCE))
    assert (response.status, response.reason, response.get("retry-after")) == (403, "Blocked", "120")
    assert response.to.tag is not None
    assert spy.updates == []


def test_step3_hook_that_raises_gives_500(clock: Clock, spy: SpyStore) -> None:
    def broken(request: Request, aor: str) -> None:
        raise RuntimeError("boom")

    registrar = make_registrar(spy, clock, broken)
    assert registrar.handle(register(), SOURCE).status == 500


# -- step 4: authorization ------------------------------------------------------------


def test_step4_wrong_user_is_403(clock: Clock, spy: SpyStore) -> None:
    registrar = make_registrar(spy, clock, lambda request, aor: "bob")
    response = registrar.handle(register(), SOURCE)
    assert (response.status, response.reason) == (403, "Not your address-of-record")
    assert spy.updates == []


def test_step4_own_user_is_accepted_after_unescaping(clock: Clock, spy: SpyStore, store: LocationStore) -> None:
    seen: list[str] = []

    def hook(request: Request, aor: str) -> str:
        seen.append(aor)
        return "alice"

    registrar = make_registrar(spy, clock, hook)
    assert registrar.handle(register(to="sip:al%69ce@example.test"), SOURCE).status == 200
    assert seen == [ALICE]
    assert contacts_of(store) == {PHONE}


def test_step4_authenticated_user_cannot_register_a_tel_address(clock: Clock, spy: SpyStore) -> None:
    registrar = make_registrar(spy, clock, lambda request, aor: "alice")
    assert registrar.handle(register(to="tel:+15551234567"), SOURCE).status == 403


# -- step 5: address-of-record ----------------------------------------------------------


@pytest.mark.parametrize("to", ["sip:alice@elsewhere.test", "tel:+15551234567", "sip:example.test"])
def test_step5_foreign_or_unusable_aor_is_404(registrar: Registrar, spy: SpyStore, to: str) -> None:
    response = registrar.handle(register(to=to), SOURCE)
    assert response.status == 404
    assert spy.updates == []


def test_step5_aor_is_canonicalised(clock: Clock, spy: SpyStore, store: LocationStore) -> None:
    seen: list[str] = []
    registrar = make_registrar(spy, clock, lambda request, aor: seen.append(aor))
    response = registrar.handle(register(to="sip:Alice@EXAMPLE.test;user=phone"), SOURCE)
    assert response.status == 200
    assert seen == ["sip:Alice@example.test"]
    assert [b.aor for b in store.lookup("sip:Alice@example.test")] == ["sip:Alice@example.test"]
    assert store.lookup(ALICE) == []  # the user part keeps its case
    # The query under another spelling of the same AOR sees the binding.
    assert set(listed(registrar.handle(register((), to="sip:Alice@example.TEST", cseq=2), SOURCE))) == {PHONE}


def test_step5_aor_is_stored_without_the_port(clock: Clock, spy: SpyStore, store: LocationStore) -> None:
    """§10.3 step 5, as Kamailio and OpenSIPS key AORs: a To with our port is the same address-of-record."""
    seen: list[str] = []
    registrar = make_registrar(spy, clock, lambda request, aor: seen.append(aor))
    assert registrar.handle(register(to="sip:alice@example.test:5060"), SOURCE).status == 200
    assert seen == [ALICE]
    assert [b.aor for b in store.lookup(ALICE)] == [ALICE]
    assert store.lookup("sip:alice@example.test:5060") == []
    assert set(listed(registrar.handle(register((), cseq=2), SOURCE))) == {PHONE}


def legacy_binding(contact: str, aor: str = "sip:alice@example.test:5060") -> Binding:
    """A binding as an older version stored it, from a To with a port: keyed by the AOR with its port."""
    return Binding(
        aor=aor,
        contact=contact,
        call_id="older-call-id",
        cseq=9,
        expires_at=START + 600,
        transport="UDP",
        source_host="192.0.2.8",
        source_port=5060,
        registered_at=START - 100,
        refreshed_at=START - 100,
    )


def test_step5_bindings_stored_under_the_aor_with_its_port_move_to_the_canonical_aor(
    registrar: Registrar, store: LocationStore
) -> None:
    legacy = "sip:alice@example.test:5060"
    store.update(legacy, put=[legacy_binding(LAPTOP)])
    response = registrar.handle(register(to=legacy), SOURCE)
    assert response.status == 200
    assert store.lookup(legacy) == []
    assert contacts_of(store) == {PHONE, LAPTOP}
    assert {b.aor for b in store.lookup(ALICE)} == {ALICE}
    assert listed(response)[LAPTOP] == {"expires": "600"}
    # moved, the old binding is the phone's like any other: Contact: * removes it too
    assert registrar.handle(register(["*"], to=legacy, cseq=2, expires=0), SOURCE).status == 200
    assert contacts_of(store) == set()


def test_step5_a_moved_binding_does_not_overwrite_a_canonical_one(registrar: Registrar, store: LocationStore) -> None:
    assert registrar.handle(register(), SOURCE).status == 200
    store.update("sip:alice@example.test:5060", put=[legacy_binding(PHONE)])
    assert registrar.handle(register((), to="sip:alice@example.test:5060", cseq=2), SOURCE).status == 200
    [binding] = store.lookup(ALICE)
    assert (binding.call_id, binding.cseq) == (CALL_ID, 1)
    assert store.lookup("sip:alice@example.test:5060") == []


# -- step 6: Contacts ------------------------------------------------------------------


def test_step6_several_contact_headers_and_comma_lists(registrar: Registrar, store: LocationStore) -> None:
    request = register([f"<{PHONE}>", f'"Laptop" <{LAPTOP}>;expires=600, {DESK}'])
    response = registrar.handle(request, SOURCE)
    assert response.status == 200
    assert contacts_of(store) == {PHONE, LAPTOP, DESK}
    assert listed(response) == {
        PHONE: {"expires": "3600"},
        LAPTOP: {"expires": "600"},
        DESK: {"expires": "3600"},
    }


def test_step6_wildcard_with_expires_0_removes_all(registrar: Registrar, store: LocationStore, spy: SpyStore) -> None:
    registrar.handle(register([f"<{PHONE}>, <{LAPTOP}>"], cseq=1), SOURCE)
    registrar.handle(register([f"<{DESK}>"], call_id="other-call", cseq=7), SOURCE)
    assert len(store.lookup(ALICE)) == 3
    response = registrar.handle(register(["*"], cseq=2, expires=0), SOURCE)
    assert response.status == 200
    assert store.lookup(ALICE) == []
    assert not wire(response).has("contact")
    assert spy.updates[-1][2] and not spy.updates[-1][1]


def test_step6_wildcard_without_bindings_is_200_and_no_update(registrar: Registrar, spy: SpyStore) -> None:
    assert registrar.handle(register(["*"], expires=0), SOURCE).status == 200
    assert spy.updates == []


@pytest.mark.parametrize("expires", [None, 3600])
def test_step6_wildcard_needs_expires_0(registrar: Registrar, store: LocationStore, expires: int | None) -> None:
    registrar.handle(register(), SOURCE)
    response = wire(registrar.handle(register(["*"], cseq=2, expires=expires), SOURCE))
    assert response.status == 400
    assert "Expires: 0" in response.reason
    assert contacts_of(store) == {PHONE}


@pytest.mark.parametrize("contacts", [["*", f"<{PHONE}>"], [f"*, <{PHONE}>"], [f"<{PHONE}>", "*"]])
def test_step6_wildcard_with_another_contact_is_400(registrar: Registrar, spy: SpyStore, contacts: list[str]) -> None:
    response = wire(registrar.handle(register(contacts, expires=0), SOURCE))
    assert response.status == 400
    assert "Wildcard" in response.reason and "only" in response.reason
    assert spy.updates == []


@pytest.mark.parametrize(
    ("contact", "expires"), [(f"<{PHONE}>;expires=30", None), (f"<{PHONE}>", 30), (f"<{PHONE}>;expires=59", 3600)]
)
def test_step6_too_brief_is_423_with_min_expires(
    registrar: Registrar, spy: SpyStore, contact: str, expires: int | None
) -> None:
    response = wire(registrar.handle(register([contact], expires=expires), SOURCE))
    assert (response.status, response.reason) == (423, "Interval Too Brief")
    assert response.get("min-expires") == "60"
    assert spy.updates == []


def test_step6_423_for_one_contact_refuses_the_whole_request(registrar: Registrar, spy: SpyStore) -> None:
    response = registrar.handle(register([f"<{PHONE}>, <{LAPTOP}>;expires=10"]), SOURCE)
    assert response.status == 423
    assert spy.updates == []


def test_step6_too_long_is_lowered_to_max(registrar: Registrar, store: LocationStore) -> None:
    response = registrar.handle(
        register([f"<{PHONE}>;expires=99999999999999999999", f"<{LAPTOP}>"], expires=100000), SOURCE
    )
    assert response.status == 200
    assert {b.contact: b.expires_at for b in store.lookup(ALICE)} == {PHONE: START + 7200, LAPTOP: START + 7200}
    assert {c: p["expires"] for c, p in listed(response).items()} == {PHONE: "7200", LAPTOP: "7200"}


def test_step6_expires_param_overrides_header_and_default_applies(registrar: Registrar, store: LocationStore) -> None:
    registrar.handle(register([f"<{PHONE}>;expires=600, <{LAPTOP}>"], expires=120), SOURCE)
    registrar.handle(register([f"<{DESK}>"], to=BOB), SOURCE)
    assert {b.contact: b.expires_at - START for b in store.lookup(ALICE)} == {PHONE: 600, LAPTOP: 120}
    assert [b.expires_at - START for b in store.lookup(BOB)] == [3600]


@pytest.mark.parametrize(
    ("contact", "expires", "reason"),
    [
        (f"<{PHONE}>;expires=soon", None, "Bad expires parameter in Contact"),
        (f"<{PHONE}>;expires", None, "Bad expires parameter in Contact"),
        (f"<{PHONE}>;expires=-1", None, "Bad expires parameter in Contact"),
        (f"<{PHONE}>", "soon", "Bad Expires"),
        (f"<{PHONE}>", "\u00b2", "Bad Expires"),
        (f"<{PHONE}>;q=2", None, "Bad q parameter in Contact (must be 0 to 1)"),
        (f"<{PHONE}>;q=high", None, "Bad q parameter in Contact (must be 0 to 1)"),
        (f"<{PHONE}>;q=-0.5", None, "Bad q parameter in Contact (must be 0 to 1)"),
        (f"<{PHONE}>;reg-id=0", None, "Bad reg-id parameter in Contact"),
        (f"<{PHONE}>;+sip.instance", None, "Bad +sip.instance parameter in Contact"),
        ("<mailto:alice@example.test>", None, "Contact must be a SIP or SIPS URI"),
    ],
)
def test_step6_bad_contact_values_are_400(
    registrar: Registrar, spy: SpyStore, contact: str, expires: str | None, reason: str
) -> None:
    response = wire(registrar.handle(register([contact], expires=expires), SOURCE))
    assert (response.status, response.reason) == (400, reason)
    assert spy.updates == []


@pytest.mark.parametrize(
    "contact",
    ["<sip:alice@bad_host!>", "<sip:alice@192.0.2.7:99999>", "<sip:alice@192.0.2.7", "sip:alice@192.0.2.7;=x"],
)
def test_step6_malformed_contact_is_400_naming_the_problem(registrar: Registrar, spy: SpyStore, contact: str) -> None:
    response = wire(registrar.handle(register([contact]), SOURCE))
    assert response.status == 400
    assert "Contact" in response.reason
    assert len(response.reason) > len("Bad Contact")
    assert spy.updates == []


def test_step6_q_values(registrar: Registrar, store: LocationStore) -> None:
    response = registrar.handle(register([f"<{PHONE}>;q=0.5, <{LAPTOP}>;q=1.0, <{DESK}>;q=0"]), SOURCE)
    assert {b.contact: b.q for b in store.lookup(ALICE)} == {PHONE: 0.5, LAPTOP: 1.0, DESK: 0.0}
    contacts = listed(response)
    assert contacts[PHONE] == {"expires": "3600", "q": "0.5"}
    assert contacts[LAPTOP] == {"expires": "3600"}
    assert contacts[DESK] == {"expires": "3600", "q": "0"}
    assert list(contacts) == [LAPTOP, PHONE, DESK]  # lookup order: q descending


def test_step6_duplicate_contact_last_wins(registrar: Registrar, store: LocationStore) -> None:
    response = registrar.handle(register([f"<{PHONE}>;expires=600", f"<{PHONE}>;expires=900"]), SOURCE)
    assert response.status == 200
    assert [(b.contact, b.expires_at - START) for b in store.lookup(ALICE)] == [(PHONE, 900)]


# -- step 7: bindings -------------------------------------------------------------------


def test_step7_expires_0_removes_one_contact(registrar: Registrar, store: LocationStore, clock: Clock) -> None:
    registrar.handle(register([f"<{PHONE}>, <{LAPTOP}>"]), SOURCE)
    response = registrar.handle(register([f"<{PHONE}>;expires=0"], cseq=2), SOURCE)
    assert response.status == 200
    assert contacts_of(store) == {LAPTOP}
    assert set(listed(response)) == {LAPTOP}


def test_step7_expires_0_for_unknown_contact_changes_nothing(registrar: Registrar, spy: SpyStore) -> None:
    assert registrar.handle(register(expires=0), SOURCE).status == 200
    assert spy.updates == []


@pytest.mark.parametrize("cseq", [4, 5])
def test_step7_same_call_id_not_higher_cseq_is_500(registrar: Registrar, store: LocationStore, cseq: int) -> None:
    registrar.handle(register(cseq=5), SOURCE)
    before = store.lookup(ALICE)
    response = wire(registrar.handle(register([f"<{PHONE}>;expires=0"], cseq=cseq), SOURCE))
    assert (response.status, response.reason) == (500, "Out of order CSeq")
    assert store.lookup(ALICE) == before


def test_step7_out_of_order_second_contact_changes_neither(
    registrar: Registrar, store: LocationStore, spy: SpyStore, clock: Clock
) -> None:
    registrar.handle(register([f"<{PHONE}>"], call_id="call-a", cseq=1), SOURCE)
    registrar.handle(register([f"<{LAPTOP}>"], call_id="call-b", cseq=9), SOURCE)
    before = store.lookup(ALICE)
    updates = len(spy.updates)
    clock.advance(10)
    # PHONE would be refreshed (same Call-ID, higher CSeq); LAPTOP is out of order for call-b.
    response = registrar.handle(
        register([f"<{PHONE}>;expires=900, <{DESK}>, <{LAPTOP}>"], call_id="call-b", cseq=5), SOURCE
    )
    assert response.status == 500
    assert store.lookup(ALICE) == before
    assert len(spy.updates) == updates


def test_step7_wildcard_respects_cseq_order(registrar: Registrar, store: LocationStore) -> None:
    registrar.handle(register([f"<{PHONE}>"], call_id="call-a", cseq=1), SOURCE)
    registrar.handle(register([f"<{LAPTOP}>"], call_id="call-b", cseq=9), SOURCE)
    response = registrar.handle(register(["*"], call_id="call-b", cseq=9, expires=0), SOURCE)
    assert (response.status, response.reason) == (500, "Out of order CSeq")
    assert contacts_of(store) == {PHONE, LAPTOP}
    assert registrar.handle(register(["*"], call_id="call-b", cseq=10, expires=0), SOURCE).status == 200
    assert store.lookup(ALICE) == []


def test_step7_different_call_id_replaces(registrar: Registrar, store: LocationStore, clock: Clock) -> None:
    registrar.handle(register(call_id="boot-1", cseq=50), SOURCE)
    clock.advance(100)
    response = registrar.handle(register([f"<{PHONE}>;expires=300"], call_id="boot-2", cseq=1), SOURCE)
    assert response.status == 200
    [binding] = store.lookup(ALICE)
    assert (binding.call_id, binding.cseq) == ("boot-2", 1)
    assert binding.expires_at == START + 100 + 300
    assert binding.registered_at == binding.refreshed_at == START + 100  # a new registration


def test_step7_different_call_id_with_expires_0_removes(registrar: Registrar, store: LocationStore) -> None:
    registrar.handle(register(call_id="boot-1", cseq=50), SOURCE)
    assert registrar.handle(register(call_id="boot-2", cseq=1, expires=0), SOURCE).status == 200
    assert store.lookup(ALICE) == []


def test_step7_refresh_keeps_registered_at(registrar: Registrar, store: LocationStore, clock: Clock) -> None:
    registrar.handle(register(cseq=1), SOURCE)
    clock.advance(1800)
    registrar.handle(register(cseq=2), SOURCE)
    [binding] = store.lookup(ALICE)
    assert binding.registered_at == START
    assert binding.refreshed_at == START + 1800
    assert binding.expires_at == START + 1800 + 3600
    assert binding.cseq == 2


def test_step7_contacts_compare_as_uris(registrar: Registrar, store: LocationStore) -> None:
    registrar.handle(register(["<sip:alice@PC33.example.test;transport=udp>"], cseq=1), SOURCE)
    registrar.handle(register(["<sip:alice@pc33.example.test;transport=UDP>"], cseq=2), SOURCE)
    assert contacts_of(store) == {"sip:alice@pc33.example.test;transport=UDP"}
    response = registrar.handle(register(["<sip:alice@pc33.EXAMPLE.test;transport=udp>"], cseq=1), SOURCE)
    assert response.status == 500  # the same binding: out of order
    response = registrar.handle(register(["<sip:alice@Pc33.example.test;transport=udp>;expires=0"], cseq=3), SOURCE)
    assert response.status == 200
    assert store.lookup(ALICE) == []


def test_step7_one_update_per_register(registrar: Registrar, spy: SpyStore) -> None:
    registrar.handle(register([f"<{PHONE}>, <{LAPTOP}>", f"<{DESK}>"]), SOURCE)
    assert len(spy.updates) == 1
    registrar.handle(
        register([f"<{PHONE}>;expires=0, <{LAPTOP}>;expires=900", "<sip:alice@192.0.2.10>"], cseq=2), SOURCE
    )
    assert len(spy.updates) == 2
    aor, put, remove = spy.updates[1]
    assert aor == ALICE
    assert {b.contact for b in put} == {LAPTOP, "sip:alice@192.0.2.10"}
    assert remove == [PHONE]


def test_step7_max_contacts(clock: Clock, spy: SpyStore, store: LocationStore) -> None:
    registrar = make_registrar(spy, clock, max_contacts=2)
    assert registrar.handle(register([f"<{PHONE}>, <{LAPTOP}>"], cseq=1), SOURCE).status == 200
    response = wire(registrar.handle(register([f"<{DESK}>"], cseq=2), SOURCE))
    assert (response.status, response.reason) == (403, "Too many contacts (max 2)")
    assert contacts_of(store) == {PHONE, LAPTOP}
    # Refreshing, and swapping one contact for another, stay within the limit.
    assert registrar.handle(register([f"<{PHONE}>, <{LAPTOP}>"], cseq=3), SOURCE).status == 200
    assert registrar.handle(register([f"<{PHONE}>;expires=0, <{DESK}>"], cseq=4), SOURCE).status == 200
    assert contacts_of(store) == {LAPTOP, DESK}
    # Three new contacts at once are refused as a whole.
    assert registrar.handle(register([f"<{PHONE}>, <{LAPTOP}>, <{DESK}>"], to=BOB), SOURCE).status == 403
    assert store.lookup(BOB) == []


def test_step7_records_where_the_registration_came_from(registrar: Registrar, store: LocationStore) -> None:
    instance = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    request = register(
        [f"<{PHONE}>;+sip.instance={instance};reg-id=1;q=0.7"],
        cseq=42,
        headers=[("User-Agent", "Linphone/5.2 (belle-sip/5.2)")],
    )
    assert registrar.handle(request, Source("TCP", "198.51.100.4", 40123)).status == 200
    [binding] = store.lookup(ALICE)
    assert binding == Binding(
        aor=ALICE,
        contact=PHONE,
        call_id=CALL_ID,
        cseq=42,
        expires_at=START + 3600,
        q=0.7,
        transport="TCP",
        source_host="198.51.100.4",
        source_port=40123,
        path=(),
        user_agent="Linphone/5.2 (belle-sip/5.2)",
        instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>",
        reg_id=1,
        registered_at=START,
        refreshed_at=START,
    )


# -- step 7: replacement by +sip.instance and reg-id (RFC 5626 §6) ----------------------------

UUID = "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
OTHER_UUID = "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"


def with_instance(uri: str, instance: str = UUID, reg_id: int | None = 1, extra: str = "") -> str:
    """A Contact header value carrying ``+sip.instance`` (and ``reg-id`` unless None)."""
    value = f'<{uri}>;+sip.instance="{instance}"'
    if reg_id is not None:
        value += f";reg-id={reg_id}"
    return value + extra


@pytest.mark.parametrize("reg_id", [1, None])
def test_step7_same_instance_from_new_contact_replaces_the_binding(
    registrar: Registrar, store: LocationStore, spy: SpyStore, clock: Clock, reg_id: int | None
) -> None:
    registrar.handle(register([with_instance(PHONE, reg_id=reg_id)], call_id="boot-1", cseq=7), SOURCE)
    clock.advance(100)
    # After a reboot the phone registers from a new NAT port, with a new Call-ID.
    new_contact = "sip:alice@192.0.2.7:40001"
    response = registrar.handle(
        register([with_instance(new_contact, reg_id=reg_id)], call_id="boot-2", cseq=1),
        Source("UDP", "192.0.2.7", 40001),
    )
    assert response.status == 200
    [binding] = store.lookup(ALICE)
    assert (binding.contact, binding.instance, binding.reg_id) == (new_contact, UUID, reg_id)
    assert (binding.call_id, binding.cseq, binding.source_port) == ("boot-2", 1, 40001)
    assert binding.registered_at == START + 100  # a new registration
    assert set(listed(response)) == {new_contact}
    # One atomic update: the new contact put, the old one removed.
    aor, put, remove = spy.updates[-1]
    assert (aor, [b.contact for b in put], remove) == (ALICE, [new_contact], [PHONE])


def test_step7_same_instance_and_call_id_moves_the_registration(
    registrar: Registrar, store: LocationStore, clock: Clock
) -> None:
    registrar.handle(register([with_instance(PHONE)], cseq=1), SOURCE)
    clock.advance(600)
    assert registrar.handle(register([with_instance(LAPTOP)], cseq=2), SOURCE).status == 200
    [binding] = store.lookup(ALICE)
    assert (binding.contact, binding.cseq) == (LAPTOP, 2)
    assert binding.registered_at == START  # the same registration, refreshed from a new contact
    assert binding.refreshed_at == START + 600


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (with_instance(PHONE, reg_id=1), with_instance(LAPTOP, reg_id=2)),
        (with_instance(PHONE, reg_id=1), with_instance(LAPTOP, reg_id=None)),
        (with_instance(PHONE, reg_id=None), with_instance(LAPTOP, reg_id=1)),
        (with_instance(PHONE), with_instance(LAPTOP, instance=OTHER_UUID)),
        (with_instance(PHONE, reg_id=None), with_instance(LAPTOP, instance=OTHER_UUID, reg_id=None)),
        (with_instance(PHONE), f"<{LAPTOP}>;reg-id=1"),
        (f"<{PHONE}>", with_instance(LAPTOP)),
        (f"<{PHONE}>;reg-id=1", with_instance(LAPTOP)),
    ],
)
def test_step7_other_instance_or_reg_id_adds_a_binding(
    registrar: Registrar, store: LocationStore, first: str, second: str
) -> None:
    registrar.handle(register([first], cseq=1), SOURCE)
    assert registrar.handle(register([second], cseq=2), SOURCE).status == 200
    assert contacts_of(store) == {PHONE, LAPTOP}


def test_step7_instance_is_compared_exactly(registrar: Registrar, store: LocationStore) -> None:
    registrar.handle(register([with_instance(PHONE)], cseq=1), SOURCE)
    registrar.handle(register([with_instance(LAPTOP, instance=UUID.lower())], cseq=2), SOURCE)
    assert contacts_of(store) == {PHONE, LAPTOP}


def test_step7_expires_0_with_instance_removes_the_binding_under_another_uri(
    registrar: Registrar, store: LocationStore, spy: SpyStore
) -> None:
    registrar.handle(register([with_instance(PHONE), f"<{DESK}>"], call_id="boot-1", cseq=1), SOURCE)
    response = registrar.handle(register([with_instance(LAPTOP, extra=";expires=0")], call_id="boot-2", cseq=1), SOURCE)
    assert response.status == 200
    assert contacts_of(store) == {DESK}
    assert set(listed(response)) == {DESK}
    assert spy.updates[-1] == (ALICE, [], [PHONE])


def test_step7_expires_0_with_other_reg_id_removes_nothing(registrar: Registrar, spy: SpyStore) -> None:
    registrar.handle(register([with_instance(PHONE, reg_id=1)], cseq=1), SOURCE)
    assert registrar.handle(register([with_instance(LAPTOP, reg_id=2)], cseq=2, expires=0), SOURCE).status == 200
    assert len(spy.updates) == 1


@pytest.mark.parametrize("cseq", [6, 7])
def test_step7_out_of_order_cseq_against_the_replaced_binding_is_500(
    registrar: Registrar, store: LocationStore, spy: SpyStore, cseq: int
) -> None:
    registrar.handle(register([with_instance(PHONE), f"<{DESK}>"], cseq=7), SOURCE)
    before = store.lookup(ALICE)
    updates = len(spy.updates)
    for contact in (with_instance(LAPTOP), with_instance(LAPTOP, extra=";expires=0")):
        response = wire(registrar.handle(register([contact], cseq=cseq), SOURCE))
        assert (response.status, response.reason) == (500, "Out of order CSeq")
    assert store.lookup(ALICE) == before
    assert len(spy.updates) == updates


def test_step7_same_instance_twice_in_one_register_last_wins(registrar: Registrar, store: LocationStore) -> None:
    registrar.handle(register([with_instance(PHONE)], cseq=1), SOURCE)
    response = registrar.handle(register([with_instance(LAPTOP), with_instance(DESK, extra=";q=0.5")], cseq=2), SOURCE)
    assert response.status == 200
    assert [(b.contact, b.q) for b in store.lookup(ALICE)] == [(DESK, 0.5)]


def test_step7_max_contacts_counts_after_replacement(clock: Clock, spy: SpyStore, store: LocationStore) -> None:
    registrar = make_registrar(spy, clock, max_contacts=2)
    assert registrar.handle(register([with_instance(PHONE), f"<{LAPTOP}>"], cseq=1), SOURCE).status == 200
    assert registrar.handle(register([with_instance(DESK)], cseq=2), SOURCE).status == 200
    assert contacts_of(store) == {DESK, LAPTOP}
    response = wire(registrar.handle(register([with_instance(PHONE, reg_id=2)], cseq=3), SOURCE))
    assert (response.status, response.reason) == (403, "Too many contacts (max 2)")
    assert contacts_of(store) == {DESK, LAPTOP}


def test_step7_transport_is_upper_cased(registrar: Registrar, store: LocationStore) -> None:
    registrar.handle(register(), Source("tls", "198.51.100.4", 5061))
    assert store.lookup(ALICE)[0].transport == "TLS"


PATH = [("Path", "<sip:P3.example.test;lr>"), ("Path", "<sip:p1.example.test;lr>")]


def test_step7_path_stored_and_echoed_with_supported_path(registrar: Registrar, store: LocationStore) -> None:
    response = wire(registrar.handle(register(headers=[*PATH, ("Supported", "replaces, path")]), SOURCE))
    assert response.status == 200
    assert store.lookup(ALICE)[0].path == ("<sip:P3.example.test;lr>", "<sip:p1.example.test;lr>")
    assert response.get_all("path") == ["<sip:P3.example.test;lr>", "<sip:p1.example.test;lr>"]


def test_step7_path_ignored_without_supported_path(registrar: Registrar, store: LocationStore) -> None:
    response = wire(registrar.handle(register(headers=[*PATH, ("Supported", "replaces")]), SOURCE))
    assert response.status == 200
    assert store.lookup(ALICE)[0].path == ()
    assert not response.has("path")


def test_step7_path_ignored_when_we_do_not_support_it(clock: Clock, store: LocationStore) -> None:
    registrar = make_registrar(store, clock, supported=frozenset())
    response = wire(registrar.handle(register(headers=[*PATH, ("Supported", "path")]), SOURCE))
    assert response.status == 200
    assert store.lookup(ALICE)[0].path == ()
    assert not response.has("path")
    assert not response.has("supported")


def test_step7_malformed_path_is_400(registrar: Registrar, spy: SpyStore) -> None:
    response = wire(
        registrar.handle(register(headers=[("Path", "<sip:p1.example.test"), ("Supported", "path")]), SOURCE)
    )
    assert response.status == 400
    assert response.reason.startswith("Bad Path: ")
    assert spy.updates == []


def test_step7_store_failure_is_500_and_changes_nothing(clock: Clock, tmp_path: Any) -> None:
    class FailingPersistence(SQLitePersistence):
        fail = False

        def write(self, put: Sequence[Binding], remove: Sequence[tuple[str, str]]) -> None:
            if self.fail:
                raise sqlite3.OperationalError("disk I/O error")
            super().write(put, remove)

    persistence = FailingPersistence(str(tmp_path / "bindings.sqlite"))
    store = LocationStore(clock, persistence)
    log = Log()
    registrar = Registrar(store, clock, SETTINGS, log=log)
    assert registrar.handle(register([f"<{PHONE}>"]), SOURCE).status == 200
    before = store.lookup(ALICE)
    persistence.fail = True
    response = registrar.handle(register([f"<{PHONE}>;expires=0, <{LAPTOP}>"], cseq=2), SOURCE)
    assert (response.status, response.reason) == (500, "Location service failure")
    assert store.lookup(ALICE) == before
    assert persistence.load() == before
    assert len(log.failures) == 1
    store.close()


def test_step7_ok_waits_for_the_commit_and_failed_commit_is_500(clock: Clock, tmp_path: Any) -> None:
    path = str(tmp_path / "bindings.sqlite")
    persistence = CommitFailsPersistence(path)
    store = LocationStore(clock, persistence)
    registrar = Registrar(store, clock, SETTINGS, log=Log())
    sent: list[Response] = []

    registrar.answer(register([f"<{PHONE}>"]), SOURCE, sent.append)
    registrar.answer(register([f"<{PHONE}>"], ruri="sip:elsewhere.test"), SOURCE, sent.append)
    assert [r.status for r in sent] == [404]  # a rejection goes at once, the 200 waits for the disk
    clock.advance(0)
    assert [r.status for r in sent] == [404, 200]
    assert list(listed(sent[1])) == [PHONE]
    with sqlite3.connect(path) as reader:
        assert reader.execute("SELECT contact FROM bindings").fetchall() == [(PHONE,)]
    reader.close()

    persistence.broken = True
    registrar.answer(register([f"<{LAPTOP}>"], call_id="laptop"), SOURCE, sent.append)
    clock.advance(0)
    assert (sent[-1].status, sent[-1].reason) == (500, "Location service failure")
    assert [b.contact for b in store.lookup(ALICE)] == [PHONE]
    store.close()


# -- step 8: the 200 OK --------------------------------------------------------------------


def test_step8_ok_lists_every_binding_with_remaining_expiry_and_date(registrar: Registrar, clock: Clock) -> None:
    registrar.handle(register([f"<{PHONE}>;expires=600"], call_id="call-a"), SOURCE)
    clock.advance(100.5)
    request = register([f"<{LAPTOP}>;q=0.25"], call_id="call-b", expires=1800)
    response = wire(registrar.handle(request, SOURCE))
    assert (response.status, response.reason) == (200, "OK")
    assert listed(response) == {PHONE: {"expires": "500"}, LAPTOP: {"expires": "1800", "q": "0.25"}}
    assert response.get("date") == formatdate(START + 100.5, usegmt=True)
    assert response.get_all("supported") == ["outbound", "path"]
    assert response.get("call-id") == "call-b"
    assert response.cseq.seq == 1
    assert response.to.tag


def test_step8_to_tag_is_stable_per_call_id(registrar: Registrar) -> None:
    first = wire(registrar.handle(register(cseq=1), SOURCE)).to.tag
    again = wire(registrar.handle(register(cseq=2), SOURCE)).to.tag
    error = wire(registrar.handle(register(cseq=2), SOURCE))
    other = wire(registrar.handle(register(call_id="other", cseq=1), SOURCE)).to.tag
    assert first == again == error.to.tag
    assert error.status == 500
    assert other != first


def test_step8_query_without_contact_lists_bindings_and_changes_nothing(
    registrar: Registrar, spy: SpyStore, clock: Clock
) -> None:
    registrar.handle(register([f"<{PHONE}>, <{LAPTOP}>;expires=120"]), SOURCE)
    updates = len(spy.updates)
    clock.advance(60)
    response = wire(registrar.handle(register((), call_id="query", cseq=1, expires=0), SOURCE))
    assert response.status == 200
    assert listed(response) == {PHONE: {"expires": "3540"}, LAPTOP: {"expires": "60"}}
    assert len(spy.updates) == updates
    clock.advance(60)  # LAPTOP expires
    response = registrar.handle(register((), call_id="query", cseq=2), SOURCE)
    assert listed(response) == {PHONE: {"expires": "3480"}}


def test_step8_query_for_unknown_aor_is_empty_200(registrar: Registrar) -> None:
    response = wire(registrar.handle(register((), to=BOB), SOURCE))
    assert response.status == 200
    assert not response.has("contact")
    assert response.has("date")


# -- robustness ------------------------------------------------------------------------------


def test_unexpected_error_is_500_and_logged(clock: Clock) -> None:
    class BrokenStore:
        def lookup(self, aor: str) -> list[Binding]:
            raise KeyError(aor)

        def update(self, aor: str, put: Iterable[Binding] = (), remove: Iterable[str] = ()) -> None:
            raise AssertionError("not reached")

    log = Log()
    registrar = Registrar(BrokenStore(), clock, SETTINGS, log=log)
    response = wire(registrar.handle(register(), SOURCE))
    assert (response.status, response.reason) == (500, "Server Internal Error")
    assert len(log.failures) == 1


def test_request_built_without_mandatory_headers_is_400(registrar: Registrar) -> None:
    request = Request.build("REGISTER", "sip:example.test", [("Contact", f"<{PHONE}>")])
    response = registrar.handle(request, SOURCE)
    assert response.status == 400
    assert response.reason == "Missing To"


def test_other_method_is_405(registrar: Registrar) -> None:
    response = registrar.handle(register(method="OPTIONS"), SOURCE)
    assert response.status == 405
    assert response.get("allow") == "REGISTER"


def test_full_cycle_register_refresh_query_unregister(registrar: Registrar, store: LocationStore, clock: Clock) -> None:
    statuses = []
    statuses.append(registrar.handle(register(cseq=1, expires=300), SOURCE).status)
    clock.advance(200)
    statuses.append(registrar.handle(register(cseq=2, expires=300), SOURCE).status)
    clock.advance(200)
    response = registrar.handle(register((), cseq=3), SOURCE)
    statuses.append(response.status)
    assert listed(response) == {PHONE: {"expires": "100"}}
    statuses.append(registrar.handle(register(["*"], cseq=4, expires=0), SOURCE).status)
    assert statuses == [200, 200, 200, 200]
    assert store.lookup(ALICE) == []
    assert clock.getDelayedCalls() == []
