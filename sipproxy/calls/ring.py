# -*- test-case-name: tests.test_calls_ring -*-
"""The recent calls: a bounded in-memory ring of call records and the messages of each call, by Call-ID.

One :class:`CallEntry` per Call-ID, oldest first.  It is created by the
first message captured for a new call (an out-of-dialog INVITE, see
:mod:`~sipproxy.calls.capture`) or by the first record of a call whose
messages were not captured; every later message and record of that
Call-ID joins it (the ACK, a BYE, a re-INVITE, the retry after a 407).

Bounded twice, both options of ``twistd sipproxy``:

- ``max_calls`` (``--recent-calls``): entries kept;
- ``max_bytes`` (``--recent-calls-bytes``): what the entries cost, the
  messages' bytes plus an estimate of each object around them
  (:data:`MESSAGE_OVERHEAD`, :data:`RECORD_COST`).  0: records only, no
  messages (the service then gives the transport no capture at all).

Beyond either bound the oldest entries go, whole.  One call may not take
more than :data:`CALL_SHARE` of the byte budget nor
:data:`MAX_MESSAGES_PER_CALL` messages (a dialog that lasts a day, or one
Call-ID hammered by a peer): past that its messages are counted in
``dropped``, not kept.

Out-of-dialog requests other than INVITE (MESSAGE, OPTIONS, SUBSCRIBE...)
are recorded only when the proxy forwarded them and they failed, which
is known only once they are answered; until then their messages wait in
a small buffer of their own (:meth:`RecentCalls.hold`: the latest
:data:`PENDING_CALLS` Call-IDs, at most 1/:data:`PENDING_SHARE` of the byte
budget), and become the ladder of the entry their record starts.  The rest
(an OPTIONS ping answered by the proxy itself, a MESSAGE delivered) leaves
that buffer as newer ones arrive, without ever taking a call's place.

A message already captured with the same bytes, peer and direction is a
retransmission (§17.1.1.2 Timer A, §17.2.1 the server's 2xx resent): it
is kept, marked.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from sipproxy.calls.record import CallRecord

__all__ = [
    "CALL_SHARE",
    "MAX_MESSAGES_PER_CALL",
    "MESSAGE_OVERHEAD",
    "PENDING_CALLS",
    "PENDING_MESSAGES",
    "PENDING_SHARE",
    "RECORD_COST",
    "CallEntry",
    "CapturedMessage",
    "RecentCalls",
]

MESSAGE_OVERHEAD = 300
"""Bytes counted per captured message besides its own: the object, its list slot, its retransmission key."""

RECORD_COST = 600
"""Bytes counted per call record (the record and its strings), plus :data:`BRANCH_COST` per branch."""

BRANCH_COST = 300

ENTRY_COST = 400
"""Bytes counted per entry: the entry, its dict slot, its Call-ID."""

CALL_SHARE = 8
"""One call's messages may take at most 1/CALL_SHARE of the byte budget."""

MAX_MESSAGES_PER_CALL = 500

PENDING_CALLS = 64
"""Call-IDs of out-of-dialog non-INVITE requests whose messages are held until their outcome is known."""

PENDING_SHARE = 16
"""The held messages may take at most 1/PENDING_SHARE of the byte budget."""

PENDING_MESSAGES = 16
"""Messages held per Call-ID at most (a request, its forwarded copy, the responses, a few retransmissions)."""


class CapturedMessage(NamedTuple):
    """One message as it crossed the transport: raw bytes, when, which way, and the peer.

    A named tuple: built for every message of a recent call, on the fast
    path (a frozen dataclass costs several times as much to build).
    """

    at: float
    incoming: bool
    """True: from ``host:port`` to us; False: from us to it."""
    transport: str
    host: str
    port: int
    data: bytes
    retransmission: bool = False


@dataclass(eq=False)
class CallEntry:
    """One Call-ID's records and messages."""

    call_id: str
    created: float
    records: list[CallRecord] = field(default_factory=list)
    messages: list[CapturedMessage] = field(default_factory=list)
    size: int = ENTRY_COST
    message_bytes: int = 0
    dropped: int = 0
    """Messages seen but not kept (the per-call bounds)."""
    seen: set[int] = field(default_factory=set)

    @property
    def record(self) -> CallRecord | None:
        """The record that says what became of the call: the last out-of-dialog one, else the last one."""
        for record in reversed(self.records):
            if not record.in_dialog:
                return record
        return self.records[-1] if self.records else None

    def is_about(self, aor: str) -> bool:
        return any(aor in record.aors for record in self.records)


