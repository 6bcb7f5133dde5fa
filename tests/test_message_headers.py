"""sipproxy.message.headers: header names, compact forms, the comma rule and parameters (RFC 3261 §7.3, §20, §25.1)."""

from __future__ import annotations

import pytest

from sipproxy.message import ParseError
from sipproxy.message.headers import (
    COMPACT_FORMS,
    canonical_key,
    display_name,
    format_params,
    is_list_header,
    is_token,
    known_names,
    quote,
    split_commas,
    split_params,
    unquote,
)

# -- names (§7.3.3 compact forms) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"), [("Via", "via"), ("VIA", "via"), ("v", "via"), ("V", "via"), ("i", "call-id")]
)
def test_canonical_key_is_the_lower_case_long_form(name: str, key: str) -> None:
    assert canonical_key(name) == key


def test_every_compact_form_names_its_long_header() -> None:
    for letter, long in COMPACT_FORMS.items():
        assert canonical_key(letter) == canonical_key(letter.upper()) == long.lower()
    assert canonical_key("q") == "q"  # a one-letter name that is no compact form stays itself


@pytest.mark.parametrize(
    ("key", "spelling"),
    [
        ("call-id", "Call-ID"),
        ("www-authenticate", "WWW-Authenticate"),
        ("cseq", "CSeq"),
        ("x-custom-thing", "X-Custom-Thing"),
    ],
)
def test_display_name_spells_headers_we_write(key: str, spelling: str) -> None:
    assert display_name(key) == spelling


def test_known_names_are_the_canonical_spellings() -> None:
    names = known_names()
    assert "Via" in names and "Call-ID" in names
    assert all(display_name(name.lower()) == name for name in names)


def test_only_list_headers_split_at_commas() -> None:
    """§7.3.1: the authentication headers hold commas too but are not lists."""
    assert is_list_header("route") and is_list_header("via") and is_list_header("contact")
    assert not is_list_header("authorization") and not is_list_header("subject")


@pytest.mark.parametrize(
    ("text", "token"), [("INVITE", True), ("z9hG4bK-1.x!%*_+`'~", True), ("a b", False), ("", False), ('a"', False)]
)
def test_is_token(text: str, token: bool) -> None:
    assert is_token(text) is token


# -- the comma rule (§7.3.1) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("a, b,c", ["a", "b", "c"]),
        (
            '"Doe, John" <sip:j@example.test>, <sip:k@example.test>',
            ['"Doe, John" <sip:j@example.test>', "<sip:k@example.test>"],
        ),
        (
            '"a \\" , b" <sip:x@example.test>, <sip:y@example.test>',
            ['"a \\" , b" <sip:x@example.test>', "<sip:y@example.test>"],
        ),
        ("<sip:x@example.test?h=1,2>, <sip:y@example.test>", ["<sip:x@example.test?h=1,2>", "<sip:y@example.test>"]),
        (" , a ,, b , ", ["a", "b"]),
        ("", []),
    ],
)
def test_split_commas_respects_quotes_and_angle_brackets(value: str, parts: list[str]) -> None:
    assert split_commas(value) == parts


def test_unterminated_quote_in_list_is_an_error() -> None:
    with pytest.raises(ParseError, match="Unterminated quoted string"):
        split_commas('"a, b')


# -- quoted strings and parameters (§25.1) --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "plain"),
    [('"Doe, John"', "Doe, John"), ('"a \\" b"', 'a " b'), ("token", "token"), ('"', '"'), ('""', "")],
)
def test_unquote(text: str, plain: str) -> None:
    assert unquote(text) == plain


@pytest.mark.parametrize("plain", ["Doe, John", 'a " b', "back\\slash", ""])
def test_quote_round_trips_through_unquote(plain: str) -> None:
    assert unquote(quote(plain)) == plain


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("", {}),
        ("branch=z9hG4bK1;rport", {"branch": "z9hG4bK1", "rport": None}),
        ("Tag=AbC", {"tag": "AbC"}),  # names lower-cased, values as written
        (' q = 0.5 ; +sip.instance="<urn:uuid:1;x>"', {"q": "0.5", "+sip.instance": '"<urn:uuid:1;x>"'}),
    ],
)
def test_split_params(text: str, params: dict[str, str | None]) -> None:
    assert split_params(text) == params


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a=1;;b", "Empty parameter"),
        ("bad name=1", "Bad parameter name"),
        ("tag=", "Empty value for parameter tag"),
        ('x="open', "Unterminated quoted string"),
    ],
)
def test_split_params_names_the_problem(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as raised:
        split_params(text)
    assert raised.value.reason == reason


def test_format_params_writes_what_split_params_reads() -> None:
    params = {"branch": "z9hG4bK1", "rport": None, "received": "192.0.2.7"}
    assert format_params(params) == ";branch=z9hG4bK1;rport;received=192.0.2.7"
    assert split_params(format_params(params)[1:]) == params
