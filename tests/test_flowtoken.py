"""Tests for sipproxy.flowtoken: RFC 5626 §5.2 flow tokens, signed with the server secret."""

from __future__ import annotations

import base64

import pytest

from sipproxy.flowtoken import Flow, FlowTokens

SECRET = b"s" * 32
FLOW = Flow("WS", "192.0.2.1:8088", "198.51.100.7", 53211)


def test_a_token_names_its_flow_again() -> None:
    tokens = FlowTokens(SECRET)
    assert tokens.decode(tokens.encode(FLOW)) == FLOW


def test_a_token_survives_a_restart_with_the_same_secret() -> None:
    # the secret is kept in --db: a new FlowTokens (a new process) reads the old token
    assert FlowTokens(SECRET).decode(FlowTokens(bytes(SECRET)).encode(FLOW)) == FLOW


@pytest.mark.parametrize(
    "flow",
    [
        Flow("UDP", "192.0.2.1:5060", "203.0.113.9", 5062),
        Flow("tls", "[2001:db8::1]:5061", "2001:db8::99", 40000),
        Flow("TCP", "sip.example.test:5060", "192.0.2.44", 1),
    ],
)
def test_every_transport_and_address_family_round_trips(flow: Flow) -> None:
    tokens = FlowTokens(SECRET)
    token = tokens.encode(flow)
    assert tokens.decode(token) == flow._replace(transport=flow.transport.upper())
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), token


def test_a_token_made_under_another_secret_is_not_ours() -> None:
    assert FlowTokens(SECRET).decode(FlowTokens(b"t" * 32).encode(FLOW)) is None


def test_a_token_with_its_flow_changed_is_not_ours() -> None:
    tokens = FlowTokens(SECRET)
    raw = bytearray(base64.urlsafe_b64decode(tokens.encode(FLOW) + "=="))
    raw[-1:] = b"2"  # port 53211 -> 53212: the attacker's own connection
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert tokens.decode(forged) is None


@pytest.mark.parametrize("token", ["", "x", "!!!!", "é" * 20, "A" * 500, "AAAAAAAAAAAAAAAA"])
def test_garbage_is_no_token_and_does_not_raise(token: str) -> None:
    assert FlowTokens(SECRET).decode(token) is None


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        FlowTokens(b"short")
