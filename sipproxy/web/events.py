# -*- test-case-name: tests.test_web_events -*-
"""``/api/events``: Server-Sent Events for open pages, bounded so that no client can stall SIP or eat memory.

One :class:`EventHub` per page owns every open stream. What keeps it cheap
and bounded, whatever the clients do:

- **A bounded number of streams** (``--max-event-streams``, default
  :data:`MAX_STREAMS`); one more gets 503 with ``Retry-After`` and the
  page's script polls ``api/bindings`` meanwhile.
- **The snapshot in slices across reactor turns.** A stream's first event
  is every binding (5.7 MB for 13,000 of them). It is captured at once (a
  list of the frozen :class:`~sipproxy.location.Binding` values) and
  written :data:`SNAPSHOT_SLICE` bindings per reactor turn, shared round
  robin by the streams still sending theirs, so SIP datagrams are read
  between two slices. The list is not walked afresh for every stream
  (the hub follows the events), and a binding's JSON is encoded once per
  second of snapshot time, whatever the number of streams asking for it.
- **Backpressure.** Each :class:`EventStream` is the push producer of its
  response (``request.registerProducer``): when the client stops reading
  and the transport's buffer fills, Twisted pauses it; the snapshot then
  waits and live events are queued, at most :data:`STREAM_BUFFER` bytes.
  A reader that lets more than that pile up is dropped (connection
  aborted, logged at info); its browser reconnects and starts over with a
  fresh snapshot.
- **One write per stream per turn** for the changes of that turn.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from sipproxy.location import Binding, BindingEvent, LocationService
from sipproxy.net import Clock, DelayedCall
from sipproxy.web.render import binding_json

__all__ = [
    "MAX_STREAMS",
    "PING_INTERVAL",
    "RETRY_MS",
    "SNAPSHOT_SLICE",
    "STREAM_BUFFER",
    "EventHub",
    "EventStream",
    "sse_message",
]

MAX_STREAMS = 100
"""Event streams open at once (``--max-event-streams``); one more gets 503."""

STREAM_BUFFER = 1 << 20
"""Bytes of events queued for a client that does not read, beyond which its stream is dropped."""

SNAPSHOT_SLICE = 200
"""Bindings of snapshots encoded per reactor turn, all streams together (about 2 ms of work)."""

CACHED_COST = 10
"""How many bindings already encoded (by another stream's snapshot of the same second) cost as much as one afresh."""

PING_INTERVAL = 15.0
"""Seconds between comment lines on idle event streams (keeps proxies and NATs from closing them)."""

RETRY_MS = 2000
"""How long a browser waits before reconnecting a dropped event stream."""

RETRY_AFTER = 10
"""Seconds a client refused for too many streams is told to wait."""

_JSON = json.JSONEncoder(separators=(",", ":"))
"""``json.dumps(..., separators=...)`` builds an encoder per call; the event stream reuses this one."""


def sse_message(event: str, data: object) -> bytes:
    """One Server-Sent Events message: an event name and JSON data on a single line."""
    return f"event: {event}\ndata: {_JSON.encode(data)}\n\n".encode()


class _Snapshot:
    """What is left to send of one stream's ``snapshot`` event: the same bytes as ``sse_message("snapshot", ...)``."""

    def __init__(self, bindings: list[Binding], now: float) -> None:
        self.bindings = bindings
        self.now = now
        self.sent = 0

    def head(self) -> bytes:
        return b'event: snapshot\ndata: {"bindings":['

    def tail(self) -> bytes:
        aors = len({b.aor for b in self.bindings})
        return f'],"aors":{aors},"total":{len(self.bindings)}}}\n\n'.encode()


@implementer(IPushProducer)
class EventStream:
    """One open ``text/event-stream`` response, the push producer of its own body.

    Writes go straight to the request while the client reads; while it is
    paused (its transport's buffer is full) or its snapshot is still being
    sent, they wait in :attr:`queued`, which may not exceed ``limit`` bytes.
    """

    def __init__(self, request: Request, limit: int, on_overflow: Callable[[EventStream], None]) -> None:
        self.request = request
        self.limit = limit
        self.on_overflow = on_overflow
        self.paused = False
        self.closed = False
        self.snapshot: _Snapshot | None = None
        self.queued: list[bytes] = []
        self.queued_bytes = 0
        self.on_resume: Callable[[EventStream], None] | None = None

    def send(self, message: bytes) -> None:
        """Write ``message`` now, or queue it behind the snapshot or a paused client; drop the stream past the limit."""
        if self.closed:
            return
        if self.paused or self.snapshot is not None or self.queued:
            self.queued.append(message)
            self.queued_bytes += len(message)
            if self.queued_bytes > self.limit:
                self.on_overflow(self)
            return
        self.request.write(message)

    def write_now(self, data: bytes) -> None:
        """Write ``data`` ahead of the queue (the snapshot's own bytes)."""
        if not self.closed:
            self.request.write(data)

    def drain(self) -> None:
        """Write what waited, once the snapshot is out and the client reads."""
        if self.closed or self.paused or self.snapshot is not None or not self.queued:
            return
        data = b"".join(self.queued)
        self.queued.clear()
        self.queued_bytes = 0
        self.request.write(data)

    def close(self) -> None:
        """Forget what waited and abort the connection (a slow reader that exceeded its buffer)."""
        self.closed = True
        self.queued.clear()
        self.queued_bytes = 0
        self.snapshot = None
        transport: Any = getattr(self.request.channel, "transport", None)
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()

    # IPushProducer, called by the request's HTTP channel

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.drain()
        if self.on_resume is not None:
            self.on_resume(self)

    def stopProducing(self) -> None:
        self.closed = True
        self.queued.clear()
        self.snapshot = None


class EventHub:
    """Every open event stream of one page, fed by one subscription to the location service."""

    log = Logger(namespace="sipproxy.web")

    def __init__(
        self,
        store: LocationService,
        clock: Clock,
        *,
        max_streams: int = MAX_STREAMS,
        buffer_limit: int = STREAM_BUFFER,
        debug: bool = False,
        client: Callable[[Request], str] = lambda request: "?",
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_streams = max_streams
        self.buffer_limit = buffer_limit
        self.debug = debug
        self.client = client
        self.streams: set[EventStream] = set()
        self._outgoing: list[bytes] = []
        """Event messages of this reactor turn, written to every stream together by ``_flush``."""
        self._flush_call: DelayedCall | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._ping: DelayedCall | None = None
        self._sending: deque[EventStream] = deque()
        """Streams whose snapshot is not out yet and whose client reads, in round-robin order."""
        self._slice_call: DelayedCall | None = None
        self._view: dict[tuple[str, str], Binding] | None = None
        """Every binding by (aor, contact), kept up to date by the events while streams are open."""
        self._shown_at: float | None = None
        self._encoded: dict[float, dict[int, tuple[Binding, bytes]]] = {}
        """Snapshot time -> id(binding) -> (binding, its JSON): one encoding per binding per second."""

    def is_full(self) -> bool:
        return len(self.streams) >= self.max_streams

    def refuse(self, request: Request) -> bytes:
        """503 for one stream too many; the page polls ``api/bindings`` until it reconnects."""
        request.setResponseCode(503)
        request.setHeader(b"retry-after", str(RETRY_AFTER).encode())
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        reason = f"too many event streams open ({len(self.streams)}); poll api/bindings or retry later"
        return _JSON.encode({"error": reason}).encode()

    def open(self, request: Request) -> EventStream:
        """Start ``request``'s stream: the retry line now, then its snapshot over the next turns, then changes."""
        self._flush()  # the changes so far go to the streams already open; the snapshot has them
        stream = EventStream(request, self.buffer_limit, self._overflowed)
        request.registerProducer(stream, True)
        stream.write_now(f"retry: {RETRY_MS}\n\n".encode())
        if not self.streams:
            self._unsubscribe = self.store.subscribe(self.on_binding_event)
            self._ping = self.clock.callLater(PING_INTERVAL, self._send_ping)
        stream.snapshot = _Snapshot(self._every_binding(), self._snapshot_time())
        stream.on_resume = self._resumed
        self.streams.add(stream)
        self._sending.append(stream)
        self._schedule_slice()
        if self.debug:
            self.log.debug(
                "Event stream opened for {client}; {count} open", client=self.client(request), count=len(self.streams)
            )
        return stream

    def closed(self, result: object, stream: EventStream) -> None:
        """``notifyFinish`` callback: forget the stream; the last one stops the subscription and pings.

        Returns None, so a dropped connection's failure ends here.
        """
        if stream not in self.streams:
            return
        stream.stopProducing()
        self.streams.discard(stream)
        if stream in self._sending:
            self._sending.remove(stream)
        if self.debug:
            self.log.debug("Event stream closed; {count} open", count=len(self.streams))
        if self.streams:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for call in (self._ping, self._slice_call):
            if call is not None and call.active():
                call.cancel()
        self._ping = self._slice_call = None
        self._encoded.clear()
        self._view = None
        self._flush()  # nobody left to write to: drop what was pending

    def on_binding_event(self, event: BindingEvent) -> None:
        """Store subscriber: one ``binding`` event for every open stream, written at the end of the reactor turn.

        A busy registrar changes thousands of bindings a second: one write per
        stream per turn, not one per change.
        """
        if not self.streams:
            return
        self._follow(event)
        payload = {
            "kind": event.kind,
            "reason": event.reason,
            "binding": binding_json(event.binding, self.clock.seconds()),
        }
        self._outgoing.append(sse_message("binding", payload))
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if not self._outgoing:
            return
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        for stream in list(self.streams):
            stream.send(data)

    def _snapshot_time(self) -> float:
        """The time snapshots are shown at: the first stream's of this second, so that they share encodings."""
        now = self.clock.seconds()
        if self._shown_at is None or math.floor(now) != math.floor(self._shown_at):
            self._shown_at = now
        return self._shown_at

    def _every_binding(self) -> list[Binding]:
        """Every binding now, for a new stream's snapshot, without walking the index each time.

        ``all_bindings()`` walks and sorts the whole index (some 15 ms for
        13,000 bindings). The hub walks it once and then follows the events:
        a refresh replaces its binding in place, a removal or expiry drops
        it, and a new binding (rarer) makes the next snapshot walk again, so
        that it comes in its address-of-record's place.
        """
        if self._view is None:
            self._view = {(b.aor, b.contact): b for b in self.store.all_bindings()}
        return list(self._view.values())

    def _follow(self, event: BindingEvent) -> None:
        if self._view is None:
            return
        key = (event.binding.aor, event.binding.contact)
        if event.kind == "refreshed" and key in self._view:
            self._view[key] = event.binding
        elif event.kind in ("removed", "expired"):
            self._view.pop(key, None)
        else:
            self._view = None

    def _send_ping(self) -> None:
        for stream in list(self.streams):
            stream.send(b": ping\n\n")
        self._ping = self.clock.callLater(PING_INTERVAL, self._send_ping) if self.streams else None

    def _overflowed(self, stream: EventStream) -> None:
        self.log.info(
            "Event stream of {client} dropped: {queued} bytes of events waited unread (limit {limit})",
            client=self.client(stream.request),
            queued=stream.queued_bytes,
            limit=stream.limit,
        )
        stream.close()
        self.closed(None, stream)

    # -- snapshots, a slice per reactor turn ---------------------------------------

    def _resumed(self, stream: EventStream) -> None:
        if stream.snapshot is not None and stream in self.streams and stream not in self._sending:
            self._sending.append(stream)
            self._schedule_slice()

    def _schedule_slice(self) -> None:
        if self._sending and self._slice_call is None:
            self._slice_call = self.clock.callLater(0, self._send_slice)

    def _send_slice(self) -> None:
        """One round over the streams sending a snapshot, :data:`SNAPSHOT_SLICE` fresh bindings' worth in all."""
        self._slice_call = None
        ready = [stream for stream in self._sending if not stream.closed and stream.snapshot is not None]
        self._sending = deque(stream for stream in ready if not stream.paused)  # paused: resumeProducing puts it back
        if self._sending:
            share = max(CACHED_COST, SNAPSHOT_SLICE * CACHED_COST // len(self._sending))
            for stream in list(self._sending):
                assert stream.snapshot is not None
                self._write_piece(stream, stream.snapshot, share)
                if stream.snapshot is None or stream.closed:
                    self._sending.remove(stream)
        seconds = {stream.snapshot.now for stream in self._sending if stream.snapshot is not None}
        for second in set(self._encoded) - seconds:
            del self._encoded[second]
        self._schedule_slice()

    def _write_piece(self, stream: EventStream, snapshot: _Snapshot, share: int) -> None:
        """Write the next piece of ``stream``'s snapshot, ``share`` of the turn's work (its end too when reached)."""
        parts: list[bytes] = [snapshot.head()] if snapshot.sent == 0 else []
        encoded = self._encoded.setdefault(snapshot.now, {})
        used, end = 0, len(snapshot.bindings)
        while snapshot.sent < end and used < share:
            binding = snapshot.bindings[snapshot.sent]
            cached = encoded.get(id(binding))
            if cached is not None and cached[0] is binding:
                text = cached[1]
                used += 1
            else:
                text = _JSON.encode(binding_json(binding, snapshot.now)).encode()
                encoded[id(binding)] = (binding, text)
                used += CACHED_COST
            parts.append(b"," + text if snapshot.sent else text)
            snapshot.sent += 1
        if snapshot.sent >= end:
            parts.append(snapshot.tail())
            stream.snapshot = None
        stream.write_now(b"".join(parts))
        if stream.snapshot is None:
            stream.drain()
