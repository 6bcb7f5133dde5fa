# -*- test-case-name: tests.test_location_redis -*-
"""The Redis backend: one location store shared by several sipproxy nodes (``--store redis://...``).

Each node keeps its own :class:`BindingIndex` as its view, so that lookups
(every INVITE) stay local and never wait for Redis; Redis holds the truth
and tells every node what changed.

Keys (in the database the URL names; ``sipproxy:`` in front of each):

``aor:<aor>``
    a hash per address-of-record: one field per contact, holding the binding
    (``redis_codec``: JSON, ``expires_at`` first, the writing node last),
    and the field ``""`` (no contact is empty) holding the AOR's change
    number. Deleted with its last binding.
``expiries``
    a sorted set: each AOR hash's name, scored by its earliest ``expires_at``.
``seq``
    the change counter: every change of any AOR takes the next number.
``secret``
    the server secret (nonces, Record-Route dialog tokens), set once with
    ``SET NX`` by the first node that starts, read by every other.
channel ``sipproxy:<db>:changes``
    the change feed: each change's state (``redis_scripts``: node, change
    number, AOR, events, every binding the AOR holds now).

How it works:

- A REGISTER's change (:meth:`update`) is planned against the view
  (:meth:`BindingIndex.plan`: the same §10.3 step 7 rules and reasons as
  SQLite), sent as one ``UPDATE`` script, compare-and-set per contact (each
  contact must still hold what the node saw), and applied to the view at
  once; :meth:`when_durable` answers when Redis has replied. A refusal
  (another node changed the contact first) makes it ``False`` (the
  registrar answers 500, the phone retries) and the view takes what Redis
  holds; so does a write whose reply never came (after the reconnect).
- The feed: every node (the writer too) applies each state to its view, in
  Redis's order, skipping states older than what it already has for that
  AOR.  While a change of its own to an AOR is on its way, or Redis has
  accepted a newer one than the feed has brought, the view already holds
  more than the state: it is kept (a phone's next REGISTER is planned on
  it), the state's events are still told, and another node's state passed
  over meanwhile is read back once ours is answered. Events go to subscribers from the feed, so every node's page sees
  every change with its reason; :meth:`subscribe_local` hears only the
  changes this node made, so the node that handled the REGISTER is the one
  that logs it.
- Start-up and every reconnect: subscribe first, then a full load
  (``LOAD``, a page of 1,000 AORs per round trip); REGISTERs get 503 until
  it is done. Changes made meanwhile arrive on the feed and win over the
  load where newer.
- Redis unreachable: :meth:`update` raises ``SipError(503)`` with
  ``Retry-After`` (never a 200 for what was not stored), ``/healthz`` says
  why (:attr:`storage_problem`), lookups go on from the view, bindings
  still leave the view at their expiry, and the link reconnects with
  backoff (``redis_link``), then loads everything again.
- Expiry: every node's view drops a binding at its deadline. In Redis, the
  ``REAP`` script, run by every node each second, removes due bindings
  after re-reading them (a binding refreshed meanwhile has a later expiry
  and stays), so nodes never delete each other's fresh contacts; the node
  whose script removed it publishes the ``expired`` event, and it alone
  logs it. Node clocks must agree (NTP): expiries are absolute times.

What a 200 guarantees (Redis replies once the change is in its memory and
written to its append-only file, if any): with ``appendonly yes`` and
``appendfsync always``, the change is on disk before the reply, so no
binding that got a 200 is lost even if the machine loses power; with
``everysec`` (Redis's default for the AOF) a crash of Redis alone loses
nothing (the file was written), a power failure up to about a second of
changes; with ``no``, whatever the OS had not flushed (up to ~30 s on
Linux); without the AOF (snapshots only), everything since the last
snapshot. A Redis replica promoted by failover may lack the last changes
(replication is asynchronous). Phones re-register within their expiry, so
what is lost comes back at the next refresh.

Not for Redis Cluster: the scripts touch keys they do not declare (the
expiry set leads to the AOR hashes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sipproxy.errors import SipError
from sipproxy.location.binding import Binding
from sipproxy.location.events import Subscribers
from sipproxy.location.index import BindingIndex
from sipproxy.location.interface import BindingEvent, Reason
from sipproxy.location.redis_codec import (
    State,
    dumps,
    encode,
    events_json,
    expiry_token,
    field,
    parse_state,
    parse_states,
)
from sipproxy.location.redis_link import ConnectionError, RedisLink
from sipproxy.location.redis_scripts import LOAD, READ, REAP, UPDATE
from sipproxy.location.redis_url import RedisAddress
from sipproxy.net import is_reliable

__all__ = ["PREFIX", "RETRY_AFTER", "RedisLocation", "RedisStoreService"]

log = Logger(namespace="sipproxy.location")

PREFIX = b"sipproxy:"
RETRY_AFTER = 5
"""Seconds a REGISTER refused while Redis is unreachable is told to wait (the reconnect backoff's longest)."""
LOAD_PAGE = 1000
REAP_BATCH = 200


class RedisLocation:
    """The location service over a shared Redis: a local view, Redis's change feed, and Redis deciding."""

    def __init__(
        self,
        clock: Any,
        address: RedisAddress,
        node: str,
        *,
        on_callback_error: Callable[[BindingEvent, Exception], None] | None = None,
        reap_interval: float = 1.0,
    ) -> None:
        """``node`` names this node in the feed and in each binding it writes (unique per process)."""
        self._clock = clock
        self.address = address
        self.node = node
        self._node_json = json.dumps(node)
        self.where = address.display()
        """Where the bindings are kept, as the start-up log says it (no password)."""
        self._index = BindingIndex(clock, self._due)
        self._subscribers = Subscribers(on_callback_error)
        self._local = Subscribers(on_callback_error)
        self._holders: dict[tuple[str, str], str] = {}
        self._seen: dict[str, int] = {}
        """Per AOR, the change number its view holds (a state not newer is skipped)."""
        self._writing: dict[str, int] = {}
        """Per AOR, this node's changes sent and not yet answered: its view is ahead of what the feed brings."""
        self._ahead: dict[str, int] = {}
        """Per AOR, the number of our last change Redis accepted, while the feed has not brought it yet."""
        self._missed: set[str] = set()
        """AORs for which another node's state was not applied while a change of ours was on its way."""
        self._epoch: list[Deferred[bool]] = []
        """The writes since the last :meth:`when_durable`."""
        self._inflight = 0
        self._last: Deferred[bool] | None = None
        self._loaded = False
        self._loading = False
        self._restored = False
        self._closed = False
        self.last_commit_failed = False
        self._channel = b"sipproxy:%d:changes" % address.db
        self._zset = PREFIX + b"expiries"
        self._seq_key = PREFIX + b"seq"
        self._link = RedisLink(clock, address, self._channel, self._feed, self._up, self._down)
        self._reaper = LoopingCall(self._reap)
        self._reaper.clock = clock
        self._reap_interval = reap_interval
        self.loads = 0
        """Full loads done (start-up, then one per reconnect)."""
        self.reach_here: Callable[[Binding], str] | None = None
        """For a binding on one of this node's connections: the Path URI other nodes reach it through (wiring)."""
        self._when_loaded: list[Callable[[], None]] = []

    # -- health ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Connected, subscribed and loaded: changes are accepted."""
        return self._link.up and self._loaded and not self._closed

    @property
    def storage_problem(self) -> str | None:
        """Why the store does not accept changes, one line (``/healthz``); ``None`` while it does."""
        if self._closed:
            return "the location service is closed"
        if not self._link.up:
            return self._link.problem or f"Redis at {self.where} unreachable"
        if not self._loaded:
            return f"loading the bindings from Redis at {self.where}"
        if self.last_commit_failed:
            return f"the last write to Redis at {self.where} failed"
        return None

    # -- lifecycle ------------------------------------------------------------------------

    def restore(self) -> int:
        """Connect (the load follows once connected, asynchronously); return 0: nothing is loaded yet."""
        self._check_open()
        if not self._restored:
            self._restored = True
            self._link.start()
            self._reaper.start(self._reap_interval, now=False)
        return 0

    def flush(self) -> bool:
        """Writes go to Redis as they are made: whether none is still waiting for its reply."""
        return self._inflight == 0

    def close(self) -> Deferred[object]:
        """Stop reaping, cancel the expiry timer and close the connections; later changes raise ``RuntimeError``."""
        if self._closed:
            return succeed(None)
        self._closed = True
        if self._reaper.running:
            self._reaper.stop()
        self._index.close()
        return self._link.stop()

    # -- reads ----------------------------------------------------------------------------

    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of ``aor``, highest q first, then most recently refreshed first (RFC 3261 §16.6)."""
        return self._index.lookup(aor)

    def get(self, aor: str, contact: str) -> Binding | None:
        return self._index.get(aor, contact)

    def aors(self) -> list[str]:
        return self._index.aors()

    def all_bindings(self) -> list[Binding]:
        return self._index.all_bindings()

    def count(self) -> int:
        return self._index.count()

    def aor_count(self) -> int:
        return self._index.aor_count()

    def holder(self, aor: str, contact: str) -> str | None:
        """The node that wrote the binding: the one holding its connection, for TCP, TLS and WS bindings."""
        if self._index.get(aor, contact) is None:
            return None
        return self._holders.get((aor, contact))

    def own_bindings(self) -> list[Binding]:
        """The live bindings this node wrote (for TCP, TLS and WS: the ones on its own connections)."""
        node = self.node
        return [b for b in self._index.all_bindings() if self._holders.get((b.aor, b.contact)) == node]

    def when_loaded(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, after the first full load (the start-up's ``restore`` is asynchronous here)."""
        self._when_loaded.append(callback)

    # -- changes --------------------------------------------------------------------------

    def update(self, aor: str, put: Iterable[Binding] = (), remove: Iterable[str] = ()) -> None:
        """Apply one REGISTER's outcome (RFC 3261 §10.3 step 7); ``SipError(503)`` while Redis is unreachable."""
        self._change(aor, put, remove, None)

    def remove(self, aor: str, contact: str, *, reason: Reason = "removed") -> bool:
        existed = self._index.get(aor, contact) is not None
        self._change(aor, (), (contact,), reason)
        return existed

    def remove_aor(self, aor: str, *, reason: Reason = "removed") -> int:
        contacts = [b.contact for b in self._index.lookup(aor)]
        self._change(aor, (), contacts, reason)
        return len(contacts)

    def subscribe(self, callback: Callable[[BindingEvent], None]) -> Callable[[], None]:
        """Every change, this node's and the others', as the feed delivers it."""
        return self._subscribers.subscribe(callback)

    def subscribe_local(self, callback: Callable[[BindingEvent], None]) -> Callable[[], None]:
        """The changes this node made (its REGISTERs, its removals, the expiries its reaper removed): the log's."""
        return self._local.subscribe(callback)

    def subscribe_held(self, callback: Callable[[BindingEvent], None]) -> Callable[[], None]:
        """The changes as this node's connections see them: a binding another node holds counts as removed here.

        For the transport's registered flows (``RegisteredFlows``): only a
        binding written here is on one of this node's connections.
        """

        def held(event: BindingEvent) -> None:
            b = event.binding
            if event.kind in ("added", "refreshed") and self._holders.get((b.aor, b.contact)) != self.node:
                event = BindingEvent("removed", b, event.reason)
            callback(event)

        return self._subscribers.subscribe(held)

    def when_durable(self, callback: Callable[[bool], None]) -> None:
        """``callback(True)`` once Redis accepted every change since the last call, ``False`` if one was not."""
        epoch, self._epoch = self._epoch, []
        if not epoch:
            if self._last is None:
                callback(True)
                return
            epoch = [self._last]  # an earlier change still on its way: "so far" includes it
        gathered = DeferredList(epoch, consumeErrors=True)
        gathered.addCallback(lambda results: callback(all(ok and value for ok, value in results)))

    def _change(self, aor: str, put: Iterable[Binding], remove: Iterable[str], removed_as: Reason | None) -> None:
        self._check_open()
        commands = self._link.commands
        if commands is None or not self._loaded:
            raise SipError(503, "Location service unavailable", [("Retry-After", str(RETRY_AFTER))])
        now = self._clock.seconds()
        change = self._index.plan(aor, put, remove, removed_as)
        if not change.stored and not change.dropped:
            return
        args: list[bytes | str | int] = [
            self._channel,
            self._node_json,
            dumps(aor),
            events_json(change.events, self.node),
            repr(now),
            len(change.stored),
        ]
        for binding in change.stored:
            args += [
                field(binding.contact),
                encode(binding, self.node, self._via(binding)),
                expiry_token(self._index.get(aor, binding.contact)),
            ]
        for binding in change.dropped:
            args += [field(binding.contact), expiry_token(binding)]
        try:
            written: Deferred[bool] = commands.eval(
                UPDATE, [PREFIX + b"aor:" + field(aor), self._zset, self._seq_key], args
            )
        except ConnectionError:  # lost this very moment: the link hears it next
            raise SipError(503, "Location service unavailable", [("Retry-After", str(RETRY_AFTER))]) from None
        self._inflight += 1
        self._writing[aor] = self._writing.get(aor, 0) + 1
        written.addCallbacks(self._written, self._write_failed, callbackArgs=(aor,), errbackArgs=(aor,))
        self._epoch.append(written)
        self._last = written
        written.addBoth(self._settled, written)
        self._index.apply(change)
        for binding in change.dropped:
            self._holders.pop((binding.aor, binding.contact), None)
        for binding in change.stored:
            self._holders[binding.aor, binding.contact] = self.node

    def _via(self, binding: Binding) -> str:
        """RFC 3327 Path through this node, for a binding on one of its connections (none behind an edge proxy)."""
        if self.reach_here is None or binding.path or not binding.source_host or not is_reliable(binding.transport):
            return ""
        return self.reach_here(binding)

    def _as_seen(self, binding: Binding, node: str, via: str) -> Binding:
        """The binding as this node routes to it: through the node holding its connection, when that is another."""
        if via and node != self.node and not binding.path:
            return replace(binding, path=(via,))
        return binding

    def _settled(self, result: object, written: Deferred[bool]) -> object:
        self._inflight -= 1
        if self._last is written:
            self._last = None
        return result

    def _answered(self, aor: str) -> bool:
        """One change of ours to ``aor`` is answered; return whether none is left on its way."""
        left = self._writing.get(aor, 0) - 1
        if left > 0:
            self._writing[aor] = left
            return False
        self._writing.pop(aor, None)
        return True

    def _written(self, reply: int | bytes, aor: str) -> bool:
        last = self._answered(aor)
        if isinstance(reply, int):  # the change number: written (the feed brings the state)
            self.last_commit_failed = False
            if reply > self._seen.get(aor, 0):
                self._ahead[aor] = max(reply, self._ahead.get(aor, 0))
            if last and aor in self._missed:  # another node's change passed by meanwhile: read the AOR back
                self._missed.discard(aor)
                self._reread(aor)
            return True
        state = parse_state(reply)
        log.warn(
            "Another node changed {aor} first; the REGISTER is refused and the view takes what Redis holds",
            aor=state.aor,
        )
        self._settle_view(state)
        return False

    def _write_failed(self, failure: Any, aor: str) -> bool:
        self._answered(aor)
        self.last_commit_failed = True
        log.error(
            "Writing {aor} to Redis failed ({error}); the view is reloaded from Redis",
            aor=aor,
            error=failure.getErrorMessage(),
        )
        self._reread(aor)
        return False

    def _reread(self, aor: str) -> None:
        """Read ``aor`` back from Redis into the view (a refusal's state, a failed write, a missed change)."""
        commands = self._link.commands
        if commands is not None:  # the link is up (else the reload after the reconnect does it)
            read = commands.eval(READ, [PREFIX + b"aor:" + field(aor)], [self._node_json, json.dumps(aor)])
            read.addCallback(lambda reply: self._settle_view(parse_state(reply)))
            read.addErrback(lambda _: None)  # the link is going down: the reload after the reconnect does it

    def _settle_view(self, state: State) -> None:
        """Take what Redis holds for an AOR unless a change of ours is on its way (then read it again after)."""
        if self._writing.get(state.aor) or state.seq < self._ahead.get(state.aor, 0):
            self._missed.add(state.aor)
        elif state.seq >= self._seen.get(state.aor, 0):
            self._missed.discard(state.aor)
            self._take(state, events=None)

    # -- the feed -------------------------------------------------------------------------

    def _feed(self, message: bytes) -> None:
        try:
            state = parse_state(message)
        except (ValueError, KeyError, TypeError):
            log.error("Ignoring a message on the change feed that is not a state: {message!r}", message=message[:200])
            return
        if state.seq <= self._seen.get(state.aor, 0):
            return
        if state.seq >= self._ahead.get(state.aor, 0):
            self._ahead.pop(state.aor, None)
        if self._writing.get(state.aor) or state.aor in self._ahead:
            # the view already holds a later change of ours: keep it, tell the events
            self._seen[state.aor] = state.seq
            if state.node != self.node:
                self._missed.add(state.aor)
            self._tell(state.node, state.events)
            return
        self._take(state, events=state.events)

    def _take(self, state: State, events: list[BindingEvent] | None) -> None:
        """Make the view of ``state.aor`` what ``state`` says; tell ``events``, or the difference when ``None``."""
        aor = state.aor
        self._seen[aor] = state.seq
        now = self._clock.seconds()
        truth = {
            b.contact: (self._as_seen(b, node, via), node) for b, node, via in state.bindings if b.expires_at > now
        }
        held = {b.contact: b for b in self._index.lookup(aor)}
        plan = self._index.plan(aor, [b for b, _ in truth.values()], [c for c in held if c not in truth])
        self._index.apply(plan)
        for contact in held:
            if contact not in truth:
                self._holders.pop((aor, contact), None)
        for contact, (_, node) in truth.items():
            self._holders[aor, contact] = node
        if events is None:
            events = [BindingEvent(e.kind, e.binding, "reloaded") for e in plan.events if _changed(e, held)]
            self._subscribers.emit(events)
            return
        self._tell(state.node, events)

    def _tell(self, node: str, events: list[BindingEvent]) -> None:
        """A change's events: to every subscriber, and to the local ones when this node made it."""
        self._subscribers.emit(events)
        if node == self.node:
            self._local.emit(events)

    # -- connecting and loading -----------------------------------------------------------

    def _up(self) -> None:
        self._seen = {}  # a new connection, maybe to a Redis that restarted: its numbers start over
        self._missed, self._ahead = set(), {}  # the full load reads everything
        log.info("Location service: connected to Redis at {where}; loading the bindings", where=self.where)
        self._load()

    def _down(self, problem: str) -> None:
        self._loaded = False
        self.last_commit_failed = False
        log.error(
            "Location service: {problem}; REGISTERs get 503, calls route from the {count} bindings held here",
            problem=problem,
            count=self._index.count(),
        )

    @inlineCallbacks
    def _load(self) -> Any:
        commands = self._link.commands
        if commands is None or self._loading:
            return
        self._loading = True
        started, first = self._clock.seconds(), self.loads == 0
        cursor: bytes = b"0"
        loaded: list[tuple[int, list[tuple[Binding, str, str]]]] = []
        try:
            while True:
                cursor, page = yield commands.eval(LOAD, [], [cursor, PREFIX + b"aor:*", LOAD_PAGE])
                loaded += parse_states(page)
                if cursor == b"0":
                    break
        except Exception as error:  # the link went down, or the reply timed out: reconnect, then load again
            log.warn("Loading the bindings from Redis failed ({error}); again after the reconnect", error=error)
            if self._link.commands is commands:
                commands.transport.abortConnection()
            return
        finally:
            self._loading = False
        if commands is not self._link.commands:
            return
        self._apply_load(loaded, quiet=first)
        self._loaded = True
        self.loads += 1
        count = self._index.count()
        log.info(
            "Loaded {count} {bindings} from Redis at {where} in {seconds:.2f} s",
            count=count,
            bindings="binding" if count == 1 else "bindings",
            where=self.where,
            seconds=self._clock.seconds() - started,
        )
        waiting, self._when_loaded = self._when_loaded, []
        for callback in waiting:
            try:
                callback()
            except Exception:
                log.failure("A when_loaded() callback failed")

    def _apply_load(self, loaded: list[tuple[int, list[tuple[Binding, str, str]]]], quiet: bool) -> None:
        """The view becomes what was loaded, except AORs the feed brought newer news of during the load.

        The change numbers are compared only within one connection: a Redis
        that restarted empty (no append-only file) counts from 1 again.
        """
        seen, holders = self._seen, self._holders
        truth: list[Binding] = []
        loaded_aors: set[str] = set()
        for seq, bindings in loaded:
            aor = bindings[0][0].aor
            loaded_aors.add(aor)
            if seq > seen.get(aor, 0):
                seen[aor] = seq
                for binding, node, via in bindings:
                    truth.append(self._as_seen(binding, node, via))
                    holders[binding.aor, binding.contact] = node
            else:
                truth += self._index.lookup(aor)
        for aor in self._index.aors():  # AORs the feed created during the load
            if aor not in loaded_aors and aor in seen:
                truth += self._index.lookup(aor)
        events = self._index.replace(truth)
        live = {(b.aor, b.contact) for b in truth}
        self._holders = {key: node for key, node in holders.items() if key in live}
        present = {b.aor for b in truth}
        self._seen = {aor: seq for aor, seq in seen.items() if aor in present}
        if not quiet:
            self._subscribers.emit(events)

    # -- expiry ---------------------------------------------------------------------------

    def _due(self, due: list[Binding]) -> None:
        """The view dropped ``due`` at their deadline; Redis's copies go with the next reap (and its events)."""
        for binding in due:
            self._holders.pop((binding.aor, binding.contact), None)

    def _reap(self) -> None:
        commands = self._link.commands
        if commands is None or not self._loaded:
            return
        reaped = commands.eval(
            REAP,
            [self._zset, self._seq_key],
            [self._channel, self._node_json, repr(self._clock.seconds()), REAP_BATCH, PREFIX + b"aor:"],
        )
        reaped.addErrback(
            lambda failure: log.debug("Reaping expired bindings failed: {f}", f=failure.getErrorMessage())
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("location store is closed")


def _changed(event: BindingEvent, held: dict[str, Binding]) -> bool:
    """Whether a reconciling event changes what the view held (a ``refreshed`` to the same binding does not)."""
    return not (event.kind == "refreshed" and held.get(event.binding.contact) == event.binding)


class RedisStoreService(MultiService):
    """Connects the Redis store at start-up (its load follows); closes it at shutdown, once its children stopped.

    The children are what must run around the store's life, as for
    :class:`~sipproxy.location.services.StoreService` (the binding history's
    writer, the restart's dropping of this node's lost flows).
    """

    def __init__(self, store: RedisLocation) -> None:
        super().__init__()
        self.store = store

    def startService(self) -> None:
        self.store.restore()
        log.info("Location service: Redis at {where}, node {node}", where=self.store.where, node=self.store.node)
        super().startService()

    def stopService(self) -> Deferred[object]:
        def close(result: object) -> object:
            return self.store.close()

        return maybeDeferred(super().stopService).addBoth(close)
