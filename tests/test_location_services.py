"""Tests for sipproxy.location.services: restore at start-up, close at shutdown, WAL checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from sipproxy.location import Binding, LocationStore, MemoryLocation, SQLiteLocation, SQLitePersistence
from sipproxy.location.services import StoreService, WalCheckpointer


def binding(expires_at: float, contact: str = "sip:alice@192.0.2.7:5062") -> Binding:
    return Binding(
        aor="sip:alice@example.test",
        contact=contact,
        call_id="c1",
        cseq=1,
        expires_at=expires_at,
        source_host="192.0.2.7",
        source_port=5062,
    )


def test_checkpointer_runs_one_at_a_time_and_the_store_closes_after_it(tmp_path: Path) -> None:
    persistence = SQLitePersistence(str(tmp_path / "s.sqlite"), autocheckpoint=False)
    store = LocationStore(Clock(), persistence)
    started: list[Deferred[object]] = []

    def run(call: object) -> Deferred[object]:
        started.append(Deferred())
        return started[-1]

    service = StoreService(store, "test")
    checkpointer = WalCheckpointer(persistence, run=run)
    checkpointer.clock = Clock()
    checkpointer.setServiceParent(service)
    service.startService()
    checkpointer.clock.advance(5)  # five ticks while the first checkpoint is still running
    assert len(started) == 1

    stopping = service.stopService()
    assert not stopping.called
    store.update("sip:alice@example.test", put=[binding(3600)])  # the store is still open
    started[0].callback((0, 0))
    assert stopping.called
    with pytest.raises(RuntimeError, match="closed"):
        store.update("sip:alice@example.test", put=[binding(3600)])


@pytest.mark.parametrize(
    ("count", "said"), [(0, "Restored 0 bindings"), (1, "Restored 1 binding from"), (2, "Restored 2 bindings")]
)
def test_the_restore_line_counts_in_english(tmp_path: Path, count: int, said: str) -> None:
    db = str(tmp_path / "s.sqlite")
    first = SQLiteLocation(Clock(), db)
    first.update("sip:alice@example.test", put=[binding(3600, f"sip:alice@192.0.2.{n}") for n in range(count)])
    first.close()
    service = StoreService(SQLiteLocation(Clock(), db), db)
    with capturedLogs() as events:
        service.startService()
    [line] = [formatEvent(e) for e in events if e["log_format"].startswith("Restored")]
    assert line.startswith(said) and line.endswith(f"from {db}")
    service.stopService()


def test_the_memory_backend_restores_nothing() -> None:
    service = StoreService(MemoryLocation(Clock()), "memory")
    with capturedLogs() as events:
        service.startService()
    assert [formatEvent(e) for e in events] == ["Restored 0 bindings from memory"]
    service.stopService()
