"""Security settings from the command line, the users file read once, the start-up log."""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from sipproxy.metrics import Metrics
from sipproxy.security import DEFAULT_RATE, build_security
from sipproxy.stack import Domains
from sipproxy.tap import Options

try:
    from tests.security_fakes import (
        DOMAINS,
        LOCAL,
        REALM,
        FakeServer,
    )
except ImportError:  # pragma: no cover
    from security_fakes import (  # type: ignore[no-redef]
        DOMAINS,
        LOCAL,
        REALM,
        FakeServer,
    )


def test_startup_log_says_whether_authentication_is_on() -> None:
    with capturedLogs() as events:
        FakeServer(users=None).security.announce()
    assert any(e["log_level"] == LogLevel.warn and "Authentication is off" in e["log_format"] for e in events)
    with capturedLogs() as events:
        FakeServer().security.announce()
    [on] = [e for e in events if "Digest authentication on" in e["log_format"]]
    assert on["count"] == 3 and on["realm"] == REALM
    [md5_only] = [e for e in events if "no SHA-256 HA1" in e["log_format"]]
    assert md5_only["count"] == 1 and (md5_only["users"], md5_only["have"]) == ("user", "has")  # not "1 users ... have"


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
