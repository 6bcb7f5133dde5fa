"""sipproxy.transaction.keys: the matching rules of RFC 3261 §17.1.3, §17.2.3 and §9.2 as dictionary keys.

Two messages match exactly when their keys are equal; each test changes one
field and says whether that may change the transaction.
"""

from __future__ import annotations

from typing import Any

import pytest

from sipproxy.message import Response, make_response
from sipproxy.transaction.keys import ack_key, cancel_target_key, client_key, expected_ack_key, server_key
from sipproxy.transaction.testing import make_request


def response_to(request: Any, status: int = 200, to_tag: str | None = "resp") -> Response:
    return make_response(request, status, to_tag=to_tag)


# -- server transactions with the magic cookie (§17.2.3) ----------------------------------------


def test_branch_sent_by_and_method_make_the_server_key() -> None:
    key = server_key(make_request("INVITE"))
    assert key == server_key(make_request("INVITE", uri="sip:carol@example.test", call_id="other", cseq=1))
    assert key == server_key(make_request("INVITE", sent_by="192.0.2.7:5060", via_params=";rport"))
    assert key != server_key(make_request("INVITE", branch="z9hG4bKother"))
    assert key != server_key(make_request("INVITE", sent_by="192.0.2.7:5062"))
    assert key != server_key(make_request("INVITE", sent_by="192.0.2.7"))  # no port is not port 5060
    assert key != server_key(make_request("OPTIONS"))


def test_sent_by_host_compares_case_insensitively() -> None:
    assert server_key(make_request("OPTIONS", sent_by="PC33.Example.TEST")) == server_key(
        make_request("OPTIONS", sent_by="pc33.example.test")
    )


def test_ack_and_cancel_find_the_invite() -> None:
    """§17.2.3: ACK counts as INVITE; §9.2: a CANCEL names the INVITE with the same branch and sent-by."""
    invite = server_key(make_request("INVITE"))
    assert server_key(make_request("ACK")) == invite
    assert ack_key(make_request("ACK")) == invite
    cancel = make_request("CANCEL")
    assert cancel_target_key(cancel) == invite
    assert server_key(cancel) != invite  # the CANCEL is a transaction of its own
    assert server_key(cancel, method="INVITE") == invite
    assert expected_ack_key(make_request("INVITE"), response_to(make_request("INVITE"), 486)) is None


# -- the RFC 2543 fallback (§17.2.3) -------------------------------------------------------------


@pytest.mark.parametrize("branch", [None, "1234abcd"])
def test_without_the_cookie_the_request_fields_make_the_key(branch: str | None) -> None:
    key = server_key(make_request("INVITE", branch=branch))
    assert key == server_key(make_request("INVITE", branch=branch, uri="sip:bob@EXAMPLE.test"))  # §19.1.4
    lower = server_key(make_request("INVITE", branch=branch, via_params=";maddr=host.example.test"))
    assert lower == server_key(make_request("INVITE", branch=branch, via_params=";MADDR=Host.Example.TEST"))
    assert lower != key  # §20.42: the Vias compare with their parameters, in any case


@pytest.mark.parametrize(
    "change",
    [
        {"uri": "sip:carol@example.test"},
        {"to": "Bob <sip:bob@example.test>;tag=other"},
        {"from_": "Alice <sip:alice@example.test>;tag=other"},
        {"call_id": "another@pc33.example.test"},
        {"cseq": 2},
        {"sent_by": "192.0.2.7:5062"},
        {"via_params": ";received=192.0.2.70"},
        {"transport": "TCP"},
    ],
)
def test_without_the_cookie_any_differing_field_is_another_transaction(change: dict[str, Any]) -> None:
    assert server_key(make_request("INVITE", branch=None)) != server_key(make_request("INVITE", branch=None, **change))


def test_rfc2543_ack_matches_the_to_tag_of_the_response_sent() -> None:
    invite = make_request("INVITE", branch=None)
    expected = expected_ack_key(invite, response_to(invite, 486, to_tag="resp-tag"))
    assert expected is not None
    assert ack_key(make_request("ACK", branch=None, to="Bob <sip:bob@example.test>;tag=resp-tag")) == expected
    assert ack_key(make_request("ACK", branch=None, to="Bob <sip:bob@example.test>;tag=else")) != expected
    assert (
        ack_key(make_request("ACK", branch=None, sent_by="192.0.2.8", to="Bob <sip:bob@example.test>;tag=resp-tag"))
        != expected
    )


# -- client transactions (§17.1.3) ---------------------------------------------------------------


def test_a_response_matches_the_branch_and_cseq_method_of_its_request() -> None:
    invite = make_request("INVITE")
    assert client_key(invite) == ("z9hG4bK776asdhds", "INVITE")
    assert client_key(response_to(invite)) == client_key(invite)
    cancel = make_request("CANCEL")  # same branch (§9.1), other method: another client transaction
    assert client_key(response_to(cancel)) == ("z9hG4bK776asdhds", "CANCEL") != client_key(invite)


def test_a_message_without_a_branch_has_no_client_key() -> None:
    assert client_key(make_request("OPTIONS", branch=None)) is None
