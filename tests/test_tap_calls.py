"""``--recent-calls`` and ``--recent-calls-bytes``: parsed, refused when wrong, and what they wire."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python.usage import UsageError

from sipproxy.calls.capture import Capture
from sipproxy.service import build_service
from sipproxy.tap import Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_on_by_default_200_calls_within_4_mib() -> None:
    options = parse()
    assert (options["recent-calls"], options["recent-calls-bytes"]) == (200, 4 << 20)


@pytest.mark.parametrize(("text", "value"), [("500K", 500 << 10), ("2m", 2 << 20), ("65536", 65536), ("0", 0)])
def test_the_byte_budget_takes_k_and_m(text: str, value: int) -> None:
    assert parse("--recent-calls-bytes", text)["recent-calls-bytes"] == value


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--recent-calls", "-1"], "^--recent-calls must be a whole number of calls"),
        (["--recent-calls", "lots"], "^--recent-calls must be a whole number of calls"),
        (["--recent-calls-bytes", "4G"], "^--recent-calls-bytes must be a number of bytes such as 4M"),
        (["--recent-calls-bytes", ""], "^--recent-calls-bytes must be a number of bytes"),
    ],
)
def test_bad_values_say_what_is_wrong(args: list[str], complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint):
        parse(*args)


def service(tmp_path: Path, *args: str):  # type: ignore[no-untyped-def]
    return build_service(parse("--db", ":memory:", "--domain", "example.test", *args), Clock())


def test_the_ring_feeds_on_the_proxy_and_the_transport(tmp_path: Path) -> None:
    built = service(tmp_path, "--recent-calls", "50", "--recent-calls-bytes", "1M")
    tap = built.core.transport.tap
    assert isinstance(tap, Capture)
    assert (tap.ring.max_calls, tap.ring.max_bytes) == (50, 1 << 20)
    assert built.core.proxy.on_call is not None


def test_no_byte_budget_means_no_capture_and_zero_calls_no_ring(tmp_path: Path) -> None:
    assert service(tmp_path, "--recent-calls-bytes", "0").core.transport.tap is None
    off = service(tmp_path, "--recent-calls", "0")
    assert off.core.transport.tap is None
    assert off.core.proxy.on_call is not None  # the call log is written whatever the ring
