"""The location service (RFC 3261 §10.3): bindings, their expiry and where they are kept.

Registrar, proxy, security and web see only :class:`LocationService`
(``interface.py``); wiring alone picks a backend and drives its lifecycle
(:class:`LocationBackend`: restore, flush, close).

Modules, by job:

- ``binding.py``: the :class:`Binding` value;
- ``interface.py``: :class:`LocationService`, :class:`BindingEvent` and
  the reasons a binding changes;
- ``index.py``: a process's view of the bindings (AOR -> contact ->
  binding), the §10.3 step 7 change planning and the expiry heap with its
  one timer;
- ``commit.py``: group commit, one batch per reactor turn, the
  ``when_durable`` waiters, reload after a lost batch;
- ``events.py``: delivering events to subscribers in one order;
- ``store.py``: :class:`LocationStore`, the view over a journal that
  decides; ``memory.py`` (:class:`MemoryLocation`, ``--db :memory:`` and
  tests) and ``sqlite.py`` (:class:`SQLiteLocation`, the default) are its
  two backends;
- ``log.py``: the operator's log line per registration change;
  ``services.py``: the Twisted services wiring runs (restore at start-up,
  close at shutdown, WAL checkpoints in a thread).

How a shared backend (Redis, several hosts) plugs in
----------------------------------------------------

It implements :class:`LocationBackend` itself, next to
:class:`LocationStore`, from the same parts; registrar and proxy do not
change, because nothing they call assumes the bindings live in this process:

- The bindings live in Redis. Each node keeps a :class:`BindingIndex` as
  its view, filled by ``restore()`` from Redis and kept current from Redis's
  change feed: a change made by another node goes through
  ``index.apply()`` and then to the node's :class:`Subscribers`, so the
  page, the binding log and the security's bound sources see it like a
  local one.
- ``update()`` plans the change against the view (:meth:`BindingIndex.plan`,
  the same §10.3 step 7 rules and reasons), sends it to Redis as one
  conditional transaction, and applies it to the view at once;
  ``when_durable()`` answers when Redis has replied. If Redis refused it
  (another node changed the AOR first) or the connection failed, the
  waiters hear ``False`` (the registrar answers 500, the phone retries) and
  the view is reloaded from Redis with :meth:`BindingIndex.replace`, as
  :class:`GroupCommit` does after a lost SQLite batch. The truth is Redis;
  the view is never more than what it accepted.
- Expiry: the index's timer drops due bindings from the view on every
  node; only the backend decides what that does to Redis (key expiry there
  makes it nothing), through the index's ``on_due`` callback.
- ``last_commit_failed`` reports Redis's health to ``/healthz``.
"""

from __future__ import annotations

from sipproxy.location.binding import Binding
from sipproxy.location.events import Subscribers
from sipproxy.location.index import BindingIndex
from sipproxy.location.interface import BindingEvent, EventKind, LocationBackend, LocationService, Reason
from sipproxy.location.memory import MemoryLocation
from sipproxy.location.sqlite import SQLiteLocation, SQLitePersistence
from sipproxy.location.store import LocationStore

__all__ = [
    "Binding",
    "BindingEvent",
    "BindingIndex",
    "EventKind",
    "LocationBackend",
    "LocationService",
    "LocationStore",
    "MemoryLocation",
    "Reason",
    "SQLiteLocation",
    "SQLitePersistence",
    "Subscribers",
]
