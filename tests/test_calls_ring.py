"""The recent calls ring: both bounds, retransmissions marked, filters, subscribers."""

from __future__ import annotations

from sipproxy.calls import BranchRecord, CallRecord
from sipproxy.calls.ring import CALL_SHARE, MESSAGE_OVERHEAD, CapturedMessage, RecentCalls


def record(call_id: str = "c1", **fields: object) -> CallRecord:
    values: dict[str, object] = {
        "method": "INVITE",
        "call_id": call_id,
        "caller": "sip:alice@example.test",
        "callee": "sip:bob@example.test",
        "source": "UDP 192.0.2.7:5060",
        "started": 100.0,
        "finished": 101.0,
        "status": 200,
        "reason": "OK",
    }
    values.update(fields)
    return CallRecord(**values)  # type: ignore[arg-type]


def message(data: bytes = b"INVITE sip:bob@example.test SIP/2.0\r\n\r\n", incoming: bool = True) -> CapturedMessage:
    return CapturedMessage(100.0, incoming, "UDP", "192.0.2.7", 5060, data)


def test_the_last_n_calls_are_kept_newest_first() -> None:
    ring = RecentCalls(max_calls=3, max_bytes=1 << 20)
    for n in range(5):
        ring(record(f"c{n}"))
    assert [entry.call_id for entry in ring.calls()] == ["c4", "c3", "c2"]
    assert ring.evicted == 2


def test_the_byte_budget_drops_the_oldest_calls_whole() -> None:
    ring = RecentCalls(max_calls=100, max_bytes=20_000)
    data = b"x" * 1000
    for n in range(30):
        entry = ring.start(f"c{n}", 100.0 + n)
        ring.add(entry, message(data + str(n).encode()))
        ring(record(f"c{n}"))
    assert ring.size <= 20_000
    kept = [entry.call_id for entry in ring.calls()]
    assert kept[0] == "c29" and "c0" not in kept and len(kept) < 30
    assert ring.size == sum(entry.size for entry in ring.entries.values())


def test_one_call_takes_at_most_its_share_of_the_budget() -> None:
    ring = RecentCalls(max_calls=10, max_bytes=80_000)
    entry = ring.start("c1", 100.0)
    for n in range(100):
        ring.add(entry, message(b"y" * 1000 + str(n).encode()))
    assert (entry.message_bytes) * CALL_SHARE <= 80_000
    assert len(entry.messages) == 80_000 // CALL_SHARE // (1003 + MESSAGE_OVERHEAD)
    assert entry.dropped == 100 - len(entry.messages)


def test_the_same_bytes_the_same_way_again_are_a_retransmission() -> None:
    ring = RecentCalls()
    entry = ring.start("c1", 100.0)
    invite = b"INVITE sip:bob@example.test SIP/2.0\r\nCall-ID: c1\r\n\r\n"
    ring.add(entry, message(invite))
    ring.add(entry, message(invite, incoming=False))  # forwarded: the other way, not a retransmission
    ring.add(entry, message(invite))
    assert [m.retransmission for m in entry.messages] == [False, False, True]


def test_filter_by_aor_and_call_id() -> None:
    ring = RecentCalls()
    ring(record("c1", branches=(BranchRecord("sip:bob@192.0.2.20", "sip:bob@example.test"),)))
    ring(record("c2", caller="sip:carol@example.test", callee="sip:dave@example.test"))
    assert [e.call_id for e in ring.calls(aor="sip:bob@example.test")] == ["c1"]
    assert [e.call_id for e in ring.calls(aor="sip:bob@192.0.2.20")] == ["c1"]
    assert [e.call_id for e in ring.calls(aor="sip:carol@example.test")] == ["c2"]
    assert [e.call_id for e in ring.calls(call_id="c2")] == ["c2"]
    assert ring.calls(call_id="nope") == []


def test_a_call_in_progress_is_not_listed_until_its_record_arrives() -> None:
    ring = RecentCalls()
    ring.add(ring.start("c1", 100.0), message())
    assert ring.calls() == []
    ring(record("c1"))
    (entry,) = ring.calls()
    assert len(entry.messages) == 1 and entry.record is not None


def test_the_deciding_record_is_the_last_out_of_dialog_one() -> None:
    ring = RecentCalls()
    ring(record("c1", status=407, reason="Proxy Authentication Required"))
    ring(record("c1", status=200))
    ring(record("c1", status=200, in_dialog=True, method="INVITE"))
    (entry,) = ring.calls()
    assert len(entry.records) == 3 and entry.record is entry.records[1]


def test_subscribers_hear_of_every_record_until_they_unsubscribe() -> None:
    ring = RecentCalls()
    heard: list[str] = []
    unsubscribe = ring.subscribe(lambda entry: heard.append(entry.call_id))
    ring(record("c1"))
    unsubscribe()
    ring(record("c2"))
    assert heard == ["c1"]


def test_no_byte_budget_keeps_records_only() -> None:
    ring = RecentCalls(max_calls=5, max_bytes=0)
    for n in range(5):
        ring(record(f"c{n}"))
    entry = ring.get("c4")
    assert entry is not None
    ring.add(entry, message())
    assert len(ring.calls()) == 5 and entry.messages == [] and entry.dropped == 1


def test_held_messages_are_bounded_by_their_share_of_the_budget() -> None:
    from sipproxy.calls.ring import PENDING_MESSAGES, PENDING_SHARE

    ring = RecentCalls(max_calls=10, max_bytes=PENDING_SHARE * 10_000)
    for n in range(20):
        ring.hold(f"m{n}", message(b"x" * 2000))
    assert ring.pending_bytes <= 10_000 and list(ring.pending)[-1] == "m19"
    for _ in range(PENDING_MESSAGES + 5):
        ring.hold("m19", message(b"y"))
    assert len(ring.pending["m19"]) == PENDING_MESSAGES
    ring(record("m19", method="OPTIONS", status=408))
    assert len(ring.entries["m19"].messages) == PENDING_MESSAGES and "m19" not in ring.pending
