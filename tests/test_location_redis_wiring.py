"""``--store redis://``: the option, the URL, the stored form, the registrar's 503, ``/healthz``'s reason (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python.usage import UsageError

from sipproxy.errors import SipError
from sipproxy.location import Binding, LocationStore
from sipproxy.location.redis_codec import decode, encode, events_json, expiry_token, parse_state
from sipproxy.location.redis_url import RedisAddress, parse_redis_url
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.tap import Options
from tests.messages import make_request, parse_request
from tests.web_helpers import Web

B = Binding(
    aor="sip:alice@example.test",
    contact="sip:alice@192.0.2.7:5062;ob",
    call_id="c\udce9",
    cseq=3,
    expires_at=1_800_000_000.125,
    q=0.5,
    transport="TCP",
    source_host="192.0.2.7",
    source_port=5062,
    path=("<sip:edge.example.test;lr>",),
    user_agent="T\udce9l\udce9phone",
    instance="<urn:uuid:1>",
    reg_id=1,
    registered_at=1_799_999_000.5,
    refreshed_at=1_799_999_900.25,
)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://127.0.0.1:6380/2", RedisAddress("127.0.0.1", 6380, 2)),
        ("redis://redis.example.test", RedisAddress("redis.example.test")),
        ("redis://:s%40cret@127.0.0.1:6379/0", RedisAddress("127.0.0.1", password="s@cret")),
        ("redis://sip:pw@[::1]:7000", RedisAddress("::1", 7000, password="pw", username="sip")),
        ("rediss://redis.example.test:6380/1", RedisAddress("redis.example.test", 6380, 1, tls=True)),
    ],
)
def test_redis_urls_name_host_port_database_credentials_and_tls(url: str, address: RedisAddress) -> None:
    assert parse_redis_url(url) == address


def test_what_logs_and_healthz_show_of_an_address_has_no_password() -> None:
    assert parse_redis_url("rediss://:pw@[::1]:7000/3").display() == "rediss://[::1]:7000/3"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://127.0.0.1", "not a redis:// or rediss:// URL"),
        ("redis://", "names no host"),
        ("redis://127.0.0.1:99999", "port"),
        ("redis://127.0.0.1/zero", "database 'zero' is not a number"),
        ("redis://127.0.0.1/0?timeout=1", "no query"),
    ],
)
def test_a_bad_store_url_is_one_line_naming_it_without_its_password(url: str, complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint) as refused:
        Options().parseOptions(["--store", url.replace("://", "://:hunter2@", 1) if "@" not in url else url])
    assert "hunter2" not in str(refused.value)
    assert str(refused.value).startswith("--store ")


def test_store_redis_is_read_into_an_address_and_db_keeps_its_default() -> None:
    options = Options()
    options.parseOptions(["--store", "redis://127.0.0.1:6390/4", "--node-id", "edge-1"])
    assert options["store-address"] == RedisAddress("127.0.0.1", 6390, 4)
    assert options["node-id"] == "edge-1"
    assert options["db"] == "sipproxy.sqlite"


def test_a_node_that_cannot_reach_redis_does_not_start_and_says_why_in_one_line() -> None:
    from sipproxy.service import StartupError, build_service

    options = Options()
    options.parseOptions(["--store", "redis://:pw@127.0.0.1:1/0", "--sip-port", "5070", "--domain", "example.test"])
    with pytest.raises(StartupError) as refused:
        build_service(options, Clock())
    assert str(refused.value).startswith("--store redis://127.0.0.1:1/0: ")
    assert "pw" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_binding_survives_the_stored_form_with_its_node_and_route_and_stays_ascii() -> None:
    value = encode(B, "a", "<sip:127.0.0.1:5070;transport=tcp;lr;ft=x>")
    assert value.isascii()
    assert value.startswith(f"[{expiry_token(B)},")  # what the Lua scripts compare
    assert decode(json.loads(value)) == (B, "a", "<sip:127.0.0.1:5070;transport=tcp;lr;ft=x>")


def test_a_state_carries_the_events_with_their_reasons_and_every_binding() -> None:
    from sipproxy.location import BindingEvent

    events = [BindingEvent("added", B, "registered")]
    events_part, bindings_part = events_json(events, "a"), encode(B, "a")
    state = parse_state(
        f'{{"ok":true,"n":"a","s":7,"a":"sip:alice@example.test","e":{events_part},"b":[{bindings_part}]}}'
    )
    assert (state.ok, state.node, state.seq, state.aor) == (True, "a", 7, "sip:alice@example.test")
    assert state.events == events
    assert state.bindings == [(B, "a", "")]


class Unavailable(LocationStore):
    """A store that refuses every change as the Redis store does while Redis is unreachable."""

    def update(self, aor: str, put: object = (), remove: object = ()) -> None:  # type: ignore[override]
        raise SipError(503, "Location service unavailable", [("Retry-After", "5")])


def test_a_register_the_store_cannot_take_now_gets_its_503_and_retry_after_never_a_200() -> None:
    clock = Clock()
    clock.advance(1_000_000)
    registrar = Registrar(Unavailable(clock), clock, RegistrarSettings(domains=frozenset({"example.test"})))
    request = parse_request(
        make_request(
            "REGISTER",
            "sip:example.test",
            via="SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKr1",
            from_="<sip:alice@example.test>;tag=1",
            to="<sip:alice@example.test>",
            call_id="r1",
            cseq="1 REGISTER",
            extra=["Contact: <sip:alice@192.0.2.7:5062>"],
        )
    )
    sent = []
    from sipproxy.net import Source

    registrar.answer(request, Source("UDP", "192.0.2.7", 5062), sent.append)
    [response] = sent
    assert (response.status, response.reason) == (503, "Location service unavailable")
    assert response.get("retry-after") == "5"


def test_healthz_says_why_when_the_check_gives_a_reason() -> None:
    web = Web()
    web.healthy = "Redis at redis://127.0.0.1:6379/0 unreachable (Connection refused); reconnecting"  # type: ignore[assignment]
    response, body = web.request("GET", "/healthz")
    assert response.code == 503
    assert body == b"unhealthy: Redis at redis://127.0.0.1:6379/0 unreachable (Connection refused); reconnecting\n"


def test_store_ca_mistakes_are_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for args, complaint in [
        (["--store-ca", str(junk)], "--store-ca is for a rediss:// --store"),
        (["--store", "redis://127.0.0.1/0", "--store-ca", str(junk)], "--store-ca is for a rediss:// --store"),
        (["--store", "rediss://127.0.0.1/0", "--store-ca", str(junk)], f"--store-ca {junk}: no PEM certificate"),
        (["--store", "rediss://127.0.0.1/0", "--store-ca", str(tmp_path / "gone.pem")], "No such file"),
    ]:
        with pytest.raises(UsageError, match=complaint):
            Options().parseOptions(args)
