"""Digest authentication: RFC 2617 / RFC 7616 / RFC 8760 as used by RFC 3261 §22."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipproxy.auth import (
    AuthResult,
    DigestAuthenticator,
    UserDB,
    UserEntry,
    compute_response,
    ha1,
    parse_auth_params,
)

REALM = "example.test"
SECRET = b"0123456789abcdef0123456789abcdef"
T0 = 1_000.0


def make_users(*, sha256: bool = True) -> UserDB:
    return UserDB(
        [
            UserEntry(
                user="bob",
                realm=REALM,
                ha1_md5=ha1("MD5", "bob", REALM, "hunter2"),
                ha1_sha256=ha1("SHA-256", "bob", REALM, "hunter2") if sha256 else None,
            ),
            UserEntry(
                user="alice",
                realm="other.test",
                ha1_md5=ha1("MD5", "alice", "other.test", "s3cret"),
                ha1_sha256=ha1("SHA-256", "alice", "other.test", "s3cret"),
            ),
        ]
    )


def make_auth(**kwargs: object) -> DigestAuthenticator:
    return DigestAuthenticator(make_users(), SECRET, **kwargs)  # type: ignore[arg-type]


def pick(challenges: list[str], algorithm: str) -> dict[str, str]:
    for value in challenges:
        scheme, params = parse_auth_params(value)
        assert scheme == "Digest"
        if params["algorithm"] == algorithm:
            return params
    raise AssertionError(f"no {algorithm} challenge in {challenges}")


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def answer(
    challenge: dict[str, str],
    *,
    user: str = "bob",
    password: str = "hunter2",
    method: str = "REGISTER",
    uri: str = "sip:example.test",
    nc: str = "00000001",
    cnonce: str = "0a4f113b",
    qop: str | None = "auth",
    realm: str | None = None,
    nonce: str | None = None,
    algorithm: str | None = None,
) -> str:
    """Play the UAC side of RFC 3261 §22.2: build an Authorization value."""
    realm = challenge["realm"] if realm is None else realm
    nonce = challenge["nonce"] if nonce is None else nonce
    algorithm = challenge["algorithm"] if algorithm is None else algorithm
    secret_ha1 = ha1(algorithm, user, realm, password)
    response = compute_response(algorithm, secret_ha1, method, uri, nonce, nc, cnonce, qop)
    parts = [
        f"username={quote(user)}",
        f"realm={quote(realm)}",
        f"nonce={quote(nonce)}",
        f"uri={quote(uri)}",
        f"response={quote(response)}",
        f"algorithm={algorithm}",
        f"opaque={quote(challenge['opaque'])}",
    ]
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc}", f"cnonce={quote(cnonce)}"]
    return "Digest " + ", ".join(parts)


class TestVectors:
    def test_rfc2617_section_3_5_example(self) -> None:
        secret_ha1 = ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
        assert secret_ha1 == "939e7578ed9e3c518a452acee763bce9"
        response = compute_response(
            "MD5",
            secret_ha1,
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000001",
            "0a4f113b",
            "auth",
        )
        assert response == "6629fae49393a05397450978507c4ef1"

    def test_rfc7616_section_3_9_1_sha256_example(self) -> None:
        secret_ha1 = ha1("SHA-256", "Mufasa", "http-auth@example.org", "Circle of Life")
        response = compute_response(
            "SHA-256",
            secret_ha1,
            "GET",
            "/dir/index.html",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "00000001",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            "auth",
        )
        assert response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"

    def test_rfc7616_md5_example(self) -> None:
        secret_ha1 = ha1("MD5", "Mufasa", "http-auth@example.org", "Circle of Life")
        response = compute_response(
            "MD5",
            secret_ha1,
            "GET",
            "/dir/index.html",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "00000001",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            "auth",
        )
        assert response == "8ca523f5e9506fed4657c9700eebdbec"

    def test_algorithm_names_are_case_insensitive(self) -> None:
        assert ha1("sha-256", "u", "r", "p") == ha1("SHA-256", "u", "r", "p")

    def test_unknown_algorithm_is_refused(self) -> None:
        with pytest.raises(ValueError):
            ha1("SHA-512-256", "u", "r", "p")


class TestChallenge:
    def test_one_challenge_per_algorithm_strongest_first(self) -> None:
        challenges = make_auth().challenge(REALM, T0)
        assert len(challenges) == 2
        params = [parse_auth_params(value)[1] for value in challenges]
        assert [p["algorithm"] for p in params] == ["SHA-256", "MD5"]
        for p in params:
            assert p["realm"] == REALM
            assert p["qop"] == "auth"
            assert p["nonce"] and p["opaque"]
            assert "stale" not in p
        assert params[0]["nonce"] == params[1]["nonce"]

    def test_exact_form(self) -> None:
        value = make_auth().challenge(REALM, T0)[0]
        assert value.startswith('Digest realm="example.test", qop="auth", algorithm=SHA-256, nonce="')
        assert ', opaque="' in value

    def test_configured_order_does_not_matter(self) -> None:
        auth = DigestAuthenticator(None, SECRET, algorithms=("MD5", "SHA-256"))
        assert auth.algorithms == ("SHA-256", "MD5")

    def test_stale_flag(self) -> None:
        for value in make_auth().challenge(REALM, T0, stale=True):
            assert parse_auth_params(value)[1]["stale"] == "true"

    def test_fresh_nonce_each_time(self) -> None:
        auth = make_auth()
        first = pick(auth.challenge(REALM, T0), "MD5")["nonce"]
        second = pick(auth.challenge(REALM, T0), "MD5")["nonce"]
        assert first != second

    def test_realm_is_quoted_safely(self) -> None:
        value = make_auth().challenge('we"ird\\realm', T0)[0]
        assert parse_auth_params(value)[1]["realm"] == 'we"ird\\realm'

    def test_control_characters_in_realm_refused(self) -> None:
        with pytest.raises(ValueError):
            make_auth().challenge("evil\r\nVia: x", T0)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"secret": b"short"},
            {"nonce_lifetime": 0},
            {"algorithms": ()},
            {"algorithms": ("SHA-512-256",)},
        ],
    )
    def test_bad_configuration(self, kwargs: dict[str, object]) -> None:
        args: dict[str, object] = {"users": None, "secret": SECRET, **kwargs}
        with pytest.raises(ValueError):
            DigestAuthenticator(**args)  # type: ignore[arg-type]


class TestVerify:
    @pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
    @pytest.mark.parametrize("qop", ["auth", None])
    def test_round_trip(self, algorithm: str, qop: str | None) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), algorithm)
        result = auth.verify(answer(challenge, qop=qop), "REGISTER", REALM, T0 + 1)
        assert result == AuthResult(ok=True, username="bob", stale=False, reason="ok")

    @pytest.mark.parametrize("algorithm", ["SHA-256-sess", "MD5-sess"])
    def test_sess_round_trip_when_offered(self, algorithm: str) -> None:
        auth = make_auth(algorithms=(algorithm,))
        challenge = pick(auth.challenge(REALM, T0), algorithm)
        assert auth.verify(answer(challenge, method="INVITE"), "INVITE", REALM, T0).ok

    def test_method_is_part_of_the_digest(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        result = auth.verify(answer(challenge, method="INVITE"), "REGISTER", REALM, T0)
        assert not result.ok
        assert result.reason == "wrong password"

    def test_missing_algorithm_means_md5(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "MD5")
        value = answer(challenge).replace(", algorithm=MD5", "")
        assert "algorithm" not in value
        assert auth.verify(value, "REGISTER", REALM, T0).ok

    def test_uppercase_hex_response_accepted(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "MD5")
        _, params = parse_auth_params(answer(challenge))
        value = answer(challenge).replace(params["response"], params["response"].upper())
        assert auth.verify(value, "REGISTER", REALM, T0).ok

    @pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
    def test_wrong_password(self, algorithm: str) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), algorithm)
        result = auth.verify(answer(challenge, password="wrong"), "REGISTER", REALM, T0)
        assert result == AuthResult(ok=False, username="bob", stale=False, reason="wrong password")

    def test_unknown_user(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        result = auth.verify(answer(challenge, user="mallory"), "REGISTER", REALM, T0)
        assert result == AuthResult(ok=False, username="mallory", stale=False, reason="no such user")

    def test_user_of_another_realm_is_unknown_here(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        result = auth.verify(answer(challenge, user="alice", password="s3cret"), "REGISTER", REALM, T0)
        assert result.reason == "no such user"

    def test_no_user_database(self) -> None:
        auth = DigestAuthenticator(None, SECRET)
        challenge = pick(auth.challenge(REALM, T0), "MD5")
        result = auth.verify(answer(challenge), "REGISTER", REALM, T0)
        assert (result.ok, result.reason) == (False, "no such user")

    def test_wrong_realm(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        value = answer(challenge, user="alice", password="s3cret", realm="other.test")
        result = auth.verify(value, "REGISTER", REALM, T0)
        assert result == AuthResult(ok=False, username="alice", stale=False, reason="wrong realm")

    def test_nonce_is_bound_to_its_realm(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        value = answer(challenge, user="alice", password="s3cret", realm="other.test")
        result = auth.verify(value, "REGISTER", "other.test", T0)
        assert (result.ok, result.stale, result.reason) == (False, False, "bad nonce")

    def test_stale_nonce_then_fresh_challenge_works(self) -> None:
        auth = make_auth(nonce_lifetime=300.0)
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        late = T0 + 301.0
        result = auth.verify(answer(challenge), "REGISTER", REALM, late)
        assert result == AuthResult(ok=False, username="bob", stale=True, reason="stale nonce")
        fresh = pick(auth.challenge(REALM, late, stale=True), "SHA-256")
        assert fresh["stale"] == "true"
        assert auth.verify(answer(fresh), "REGISTER", REALM, late + 1).ok

    def test_nonces_from_before_a_restart_are_stale_though_the_secret_was_kept(self) -> None:
        """The replay table starts empty at start-up: an older nonce could be a replay, so it is stale."""
        before = make_auth()
        challenge = pick(before.challenge(REALM, T0), "SHA-256")
        assert before.verify(answer(challenge), "REGISTER", REALM, T0 + 1).ok
        after = make_auth(not_before=T0 + 60)  # restarted at T0 + 60 with the same secret
        result = after.verify(answer(challenge, nc="00000002"), "REGISTER", REALM, T0 + 61)
        assert (result.ok, result.stale, result.reason) == (False, True, "stale nonce")
        fresh = pick(after.challenge(REALM, T0 + 60), "SHA-256")
        assert after.verify(answer(fresh), "REGISTER", REALM, T0 + 61).ok

    def test_nonce_still_valid_at_end_of_lifetime(self) -> None:
        auth = make_auth(nonce_lifetime=300.0)
        challenge = pick(auth.challenge(REALM, T0), "MD5")
        assert auth.verify(answer(challenge), "REGISTER", REALM, T0 + 300.0).ok

    def test_stale_nonce_with_wrong_password_is_not_stale(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        result = auth.verify(answer(challenge, password="guess"), "REGISTER", REALM, T0 + 10_000)
        assert (result.ok, result.stale, result.reason) == (False, False, "wrong password")

    @pytest.mark.parametrize("position", [0, 10, 40, -2, -1])
    def test_tampered_nonce(self, position: int) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        nonce = challenge["nonce"]
        flipped = "A" if nonce[position] != "A" else "B"
        tampered = nonce[:position] + flipped + nonce[position + 1 :] if position != -1 else nonce[:-1] + flipped
        assert tampered != nonce
        result = auth.verify(answer(challenge, nonce=tampered), "REGISTER", REALM, T0 + 10_000)
        assert result == AuthResult(ok=False, username="bob", stale=False, reason="bad nonce")

    @pytest.mark.parametrize("nonce", ["", "dcd98b7102dd2f0e8b11d0f600bfb0c093", "x" * 75, "+" * 75, "é" * 75])
    def test_foreign_nonce(self, nonce: str) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        result = auth.verify(answer(challenge, nonce=nonce), "REGISTER", REALM, T0)
        assert (result.ok, result.stale, result.reason) == (False, False, "bad nonce")

    def test_nonce_from_another_secret(self) -> None:
        other = DigestAuthenticator(make_users(), b"another secret of enough length")
        challenge = pick(other.challenge(REALM, T0), "SHA-256")
        result = make_auth().verify(answer(challenge), "REGISTER", REALM, T0)
        assert result.reason == "bad nonce"

    def test_nonce_from_the_future(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0 + 3_600), "SHA-256")
        assert auth.verify(answer(challenge), "REGISTER", REALM, T0).reason == "bad nonce"

    def test_shared_secret_validates_across_instances(self) -> None:
        challenge = pick(make_auth().challenge(REALM, T0), "SHA-256")
        assert make_auth().verify(answer(challenge), "REGISTER", REALM, T0).ok

    def test_nonce_count_replay(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        assert auth.verify(answer(challenge, nc="00000001"), "REGISTER", REALM, T0).ok
        replay = auth.verify(answer(challenge, nc="00000001"), "REGISTER", REALM, T0 + 1)
        assert replay == AuthResult(ok=False, username="bob", stale=False, reason="nonce replay")
        assert auth.verify(answer(challenge, nc="00000002"), "REGISTER", REALM, T0 + 2).ok
        assert auth.verify(answer(challenge, nc="00000001"), "REGISTER", REALM, T0 + 3).reason == "nonce replay"
        assert auth.verify(answer(challenge, nc="0000000a"), "REGISTER", REALM, T0 + 4).ok

    def test_zero_nonce_count_is_refused(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        assert auth.verify(answer(challenge, nc="00000000"), "REGISTER", REALM, T0).reason == "nonce replay"

    def test_failed_attempt_does_not_consume_nonce_count(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        assert not auth.verify(answer(challenge, nc="00000005", password="x"), "REGISTER", REALM, T0).ok
        assert auth.verify(answer(challenge, nc="00000001"), "REGISTER", REALM, T0).ok

    def test_legacy_no_qop_nonce_is_single_use(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "MD5")
        assert auth.verify(answer(challenge, qop=None), "REGISTER", REALM, T0).ok
        assert auth.verify(answer(challenge, qop=None), "REGISTER", REALM, T0).reason == "nonce replay"
        assert auth.verify(answer(challenge, nc="00000009"), "REGISTER", REALM, T0).reason == "nonce replay"

    def test_replay_table_forgets_expired_nonces(self) -> None:
        auth = make_auth(nonce_lifetime=60.0)
        for step in range(5):
            challenge = pick(auth.challenge(REALM, T0 + step), "MD5")
            assert auth.verify(answer(challenge), "REGISTER", REALM, T0 + step).ok
        assert auth.tracked_nonces == 5
        fresh = pick(auth.challenge(REALM, T0 + 100), "MD5")
        assert auth.verify(answer(fresh), "REGISTER", REALM, T0 + 100).ok
        assert auth.tracked_nonces == 1

    def test_replay_table_is_bounded_and_eviction_never_reopens_a_nonce(self) -> None:
        auth = make_auth(max_tracked_nonces=2)
        challenges = [pick(auth.challenge(REALM, T0 + i), "MD5") for i in range(3)]
        for i, challenge in enumerate(challenges):
            assert auth.verify(answer(challenge), "REGISTER", REALM, T0 + 10 + i).ok
        assert auth.tracked_nonces == 2
        evicted = auth.verify(answer(challenges[0], nc="00000002"), "REGISTER", REALM, T0 + 20)
        assert (evicted.ok, evicted.stale, evicted.reason) == (False, True, "stale nonce")
        assert auth.verify(answer(challenges[2], nc="00000002"), "REGISTER", REALM, T0 + 21).ok

    def test_algorithm_not_offered(self) -> None:
        auth = make_auth(algorithms=("SHA-256",))
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        result = auth.verify(answer(challenge, algorithm="MD5"), "REGISTER", REALM, T0)
        assert (result.ok, result.reason) == (False, "unsupported algorithm")

    def test_unknown_algorithm(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        value = answer(challenge).replace("algorithm=SHA-256", "algorithm=SHA-512-256")
        assert auth.verify(value, "REGISTER", REALM, T0).reason == "unsupported algorithm"

    def test_user_without_sha256_credentials(self) -> None:
        auth = DigestAuthenticator(make_users(sha256=False), SECRET)
        challenges = auth.challenge(REALM, T0)
        sha = auth.verify(answer(pick(challenges, "SHA-256")), "REGISTER", REALM, T0)
        assert not sha.ok
        assert sha.reason == "no SHA-256 credentials for user"
        assert auth.verify(answer(pick(challenges, "MD5")), "REGISTER", REALM, T0).ok

    def test_auth_int_is_not_supported(self) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        value = answer(challenge).replace("qop=auth", "qop=auth-int")
        assert auth.verify(value, "REGISTER", REALM, T0).reason == "unsupported qop"

    @pytest.mark.parametrize(
        ("edit", "username"),
        [
            (lambda v: v.replace('uri="sip:example.test", ', ""), "bob"),
            (lambda v: v.replace('username="bob", ', ""), None),
            (lambda v: v.replace(", nc=00000001", ""), "bob"),
            (lambda v: v.replace("nc=00000001", "nc=1"), "bob"),
            (lambda v: v.replace('cnonce="0a4f113b"', "cnonce"), None),
            (lambda v: v.replace("Digest ", "Basic "), "bob"),
            (lambda v: "garbage", None),
            (lambda v: "", None),
        ],
    )
    def test_malformed_credentials(self, edit: object, username: str | None) -> None:
        auth = make_auth()
        challenge = pick(auth.challenge(REALM, T0), "SHA-256")
        value = edit(answer(challenge))  # type: ignore[operator]
        result = auth.verify(value, "REGISTER", REALM, T0)
        assert result == AuthResult(ok=False, username=username, stale=False, reason="malformed credentials")

    @given(st.text(max_size=300))
    def test_verify_never_raises_on_junk(self, junk: str) -> None:
        result = make_auth().verify(junk, "REGISTER", REALM, T0)
        assert not result.ok

    @given(st.dictionaries(st.sampled_from(["username", "realm", "nonce", "uri", "response", "nc", "qop"]), st.text()))
    def test_verify_never_raises_on_junk_params(self, params: dict[str, str]) -> None:
        value = "Digest " + ", ".join(f"{k}={quote(v)}" for k, v in params.items()) if params else "Digest"
        assert not make_auth().verify(value, "REGISTER", REALM, T0).ok


class TestParseAuthParams:
    def test_typical_credentials(self) -> None:
        value = (
            'Digest username="bob", realm="example.test", nonce="abc", uri="sip:example.test", '
            'response="0123", algorithm=MD5, qop=auth, nc=00000001, cnonce="xyz"'
        )
        assert parse_auth_params(value) == (
            "Digest",
            {
                "username": "bob",
                "realm": "example.test",
                "nonce": "abc",
                "uri": "sip:example.test",
                "response": "0123",
                "algorithm": "MD5",
                "qop": "auth",
                "nc": "00000001",
                "cnonce": "xyz",
            },
        )

    def test_escapes_and_commas_inside_quotes(self) -> None:
        value = r'Digest username="a\"b, c=d", realm="x\\y", uri="\s"'
        assert parse_auth_params(value)[1] == {"username": 'a"b, c=d', "realm": "x\\y", "uri": "s"}

    def test_linear_whitespace(self) -> None:
        value = 'Digest\t username = "bob" ,\r\n realm=\t"r"  ,nc=1  '
        assert parse_auth_params(value) == ("Digest", {"username": "bob", "realm": "r", "nc": "1"})

    def test_names_are_lowercased_values_are_not(self) -> None:
        assert parse_auth_params('digest UserName="Bob", ALGORITHM=sha-256') == (
            "digest",
            {"username": "Bob", "algorithm": "sha-256"},
        )

    def test_empty_list_elements_are_skipped(self) -> None:
        assert parse_auth_params('Digest a=1, , b="2",') == ("Digest", {"a": "1", "b": "2"})

    def test_empty_quoted_value_and_utf8(self) -> None:
        assert parse_auth_params('Digest a="", b="Zoë"')[1] == {"a": "", "b": "Zoë"}

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "Digest",
            "Digest ",
            "Digest username",
            "Digest username=",
            'Digest username="unterminated',
            'Digest username="bob" realm="r"',
            "Digest a=b c=d",
            "Digest a=sip:bob@example.test",
            'Digest a="1", a="2"',
            'Digest a="1", A="2"',
            'Digest a="line\r\nbreak"',
            'Digest a="nul\x00"',
            'Digest a="ends with backslash\\"',
            'Digest a="esc \\\n"',
            "Digest , a=b",
            "=a b=c",
            'Digest a="\ud800"',
            "Digest " + ", ".join(f"p{i}=1" for i in range(65)),
            'Digest a="' + "x" * 9000 + '"',
        ],
    )
    def test_rejects(self, value: str) -> None:
        with pytest.raises(ValueError):
            parse_auth_params(value)

    @given(st.text())
    def test_random_text_only_raises_value_error(self, value: str) -> None:
        try:
            scheme, params = parse_auth_params(value)
        except ValueError:
            return
        assert scheme
        assert all(key == key.lower() for key in params)

    @given(st.lists(st.sampled_from(list('Digest ,="\\\tab=\r\n\x00é')), max_size=60).map("".join))
    def test_near_miss_text_only_raises_value_error(self, value: str) -> None:
        try:
            parse_auth_params(value)
        except ValueError:
            pass

    @given(st.binary(max_size=200))
    def test_decoded_hostile_bytes_only_raise_value_error(self, data: bytes) -> None:
        for text in (data.decode("latin-1"), data.decode("utf-8", "surrogateescape")):
            try:
                parse_auth_params(text)
            except ValueError:
                pass

    @given(
        st.dictionaries(
            st.from_regex(r"[a-z][a-z0-9\-]{0,10}", fullmatch=True),
            st.text(st.characters(blacklist_categories=("Cc", "Cs"))),
            min_size=1,
            max_size=10,
        )
    )
    def test_round_trip(self, params: dict[str, str]) -> None:
        value = "Digest " + ", ".join(f"{key}={quote(val)}" for key, val in params.items())
        assert parse_auth_params(value) == ("Digest", params)