class RecentCalls:
    """The ring (see the module docstring); also the :data:`~sipproxy.calls.CallObserver` that fills it."""

    def __init__(self, max_calls: int = 200, max_bytes: int = 4 << 20) -> None:
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, CallEntry] = OrderedDict()
        self.size = 0
        """Bytes counted for every entry kept."""
        self.evicted = 0
        """Entries dropped to stay within the bounds since start."""
        self.pending: OrderedDict[str, list[CapturedMessage]] = OrderedDict()
        """Messages of out-of-dialog non-INVITE requests not (yet) recorded, by Call-ID (see the module docstring)."""
        self.pending_bytes = 0
        self._subscribers: list[Callable[[CallEntry], None]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[CallEntry]:
        """Newest first."""
        return reversed(list(self.entries.values()))

    # -- filling ------------------------------------------------------------

    def __call__(self, record: CallRecord) -> None:
        """A finished call from the proxy: into its entry (a new one if its messages were not captured)."""
        entry = self.entries.get(record.call_id)
        if entry is None:
            entry = self.start(record.call_id, record.started)
            for message in self._release(record.call_id):
                self.add(entry, message)
        entry.records.append(record)
        cost = RECORD_COST + BRANCH_COST * len(record.branches)
        entry.size += cost
        self.size += cost
        self._shrink(keep=entry)
        if record.call_id in self.entries:
            for subscriber in list(self._subscribers):
                subscriber(entry)

    def start(self, call_id: str, now: float) -> CallEntry:
        """A new entry for ``call_id`` (the oldest ones make room)."""
        entry = CallEntry(call_id, now)
        self.entries[call_id] = entry
        self.size += entry.size
        self._shrink(keep=entry)
        return entry

    def add(self, entry: CallEntry, message: CapturedMessage) -> None:
        """``message`` into ``entry``, marked as a retransmission when the same bytes already passed that way."""
        cost = len(message.data) + MESSAGE_OVERHEAD
        budget = self.max_bytes
        if (
            len(entry.messages) >= MAX_MESSAGES_PER_CALL
            or (entry.message_bytes + cost) * CALL_SHARE > budget
            or self.entries.get(entry.call_id) is not entry
        ):
            entry.dropped += 1
            return
        key = hash((message.incoming, message.host, message.port, message.data))
        seen = entry.seen
        if key in seen:
            message = message._replace(retransmission=True)
        else:
            seen.add(key)
        entry.messages.append(message)
        entry.message_bytes += cost
        entry.size += cost
        self.size += cost
        if self.size > budget:
            self._shrink(keep=entry)

    def hold(self, call_id: str, message: CapturedMessage) -> None:
        """Hold ``message`` of a request whose outcome decides whether it is a call (the oldest held go first)."""
        held = self.pending.get(call_id)
        if held is None:
            held = self.pending[call_id] = []
        elif len(held) >= PENDING_MESSAGES:
            return
        held.append(message)
        self.pending_bytes += len(message.data) + MESSAGE_OVERHEAD
        budget = self.max_bytes // PENDING_SHARE
        while len(self.pending) > PENDING_CALLS or (self.pending_bytes > budget and len(self.pending) > 1):
            _, dropped = self.pending.popitem(last=False)
            self.pending_bytes -= sum(len(m.data) + MESSAGE_OVERHEAD for m in dropped)

    def _release(self, call_id: str) -> list[CapturedMessage]:
        held = self.pending.pop(call_id, None)
        if held is None:
            return []
        self.pending_bytes -= sum(len(m.data) + MESSAGE_OVERHEAD for m in held)
        return held

    def _shrink(self, keep: CallEntry) -> None:
        """Drop the oldest entries until both bounds hold; ``keep`` (the one just added to) stays.

        A budget smaller than one call keeps that call alone.
        """
        while len(self.entries) > 1 and (
            len(self.entries) > self.max_calls or (self.max_bytes > 0 and self.size > self.max_bytes)
        ):
            entries = iter(self.entries.items())
            call_id, oldest = next(entries)
            if oldest is keep:
                call_id, oldest = next(entries)
            del self.entries[call_id]
            self.size -= oldest.size
            self.evicted += 1

    # -- reading ------------------------------------------------------------

    def get(self, call_id: str) -> CallEntry | None:
        return self.entries.get(call_id)

    def calls(self, aor: str | None = None, call_id: str | None = None) -> list[CallEntry]:
        """Entries with a record, newest first; ``aor`` keeps those about that address, ``call_id`` that one."""
        if call_id is not None:
            entry = self.entries.get(call_id)
            found = [entry] if entry is not None and entry.records else []
        else:
            found = [entry for entry in self if entry.records]
        if aor is not None:
            found = [entry for entry in found if entry.is_about(aor)]
        return found

    def subscribe(self, subscriber: Callable[[CallEntry], None]) -> Callable[[], None]:
        """Call ``subscriber`` with the entry of every record added; returns the unsubscribe function."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe
