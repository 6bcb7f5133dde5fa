# -*- test-case-name: tests.test_web_events -*-
"""Server-Sent Events streams, bounded: what every hub of them shares (``/api/events``, ``/api/call-events``).

- :class:`EventStream`: one client's stream, the push producer of its
  response (``request.registerProducer``): when the client stops reading
  and the transport's buffer fills, Twisted pauses it and what comes
  meanwhile is queued, at most :data:`STREAM_BUFFER` bytes; a reader that
  lets more pile up is dropped (connection aborted, logged at info) and
  its browser reconnects.
- :class:`StreamHub`: a hub's open streams, at most ``max_streams``
  (``--max-event-streams``, default :data:`MAX_STREAMS`; one more gets 503
  with ``Retry-After`` and the page polls meanwhile), one subscription to
  the hub's source while any is open, pings on idle streams.

The bindings hub is :mod:`sipproxy.web.events`, the calls hub
:mod:`sipproxy.web.calls`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from sipproxy.location import Binding
from sipproxy.net import Clock, DelayedCall

__all__ = [
    "COMPACT_JSON",
    "MAX_STREAMS",
    "PING_INTERVAL",
    "RETRY_AFTER",
    "RETRY_MS",
    "STREAM_BUFFER",
    "EventStream",
    "Snapshot",
    "StreamHub",
    "sse_message",
]

MAX_STREAMS = 100
"""Event streams open at once (``--max-event-streams``); one more gets 503."""

STREAM_BUFFER = 1 << 20
"""Bytes of events queued for a client that does not read, beyond which its stream is dropped."""

PING_INTERVAL = 15.0
"""Seconds between comment lines on idle event streams (keeps proxies and NATs from closing them)."""

RETRY_MS = 2000
"""How long a browser waits before reconnecting a dropped event stream."""

RETRY_AFTER = 10
"""Seconds a client refused for too many streams is told to wait."""

COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
"""``json.dumps(..., separators=...)`` builds an encoder per call; the event stream reuses this one."""


def sse_message(event: str, data: object) -> bytes:
    """One Server-Sent Events message: an event name and JSON data on a single line."""
    return f"event: {event}\ndata: {COMPACT_JSON.encode(data)}\n\n".encode()


class Snapshot:
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
        self.snapshot: Snapshot | None = None
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


class StreamHub:
    """What every hub of event streams shares: the bound, the 503, opening and closing streams, pings, slow readers.

    A hub subscribes to its source while at least one stream is open
    (:meth:`_subscribe`) and lets go when the last one closes
    (:meth:`_stopped` for the rest of its state).
    """

    log = Logger(namespace="sipproxy.web")
    poll = "api/bindings"
    """What the page polls while it is refused a stream."""
    label = "Event stream"
    """How the log names these streams."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_streams: int = MAX_STREAMS,
        buffer_limit: int = STREAM_BUFFER,
        client: Callable[[Request], str] = lambda request: "?",
    ) -> None:
        self.clock = clock
        self.max_streams = max_streams
        self.buffer_limit = buffer_limit
        self.client = client
        self.streams: set[EventStream] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._ping: DelayedCall | None = None

    def is_full(self) -> bool:
        return len(self.streams) >= self.max_streams

    def refuse(self, request: Request) -> bytes:
        """503 for one stream too many; the page polls :attr:`poll` until it reconnects."""
        request.setResponseCode(503)
        request.setHeader(b"retry-after", str(RETRY_AFTER).encode())
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        reason = f"too many event streams open ({len(self.streams)}); poll {self.poll} or retry later"
        return COMPACT_JSON.encode({"error": reason}).encode()

    def serve(self, request: Request) -> bytes | Deferred[None]:
        """Answer ``request`` with a new stream (503 beyond ``max_streams``); the Deferred never fires.

        Klein cancels it when the client goes away, and ``notifyFinish`` drops the stream.
        """
        if self.is_full():
            return self.refuse(request)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        if request.method == b"HEAD":
            return succeed(None)
        stream = self.open(request)
        request.notifyFinish().addBoth(self.closed, stream)
        return Deferred()

    def open(self, request: Request) -> EventStream:
        """Start ``request``'s stream with the retry line; the first stream subscribes and starts the pings."""
        stream = EventStream(request, self.buffer_limit, self._overflowed)
        request.registerProducer(stream, True)
        stream.write_now(f"retry: {RETRY_MS}\n\n".encode())
        if not self.streams:
            self._unsubscribe = self._subscribe()
            self._ping = self.clock.callLater(PING_INTERVAL, self._send_ping)
        self.streams.add(stream)
        return stream

    def closed(self, result: object, stream: EventStream) -> None:
        """``notifyFinish`` callback: forget the stream; the last one stops the subscription and pings.

        Returns None, so a dropped connection's failure ends here.
        """
        if stream not in self.streams:
            return
        stream.stopProducing()
        self.streams.discard(stream)
        self._forget(stream)
        if self.streams:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        self._ping = None
        self._stopped()

    def _subscribe(self) -> Callable[[], None]:
        """Follow the source; returns how to stop."""
        raise NotImplementedError

    def _forget(self, stream: EventStream) -> None:
        """``stream`` has closed (the hub's own per-stream state)."""

    def _stopped(self) -> None:
        """The last stream has closed (the hub's own state)."""

    def _send_ping(self) -> None:
        for stream in list(self.streams):
            stream.send(b": ping\n\n")
        self._ping = self.clock.callLater(PING_INTERVAL, self._send_ping) if self.streams else None

    def _overflowed(self, stream: EventStream) -> None:
        self.log.info(
            "{label} of {client} dropped: {queued} bytes of events waited unread (limit {limit})",
            label=self.label,
            client=self.client(stream.request),
            queued=stream.queued_bytes,
            limit=stream.limit,
        )
        stream.close()
        self.closed(None, stream)
