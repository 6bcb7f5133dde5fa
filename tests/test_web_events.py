"""``/api/events`` bounded: how many streams, snapshots in slices across reactor turns, backpressure, slow readers dropped.

Through a real ``Site`` and ``HTTPChannel`` over a ``StringTransport``; the
slow client is a transport that pauses its producer when its buffer is
full, as Twisted's TCP transport does. No sockets, no timing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from sipproxy.web import events as events_module
from sipproxy.web.events import SNAPSHOT_SLICE

try:
    from tests.web_helpers import BOB, RawConnection, SlowClient, Web, get, make_binding, sse_events
except ImportError:  # pragma: no cover
    from web_helpers import (  # type: ignore[no-redef]
        BOB,
        RawConnection,
        SlowClient,
        Web,
        get,
        make_binding,
        sse_events,
    )  # fmt: skip


def many(count: int) -> list[Any]:
    return [
        make_binding(f"sip:user{i}@example.test", f"sip:user{i}@192.0.2.{i % 250 + 1}:{5000 + i}") for i in range(count)
    ]


def stream_data(connection: RawConnection) -> bytes:
    return connection.body()


def written_bindings(connection: RawConnection) -> int:
    """Bindings of the snapshot written so far (each has one ``"aor":``)."""
    return stream_data(connection).count(b'"aor":')


def close(connection: RawConnection) -> None:
    connection.channel.connectionLost(Failure(ConnectionDone()))


def test_the_snapshot_goes_out_in_slices_with_the_reactor_running_between_them() -> None:
    web = Web()
    web.put(*many(1000))
    connection = web.raw(get("/api/events"))
    assert stream_data(connection) == b"retry: 2000\n\n"  # nothing serialized in the request's own turn
    between: list[int] = []
    progress = [0]
    while not sse_events(stream_data(connection)):
        web.clock.callLater(0, between.append, len(progress))  # other work (SIP) due in the same turn
        web.clock.turn()
        progress.append(written_bindings(connection))
        assert progress[-1] - progress[-2] <= SNAPSHOT_SLICE
        assert len(progress) < 100
    assert len(progress) - 1 >= 1000 // SNAPSHOT_SLICE
    assert between == list(range(1, len(progress)))  # one turn of other work per slice
    [(name, snapshot)] = sse_events(stream_data(connection))
    assert name == "snapshot"
    assert snapshot == web.get_json("/api/bindings")


def test_changes_during_the_snapshot_follow_it() -> None:
    web = Web()
    web.put(*many(600))
    connection = web.raw(get("/api/events"))
    web.clock.turn()
    web.put(make_binding(BOB, "sip:bob@192.0.2.9"))
    web.snapshots_out()
    web.clock.advance(0)
    (first, snapshot), (second, change) = sse_events(stream_data(connection))
    assert (first, snapshot["total"], second) == ("snapshot", 600, "binding")
    assert (change["kind"], change["binding"]["aor"]) == ("added", BOB)


def test_streams_opened_in_the_same_second_share_the_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    web = Web()
    web.put(*many(300))
    calls: list[object] = []
    real = events_module.binding_json
    monkeypatch.setattr(events_module, "binding_json", lambda b, now, flow=None: calls.append(b) or real(b, now, flow))
    first, second = web.raw(get("/api/events")), web.raw(get("/api/events"))
    web.snapshots_out()
    assert len(calls) == 300
    assert sse_events(stream_data(first)) == sse_events(stream_data(second))


def test_new_streams_do_not_walk_the_whole_index_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refreshes and removals are followed; only a new binding makes the next snapshot walk the index."""
    web = Web()
    bindings = many(50)
    web.put(*bindings)
    walks: list[int] = []
    real = web.store.all_bindings
    monkeypatch.setattr(web.store, "all_bindings", lambda: walks.append(1) or real())
    web.raw(get("/api/events"))
    web.clock.advance(5)
    web.put(make_binding(bindings[3].aor, bindings[3].contact, ttl=3600, refreshed_at=web.clock.seconds(), cseq=2))
    web.store.remove(bindings[7].aor, bindings[7].contact)
    later = web.raw(get("/api/events"))
    web.snapshots_out()
    assert len(walks) == 1
    [(_, snapshot)] = sse_events(stream_data(later))
    assert snapshot == web.get_json("/api/bindings")  # (the JSON API walks it: one more)
    web.put(make_binding(BOB, "sip:bob@192.0.2.9"))
    latest = web.raw(get("/api/events"))
    web.snapshots_out()
    assert len(walks) == 3
    [(_, snapshot)] = sse_events(stream_data(latest))
    assert snapshot == web.get_json("/api/bindings")


