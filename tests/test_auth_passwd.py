"""The users file (UserDB, write_user) and the sipproxy-passwd console script."""

from __future__ import annotations

import getpass
import stat
from pathlib import Path

import pytest

from sipproxy.auth import DigestAuthenticator, UserDB, compute_response, ha1, parse_auth_params, passwd, write_user

REALM = "example.test"
SECRET = b"0123456789abcdef0123456789abcdef"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def login(users: UserDB, user: str, password: str, algorithm: str) -> bool:
    """One challenge/response exchange (RFC 3261 §22.2) against ``users``."""
    auth = DigestAuthenticator(users, SECRET)
    params = next(
        p for p in (parse_auth_params(v)[1] for v in auth.challenge(REALM, 0.0)) if p["algorithm"] == algorithm
    )
    secret_ha1 = ha1(algorithm, user, REALM, password)
    response = compute_response(
        algorithm, secret_ha1, "REGISTER", "sip:example.test", params["nonce"], "00000001", "c", "auth"
    )
    value = (
        f'Digest username="{user}", realm="{REALM}", nonce="{params["nonce"]}", uri="sip:example.test", '
        f'response="{response}", algorithm={algorithm}, qop=auth, nc=00000001, cnonce="c"'
    )
    return auth.verify(value, "REGISTER", REALM, 0.0).ok


class TestUserDB:
    def test_load_three_and_four_field_lines(self, tmp_path: Path) -> None:
        md5 = ha1("MD5", "bob", REALM, "pw")
        sha = ha1("SHA-256", "carol", REALM, "pw2")
        path = tmp_path / "users"
        path.write_text(
            f"# users\n\n  bob:{REALM}:{md5.upper()}\ncarol:{REALM}:{ha1('MD5', 'carol', REALM, 'pw2')}:{sha}\n"
        )
        db = UserDB.load(path)
        assert len(db) == 2
        bob = db.get("bob", REALM)
        assert bob is not None
        assert bob.ha1("MD5") == md5
        assert bob.ha1("md5-sess") == md5
        assert bob.ha1("SHA-256") is None
        carol = db.get("carol", REALM)
        assert carol is not None
        assert carol.ha1("SHA-256") == sha
        assert carol.ha1("SHA-512-256") is None
        assert db.get("bob", "other.test") is None
        assert db.get("Bob", REALM) is None

    @pytest.mark.parametrize(
        "text",
        [
            "bob:example.test\n",
            "bob:example.test:nothex\n",
            "bob:example.test:" + "0" * 31 + "\n",
            "bob:example.test:" + "0" * 32 + ":" + "0" * 63 + "\n",
            ":example.test:" + "0" * 32 + "\n",
            "a:b:c:d:e\n",
            ("bob:example.test:" + "0" * 32 + "\n") * 2,
        ],
    )
    def test_malformed_files_are_refused(self, text: str) -> None:
        with pytest.raises(ValueError):
            UserDB.parse(text)

    def test_write_then_load_round_trip(self, tmp_path: Path) -> None:
        path = tmp_path / "users"
        assert write_user(path, "bob", REALM, "hunter2") is False
        assert write_user(path, "alice", REALM, "s3cret") is False
        db = UserDB.load(path)
        bob = db.get("bob", REALM)
        assert bob is not None
        assert bob.ha1("MD5") == ha1("MD5", "bob", REALM, "hunter2")
        assert bob.ha1("SHA-256") == ha1("SHA-256", "bob", REALM, "hunter2")
        assert db.get("alice", REALM) is not None
        assert mode(path) == 0o600

    def test_written_users_can_log_in_with_both_algorithms(self, tmp_path: Path) -> None:
        path = tmp_path / "users"
        write_user(path, "bob", REALM, "hunter2")
        db = UserDB.load(path)
        assert login(db, "bob", "hunter2", "SHA-256")
        assert login(db, "bob", "hunter2", "MD5")
        assert not login(db, "bob", "wrong", "SHA-256")

    def test_update_replaces_line_and_keeps_the_rest(self, tmp_path: Path) -> None:
        path = tmp_path / "users"
        old = ha1("MD5", "bob", REALM, "old")
        path.write_text(f"# keep me\ncarol:{REALM}:{ha1('MD5', 'carol', REALM, 'x')}\nbob:{REALM}:{old}\n")
        path.chmod(0o644)
        assert write_user(path, "bob", REALM, "new") is True
        lines = path.read_text().splitlines()
        assert lines[0] == "# keep me"
        assert lines[1].startswith("carol:")
        assert len(lines) == 3
        bob = UserDB.load(path).get("bob", REALM)
        assert bob is not None
        assert bob.ha1("MD5") == ha1("MD5", "bob", REALM, "new")
        assert mode(path) == 0o600

    def test_same_user_in_two_realms(self, tmp_path: Path) -> None:
        path = tmp_path / "users"
        write_user(path, "bob", REALM, "a")
        write_user(path, "bob", "other.test", "b")
        assert len(UserDB.load(path)) == 2

    def test_no_temporary_files_left_behind(self, tmp_path: Path) -> None:
        path = tmp_path / "users"
        write_user(path, "bob", REALM, "a")
        write_user(path, "bob", REALM, "b")
        assert [p.name for p in tmp_path.iterdir()] == ["users"]

    @pytest.mark.parametrize(
        ("user", "realm"),
        [("", REALM), ("bo:b", REALM), ("bob", "ex:ample"), ("bob\n", REALM), ("#bob", REALM), (" bob", REALM)],
    )
    def test_unrepresentable_names_are_refused(self, tmp_path: Path, user: str, realm: str) -> None:
        with pytest.raises(ValueError):
            write_user(tmp_path / "users", user, realm, "pw")
        assert not (tmp_path / "users").exists()


