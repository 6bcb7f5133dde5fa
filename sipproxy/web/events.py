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

import math
from collections import deque
from collections.abc import Callable

from twisted.web.server import Request

from sipproxy.location import Binding, BindingEvent, LocationService
from sipproxy.net import Clock, DelayedCall
from sipproxy.web.render import FlowState, binding_json
from sipproxy.web.streams import COMPACT_JSON, MAX_STREAMS, STREAM_BUFFER, EventStream, Snapshot, StreamHub, sse_message

__all__ = ["CACHED_COST", "SNAPSHOT_SLICE", "EventHub"]

SNAPSHOT_SLICE = 200
"""Bindings of snapshots encoded per reactor turn, all streams together (about 2 ms of work)."""

CACHED_COST = 10
"""How many bindings already encoded (by another stream's snapshot of the same second) cost as much as one afresh."""


class EventHub(StreamHub):
    """Every open event stream of one page, fed by one subscription to the location service."""

    def __init__(
        self,
        store: LocationService,
        clock: Clock,
        *,
        max_streams: int = MAX_STREAMS,
        buffer_limit: int = STREAM_BUFFER,
        debug: bool = False,
        client: Callable[[Request], str] = lambda request: "?",
        flow: FlowState | None = None,
    ) -> None:
        super().__init__(clock, max_streams=max_streams, buffer_limit=buffer_limit, client=client)
        self.store = store
        self.flow = flow
        self.debug = debug
        self._outgoing: list[bytes] = []
        """Event messages of this reactor turn, written to every stream together by ``_flush``."""
        self._flush_call: DelayedCall | None = None
        self._sending: deque[EventStream] = deque()
        """Streams whose snapshot is not out yet and whose client reads, in round-robin order."""
        self._slice_call: DelayedCall | None = None
        self._view: dict[tuple[str, str], Binding] | None = None
        """Every binding by (aor, contact), kept up to date by the events while streams are open."""
        self._shown_at: float | None = None
        self._encoded: dict[float, dict[int, tuple[Binding, bytes]]] = {}
        """Snapshot time -> id(binding) -> (binding, its JSON): one encoding per binding per second."""

    def open(self, request: Request) -> EventStream:
        """Start ``request``'s stream: the retry line now, then its snapshot over the next turns, then changes."""
        self._flush()  # the changes so far go to the streams already open; the snapshot has them
        stream = super().open(request)
        stream.snapshot = Snapshot(self._every_binding(), self._snapshot_time())
        stream.on_resume = self._resumed
        self._sending.append(stream)
        self._schedule_slice()
        if self.debug:
            self.log.debug(
                "Event stream opened for {client}; {count} open", client=self.client(request), count=len(self.streams)
            )
        return stream

    def _subscribe(self) -> Callable[[], None]:
        return self.store.subscribe(self.on_binding_event)

    def _forget(self, stream: EventStream) -> None:
        if stream in self._sending:
            self._sending.remove(stream)
        if self.debug:
            self.log.debug("Event stream closed; {count} open", count=len(self.streams))

    def _stopped(self) -> None:
        if self._slice_call is not None and self._slice_call.active():
            self._slice_call.cancel()
        self._slice_call = None
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
            "binding": binding_json(event.binding, self.clock.seconds(), self.flow),
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

    def _write_piece(self, stream: EventStream, snapshot: Snapshot, share: int) -> None:
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
                text = COMPACT_JSON.encode(binding_json(binding, snapshot.now, self.flow)).encode()
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