def test_a_client_that_stops_reading_pauses_its_snapshot() -> None:
    """Backpressure: what waits unsent is the transport's buffer and one slice, not the 0.9 MB snapshot."""
    web = Web()
    web.put(*many(2000))
    client = SlowClient(buffer_size=65536)
    connection = web.raw(get("/api/events"), transport=client)
    for _ in range(50):
        web.clock.turn()
    slice_bytes = SNAPSHOT_SLICE * 600
    assert client.full and client.most_unread < 65536 + slice_bytes
    stuck = written_bindings(connection)
    assert stuck < 2000
    web.clock.turn()
    assert written_bindings(connection) == stuck  # paused: no more work for this stream
    for _ in range(200):
        client.read()
        web.clock.turn()
    [(name, snapshot)] = sse_events(stream_data(connection))
    assert (name, snapshot["total"]) == ("snapshot", 2000)
    assert client.most_unread < 65536 + slice_bytes


def test_a_reader_that_lets_events_pile_up_is_dropped_once() -> None:
    web = Web()
    web.page.hub.buffer_limit = 20_000
    slow_client = SlowClient(buffer_size=100)
    slow = web.raw(get("/api/events"), transport=slow_client)
    reader = web.raw(get("/api/events"))
    web.snapshots_out()
    assert slow_client.full and len(web.page.streams) == 2
    sent_before = len(slow_client.value())
    with capturedLogs() as logged:
        for i in range(100):
            web.put(make_binding(f"sip:u{i}@example.test", f"sip:u{i}@192.0.2.1:{6000 + i}"))
            web.clock.turn()
    assert getattr(slow_client, "aborted", False)
    assert len(slow_client.value()) == sent_before  # nothing written while paused: it was queued, then dropped
    assert len(web.page.streams) == 1
    dropped = [formatEvent(e) for e in logged if "dropped" in e.get("log_format", "")]
    assert len(dropped) == 1
    assert dropped[0].startswith("Event stream of 127.0.0.1:40000 dropped: ")
    assert [e["log_level"].name for e in logged if "dropped" in e.get("log_format", "")] == ["info"]
    assert len(sse_events(stream_data(reader))) == 1 + 100  # the others go on
    close(slow)  # the connection's end, after the drop, changes nothing
    assert len(web.page.streams) == 1


def test_streams_are_bounded() -> None:
    web = Web(max_streams=2)
    first, _second = web.raw(get("/api/events")), web.raw(get("/api/events"))
    third = web.raw(get("/api/events"))
    assert third.status() == 503
    head = third.received().partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nretry-after: 10" in head
    assert "too many event streams open (2)" in json.loads(third.body())["error"]
    assert len(web.page.streams) == 2
    close(first)
    assert web.raw(get("/api/events")).status() == 200
    assert len(web.page.streams) == 2


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_max_event_streams_must_be_a_positive_number(value: str) -> None:
    from twisted.python.usage import UsageError

    from sipproxy.tap import Options

    with pytest.raises(UsageError, match=r"^--max-event-streams must be a positive whole number"):
        Options().parseOptions(["--max-event-streams", value])
    options = Options()
    options.parseOptions(["--max-event-streams", "7"])
    assert options["max-event-streams"] == 7