class TestPasswdCommand:
    def test_add_then_update(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = tmp_path / "users"
        assert passwd.main([str(path), "bob", REALM, "--password", "one"]) == 0
        assert "added" in capsys.readouterr().out
        assert passwd.main([str(path), "bob", REALM, "--password", "two"]) == 0
        assert "updated" in capsys.readouterr().out
        bob = UserDB.load(path).get("bob", REALM)
        assert bob is not None
        assert bob.ha1("SHA-256") == ha1("SHA-256", "bob", REALM, "two")
        assert mode(path) == 0o600

    def test_prompts_twice(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        prompts: list[str] = []

        def fake_getpass(prompt: str = "") -> str:
            prompts.append(prompt)
            return "typed"

        monkeypatch.setattr(getpass, "getpass", fake_getpass)
        path = tmp_path / "users"
        assert passwd.main([str(path), "bob", REALM]) == 0
        assert len(prompts) == 2
        assert login(UserDB.load(path), "bob", "typed", "SHA-256")

    def test_mismatched_passwords(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        answers = iter(["first", "second"])
        monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
        path = tmp_path / "users"
        assert passwd.main([str(path), "bob", REALM]) == 1
        assert "do not match" in capsys.readouterr().err
        assert not path.exists()

    def test_empty_password_refused(self, tmp_path: Path) -> None:
        assert passwd.main([str(tmp_path / "users"), "bob", REALM, "--password", ""]) == 1

    def test_bad_user_name(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert passwd.main([str(tmp_path / "users"), "bo:b", REALM, "--password", "x"]) == 1
        assert "sipproxy-passwd:" in capsys.readouterr().err

    def test_unwritable_location(self, tmp_path: Path) -> None:
        assert passwd.main([str(tmp_path / "missing" / "users"), "bob", REALM, "--password", "x"]) == 1

    def test_missing_arguments_exit_with_usage(self) -> None:
        with pytest.raises(SystemExit) as excinfo:
            passwd.main(["only-a-file"])
        assert excinfo.value.code == 2
