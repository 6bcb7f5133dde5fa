"""Service-level behaviour that needs no sockets: what the operator reads in the log."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from sipproxy.location import Binding, LocationStore
from sipproxy.service import BindingLog


def binding(expires_at: float) -> Binding:
    return Binding(
        aor="sip:alice@example.test",
        contact="sip:alice@192.0.2.7:5062",
        call_id="c1",
        cseq=1,
        expires_at=expires_at,
        source_host="192.0.2.7",
        source_port=5062,
    )


def test_registration_and_expiry_are_logged_at_info() -> None:
    clock = Clock()
    clock.advance(1000)
    store = LocationStore(clock)
    store.subscribe(BindingLog(clock))
    with capturedLogs() as events:
        store.update("sip:alice@example.test", put=[binding(1060)])
        clock.advance(60)
    info = [e for e in events if e["log_level"] == LogLevel.info]
    assert [e["log_format"].split(" ")[0] for e in info] == ["Registered", "Binding"]
    assert info[0]["expires"] == 60 and info[0]["source"] == "UDP 192.0.2.7:5062"
    assert info[1]["kind"] == "expired" and info[1]["contact"] == "sip:alice@192.0.2.7:5062"
