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


def test_an_invite_the_guard_refuses_leaves_no_entry_that_would_push_real_calls_out(tmp_path: Path) -> None:
    # Under overload every refused INVITE would otherwise start an entry in the ring (the tap sees it
    # before the guard decides) and evict the ladders of the calls that went through.
    from sipproxy.net import Source
    from sipproxy.transport import DatagramSender

    try:
        from tests import messages
        from tests.fakes import FakeUDP
    except ImportError:  # pragma: no cover
        import messages  # type: ignore[no-redef]
        from fakes import FakeUDP  # type: ignore[no-redef]

    built = service(tmp_path, "--max-message-size", "600")
    transport = built.core.transport
    udp = transport.senders.get("UDP")
    if udp is None:
        transport.register(DatagramSender(transport))
    transport.udp = FakeUDP()  # type: ignore[attr-defined]
    ring = transport.tap.ring  # type: ignore[union-attr]
    source = Source("UDP", "192.0.2.7", 5060)

    def invite(call_id: str, body: str = "") -> bytes:
        return messages.make_request(
            "INVITE",
            "sip:bob@example.test",
            via=f"SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK{call_id}",
            call_id=call_id,
            cseq="1 INVITE",
            body=body,
        )

    transport.received(invite("admitted"), source)
    transport.received(invite("too-big", "v=0\r\n" + "a=x\r\n" * 200), source)  # 513 from the guard
    assert "admitted" in ring.entries and "too-big" not in ring.entries
    built.core.store.close()
