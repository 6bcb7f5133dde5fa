# -*- test-case-name: tests.test_security -*-
"""Authentication and abuse limits in the running server: the glue between ``sipproxy.auth`` and the stack.

``sipproxy.auth`` is pure (digest, users file, failure and rate counters);
this module decides *when* they apply and answers for them:

- :meth:`Security.registrar_hook` is the registrar's §10.3 step 3: a REGISTER
  without valid credentials gets ``401`` with one ``WWW-Authenticate`` per
  algorithm (SHA-256 first, then MD5; ``qop="auth"``); a valid one returns
  the user name and the registrar checks step 4 (403 unless the user owns
  the To address-of-record).
- :meth:`Security.proxy_hook` is the proxy's §16.3 step 6 (see "Which
  requests the proxy challenges" below): ``407`` with ``Proxy-Authenticate``,
  then ``403`` when the From user is not the authenticated user.
- :class:`Guard` runs first, in the transport, for every message before the
  transaction layer creates any state (see "Limits" below).

Which requests the proxy challenges (with ``--users``):

- never ACK (it has no response) or CANCEL (it cannot be resubmitted with
  credentials, RFC 3261 §22.1): both belong to an INVITE that was challenged;
- never an in-dialog request, defined here as one whose To has a tag *and*
  whose top Route is the Record-Route we placed when the dialog was created:
  no user part, our host and port, and a ``dt`` parameter equal to
  :meth:`Security.dialog_token` of the request's Call-ID (an HMAC with the
  server's secret, so nobody can write such a Route for a dialog we did not
  record-route).  Anything else is treated as out-of-dialog.  The secret is
  kept in the SQLite database (``--db``), so dialogs survive a restart; with
  ``--db :memory:`` it is made at start-up and, after a restart, in-dialog
  requests of older dialogs from our users are challenged once;
- a request whose From host is one of our domains: always challenged (407);
- a request from another domain to one of ours (Request-URI is us): never
  challenged -- that is how other domains call our users;
- a request from another domain to another domain (relaying): challenged,
  and since its From cannot match an authenticated user of ours, refused
  (403) -- we are no open relay.

An authenticated request has our realm's ``Proxy-Authorization`` removed
before it is forwarded (RFC 3261 §22.3: credentials for our realm are ours
to consume); values for other realms are forwarded untouched.

Unknown users get exactly the challenge known users get (the challenge never
depends on the user name) and cost the same work to reject.

Failures and blocks: credentials that are present but wrong (wrong password,
unknown user, malformed, unsupported algorithm) count as one failure for the
source address and one for the claimed user name.  Not failures: no
credentials at all (just a challenge), credentials for another realm (a
challenge), a stale nonce or a replayed nonce-count with a right digest, and a
nonce from before a restart with a right digest (a fresh challenge with
``stale=true``).  A success does not erase failures (else a guesser holding
one account could interleave logins); they age out after ``failure_window``.

- ``max_failures`` failures of one source address within ``failure_window``
  seconds block it for ``block_for`` seconds (``max_failures * bound_factor``
  while it holds an authenticated binding: an office NAT with one
  misconfigured phone must not lock the office out).  Its requests are
  answered ``403 Forbidden (blocked)`` statelessly, the first
  ``reply_burst`` of them and then ``reply_burst`` per ``block_for``
  seconds; the rest are dropped silently, so that a scanner hears nothing and
  gives up (svcrack goes on as long as it gets answers, even 403s).
- ``max_failures`` failures for one user name (from any addresses) block the
  name: requests with credentials for it get 403 without being checked,
  except from an address that holds one of that user's bindings (so guessing
  bob's password does not lock out bob's registered phones).

Blocks start, and rate limits first bite, with a warning in the log (fields:
``key``, ``host``, ``port``, ``user``, ``reason``...); each failure is logged
at info level.

Nonces are signed with that secret (``os.urandom(32)`` the first time).
They are valid only until the server restarts, whether the secret was kept or
not (the nonce-count replay table lives in memory, so nonces issued before the
start are stale); after a restart each phone is asked once more
(``stale=true``, no password prompt).

Limits (:class:`Guard`), checked in this order for each message as it
arrives, before the transaction layer:

1. blocked source address (failed authentications): requests get ``403``
   (a few, as above) or are dropped; responses pass.
2. request rate per source address (token bucket: ``rate`` per second, a
   burst of ``burst``; both times ``bound_factor`` for an address holding an
   authenticated binding): over it, ``503 Service Unavailable`` with
   ``Retry-After`` (seconds until the bucket is full again) for at most
   ``reply_burst`` requests and then ``reply_rate`` per second, the rest
   dropped.  Unparseable messages count against the rate
   too and are dropped (no 400) when over it.
3. message size: a request larger than ``max_message_size`` bytes gets
   ``513 Message Too Large``; a larger response is dropped.
4. transactions in flight: a new request (not ACK or CANCEL) while
   ``max_transactions`` server transactions exist gets ``503`` with
   ``Retry-After``.  A retransmission of a request whose transaction exists
   is answered so too (under overload only).

IPv6 sources are counted per /64 (one host usually has the whole prefix).
ACK is never answered.  Each refused request counts in ``sip_blocked_requests``
with reason ``auth``, ``rate``, ``size`` or ``transactions``; failed
authentications in ``sip_auth_failures``.  Bindings per address-of-record
(``--max-contacts``, 403) and TCP connections per address (the transport
refuses the connection) are limited where they are made.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.logger import Logger

from sipproxy.auth import AuthResult, DigestAuthenticator, FailureTracker, RateLimiter, UserDB, compute_response
from sipproxy.auth.digest import parse_auth_params
from sipproxy.message import ParseError, Request, Response, SipURI, make_response
from sipproxy.metrics import Metrics
from sipproxy.proxy.routing import DIALOG_TOKEN_PARAM, LocalAddress, Locality
from sipproxy.randomness import random_hex, stable_tag
from sipproxy.transaction import Source

__all__ = [
    "DEFAULT_RATE",
    "Guard",
    "ReactorLag",
    "Reply",
    "Security",
    "SecuritySettings",
    "build_security",
    "source_key",
]

DEFAULT_RATE = 20.0
"""Requests per second per source address when ``--users`` is given and ``--rate-limit`` is not."""

_log = Logger(namespace="sipproxy.security")

Reply = Callable[[Response, Source], None]
"""Sends a stateless response straight back to where the request came from."""


class Clock(Protocol):
    def seconds(self) -> float: ...


class _Store(Protocol):
    """The part of :class:`sipproxy.location.LocationStore` used to know who holds a binding."""

    def all_bindings(self) -> list[Any]: ...

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]: ...


@dataclass(frozen=True)
class SecuritySettings:
    """Every knob, as a value.  ``rate=None`` turns the rate limit off."""

    realm: str = "localhost"
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    nonce_lifetime: float = 300.0
    max_failures: int = 10
    failure_window: float = 300.0
    block_for: float = 900.0
    rate: float | None = DEFAULT_RATE
    burst: float | None = None
    """Default: five seconds' worth of ``rate``."""
    bound_factor: float = 10.0
    """How much more a source holding an authenticated binding may send, and fail."""
    reply_rate: float = 1.0
    reply_burst: float = 5.0
    max_message_size: int = 65535
    max_transactions: int = 20000
    overload_retry_after: int = 5
    log_every: float = 60.0
    """At most one log line per source and kind of refusal in this many seconds."""

    def __post_init__(self) -> None:
        for name in ("nonce_lifetime", "failure_window", "block_for", "bound_factor", "reply_rate", "reply_burst"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.max_failures < 1 or self.max_message_size < 1 or self.max_transactions < 1:
            raise ValueError("max_failures, max_message_size and max_transactions must be positive")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be positive (or None for no limit)")
        if self.burst is not None and not self.burst > 0:
            raise ValueError("burst must be positive")

    @property
    def effective_burst(self) -> float:
        if self.burst is not None:
            return self.burst
        return max(1.0, (self.rate or 1.0) * 5)


@functools.lru_cache(maxsize=4096)
def source_key(host: str) -> str:
    """What limits count by: the IPv4 address, or the IPv6 /64 (``2001:db8::/64``)."""
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _request_address(request: Request) -> tuple[str, int]:
    """The address a request came from, read from its top Via.

    The transport stamps ``received`` whenever the packet's source differs
    from the Via's sent-by (RFC 3261 §18.2.1), so ``received`` or else the
    sent-by host is the packet's source.  Used where the hook is not given
    the source (the registrar's step 3).
    """
    via = request.top_via
    return (via.received or via.host_bare).strip("[]"), via.rport or via.port or 5060


def _aor_user(aor: str) -> str | None:
    """``sip:alice@example.test`` -> ``alice``."""
    _, _, rest = aor.partition(":")
    user, at, _ = rest.rpartition("@")
    return user if at else None


class BoundSources:
    """Which source addresses hold bindings, kept up to date from the location store's events.

    Built from ``all_bindings()`` the first time it is asked (after the
    store restored its bindings at start-up), then maintained from events.
    """

    def __init__(self, store: _Store) -> None:
        self._store = store
        self._where: dict[tuple[str, str], str] = {}
        self._aors: dict[str, Counter[str]] = {}
        self._ready = False
        store.subscribe(self._event)

    def _ensure(self) -> None:
        if self._ready:
            return
        self._ready = True
        self._where.clear()
        self._aors.clear()
        for binding in self._store.all_bindings():
            self._put(binding)

    def _event(self, event: Any) -> None:
        if not self._ready:
            return  # the first question rebuilds from the store, which includes this change
        if event.kind in ("added", "refreshed"):
            self._put(event.binding)
        else:
            self._drop(event.binding.aor, event.binding.contact)

    def _put(self, binding: Any) -> None:
        self._drop(binding.aor, binding.contact)
        if not binding.source_host:
            return
        key = source_key(binding.source_host)
        self._where[(binding.aor, binding.contact)] = key
        self._aors.setdefault(key, Counter())[binding.aor] += 1

    def _drop(self, aor: str, contact: str) -> None:
        key = self._where.pop((aor, contact), None)
        if key is None:
            return
        counts = self._aors[key]
        counts[aor] -= 1
        if counts[aor] <= 0:
            del counts[aor]
        if not counts:
            del self._aors[key]

    def holds_any(self, key: str) -> bool:
        self._ensure()
        return key in self._aors

    def holds_user(self, key: str, user: str) -> bool:
        self._ensure()
        return any(_aor_user(aor) == user for aor in self._aors.get(key, ()))


class _Throttle:
    """At most one event per key per ``every`` seconds (for log lines); bounded."""

    def __init__(self, every: float, max_keys: int = 10_000) -> None:
        self.every = every
        self.max_keys = max_keys
        self._last: OrderedDict[str, float] = OrderedDict()

    def __call__(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        self._last.pop(key, None)
        self._last[key] = now
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return True


def _in_dialog(request: Request) -> bool:
    """Does the request belong to a dialog (a To tag), as opposed to starting something new?"""
    try:
        return request.to.tag is not None
    except ParseError:
        return False


class ReactorLag:
    """Overload detection: how late a timer that should run every ``interval`` seconds actually runs.

    When the reactor cannot keep up, every turn reads a long queue of
    datagrams and the timer runs late each time.  ``samples`` late runs in a
    row (more than ``threshold`` seconds each) mean overload, which lasts
    until the timer runs on time again; one long pause (a full garbage
    collection) is not enough.  ``__call__`` is the ``Guard``'s ``lagging``.
    """

    def __init__(self, clock: Clock, threshold: float, interval: float = 0.05, samples: int = 3) -> None:
        if not threshold > 0 or not interval > 0 or samples < 1:
            raise ValueError("threshold and interval must be positive, samples at least 1")
        self.clock = clock
        self.threshold = threshold
        self.interval = interval
        self.samples = samples
        self.lag = 0.0
        self._late = 0
        self._call: Any = None
        self._due = 0.0

    def start(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._call = self.clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._late = 0

    def _tick(self) -> None:
        now = self.clock.seconds()
        self.lag = max(0.0, now - self._due)
        self._late = self._late + 1 if self.lag > self.threshold else 0
        self._due = now + self.interval
        self._call = self.clock.callLater(self.interval, self._tick)

    def __call__(self) -> float | None:
        """The lag while overloaded, else ``None``."""
        return self.lag if self._late >= self.samples else None


class Guard:
    """The early check: every message from the network, before any transaction state.

    The transport calls :meth:`admit` right after parsing (and for messages
    that do not parse, with ``None``); ``False`` means: stop here, whatever
    had to be answered has been answered through ``reply``.
    """

    def __init__(
        self,
        settings: SecuritySettings,
        clock: Clock,
        metrics: Metrics,
        *,
        is_blocked: Callable[[str, float], bool] = lambda key, now: False,
        holds_binding: Callable[[str], bool] = lambda key: False,
        in_flight: Callable[[], int] = lambda: 0,
        is_retransmission: Callable[[Request], bool] = lambda request: False,
        lagging: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.is_blocked = is_blocked
        self.holds_binding = holds_binding
        self.in_flight = in_flight
        self.is_retransmission = is_retransmission
        """Retransmissions of requests already taken are never refused for overload."""
        self.lagging = lagging
        """How far behind the reactor runs, in seconds, when it is overloaded (``ReactorLag``); else ``None``."""
        self.log = _log
        self.rate: RateLimiter | None = None
        if settings.rate is not None:
            self.rate = RateLimiter(settings.rate, settings.effective_burst)
        self.replies = RateLimiter(settings.reply_rate, settings.reply_burst)
        self.blocked_replies = RateLimiter(settings.reply_burst / settings.block_for, settings.reply_burst)
        self._log_once = _Throttle(settings.log_every)

    def admit(self, message: Request | Response | None, source: Source, size: int, reply: Reply) -> bool:
        """May ``message`` (``size`` bytes from ``source``) go on to the transaction layer?

        ``message`` is ``None`` for what did not parse: then only the block
        and the rate apply (both drop silently), and ``True`` lets the
        transport send its 400.  Never raises.
        """
        try:
            return self._admit(message, source, size, reply)
        except Exception:
            self.log.failure("Bug in the security guard for {host}:{port}", host=source.host, port=source.port)
            return True

    def _admit(self, message: Request | Response | None, source: Source, size: int, reply: Reply) -> bool:
        if isinstance(message, Response):
            if size > self.settings.max_message_size:
                self._note("size", source, "Dropped a {size}-byte response from {host}:{port}", size=size)
                return False
            return True
        now = self.clock.seconds()
        key = source_key(source.host)
        request = message if isinstance(message, Request) else None
        method = request.method if request is not None else None

        if self.is_blocked(key, now):
            self.metrics.blocked.labels("auth").inc()
            if request is not None and method != "ACK" and self.blocked_replies.allow(key, now):
                reply(self._response(request, 403, "Forbidden (blocked)"), source)
            return False

        if self.rate is not None:
            bound = self.holds_binding(key)
            factor = self.settings.bound_factor if bound else 1.0
            if not self.rate.allow(key, now, rate_multiplier=factor):
                self.metrics.blocked.labels("rate").inc()
                rate = self.rate.rate * factor
                if self._log_once(f"rate:{key}", now):
                    self.log.warn(
                        "Rate limit: {key} sends more than {rate:g} requests/s (burst {burst:g}); "
                        "answering 503 and dropping the rest",
                        key=key,
                        rate=rate,
                        burst=self.rate.burst * factor,
                        host=source.host,
                        port=source.port,
                        bound=bound,
                    )
                if request is not None and method != "ACK" and self.replies.allow(key, now):
                    retry = max(1, math.ceil(self.rate.burst / self.rate.rate))
                    reply(self._response(request, 503, None, retry), source)
                return False

        if request is None:
            return True
        if size > self.settings.max_message_size:
            self.metrics.blocked.labels("size").inc()
            self._note(
                "size",
                source,
                "Refused a {size}-byte {method} from {host}:{port} (limit {limit}): 513",
                size=size,
                method=method,
                limit=self.settings.max_message_size,
            )
            if method != "ACK":
                reply(self._response(request, 513, None), source)
            return False

        if method not in ("ACK", "CANCEL"):
            in_flight = self.in_flight()
            if in_flight >= self.settings.max_transactions and not self.is_retransmission(request):
                self._overloaded(
                    "transactions",
                    request,
                    source,
                    now,
                    reply,
                    "Overloaded: {count} proxied requests in flight (limit {limit}); answering 503",
                    count=in_flight,
                    limit=self.settings.max_transactions,
                )
                return False
            lag = self.lagging()
            if lag is not None and not _in_dialog(request) and not self.is_retransmission(request):
                # Shed new work; requests of dialogs already up (BYE, re-INVITE) still end their calls.
                self._overloaded(
                    "lag",
                    request,
                    source,
                    now,
                    reply,
                    "Overloaded: the reactor runs {lag:.0f} ms behind; answering 503 to new requests",
                    lag=lag * 1000,
                )
                return False
        return True

    def _overloaded(
        self, kind: str, request: Request, source: Source, now: float, reply: Reply, fmt: str, **fields: object
    ) -> None:
        """Refuse ``request`` for overload: counted by ``kind``, logged once a while, 503 with Retry-After."""
        self.metrics.blocked.labels(kind).inc()
        if self._log_once(kind, now):
            self.log.warn(fmt, **fields)
        reply(self._response(request, 503, None, self.settings.overload_retry_after), source)

    def _note(self, kind: str, source: Source, fmt: str, **fields: object) -> None:
        if self._log_once(f"{kind}:{source_key(source.host)}", self.clock.seconds()):
            self.log.warn(fmt, host=source.host, port=source.port, **fields)

    @staticmethod
    def _response(request: Request, status: int, reason: str | None, retry_after: int | None = None) -> Response:
        response = make_response(request, status, reason, to_tag=random_hex(4))
        if retry_after is not None:
            response.add("Retry-After", str(retry_after))
        return response


@dataclass(frozen=True)
class _Outcome:
    """What checking the credentials of one request gave."""

    username: str | None = None
    response: Response | None = None


class Security:
    """Digest authentication for the registrar and the proxy, failure blocking and the :class:`Guard`.

    ``users=None`` runs open: the hooks return ``None`` (no authentication)
    and only the guard's size and transaction limits (and a rate limit, if
    one is set) apply.
    """

    def __init__(
        self,
        users: UserDB | None,
        settings: SecuritySettings,
        domains: Container[str],
        local: LocalAddress,
        clock: Clock,
        metrics: Metrics,
        *,
        store: _Store | None = None,
        secret: bytes | None = None,
        users_path: str | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        self.users = users
        self.log = _log
        self.settings = settings
        self.realm = settings.realm
        self.domains = domains
        self.locality = Locality(local, domains)
        self.clock = clock
        self.metrics = metrics
        self.users_path = users_path
        self.secret = secret if secret is not None else os.urandom(32)
        self.digest: DigestAuthenticator | None = None
        if users is not None:
            self.digest = DigestAuthenticator(
                users,
                self.secret,
                settings.nonce_lifetime,
                settings.algorithms,
                random_bytes=random_bytes if random_bytes is not None else secrets.token_bytes,
                not_before=clock.seconds(),
            )
        n, window, block = settings.max_failures, settings.failure_window, settings.block_for
        self.address_failures = FailureTracker(n, window, block)
        self.bound_failures = FailureTracker(max(n, math.ceil(n * settings.bound_factor)), window, block)
        self.user_failures = FailureTracker(n, window, block)
        self.bound = BoundSources(store) if store is not None and users is not None else None
        self.guard = Guard(
            settings,
            clock,
            metrics,
            is_blocked=self.is_blocked,
            holds_binding=self.bound.holds_any if self.bound is not None else (lambda key: False),
        )

    @property
    def enabled(self) -> bool:
        """Is digest authentication on (``--users``)?"""
        return self.digest is not None

    # -- the start-up log line ---------------------------------------------------

    def announce(self) -> None:
        """Say at start-up whether the server authenticates, with what, and its limits."""
        rate, limits = self.guard.rate, self.settings
        if rate is not None:
            self.log.info(
                "Limits: {rate:g} requests/s per source address (bursts of {burst:g}; x{factor:g} for an address "
                "holding a binding); messages up to {size} bytes; {transactions} proxied requests in flight",
                rate=rate.rate,
                burst=rate.burst,
                factor=limits.bound_factor,
                size=limits.max_message_size,
                transactions=limits.max_transactions,
            )
        else:
            self.log.info(
                "Limits: no rate limit; messages up to {size} bytes; {transactions} proxied requests in flight",
                size=limits.max_message_size,
                transactions=limits.max_transactions,
            )
        if self.users is None or self.digest is None:
            self.log.warn(
                "Authentication is off (no --users file): anyone can register any address-of-record "
                "of our domains and call through the proxy"
            )
            return
        in_realm = [entry for (_, realm), entry in self.users.entries().items() if realm == self.realm]
        self.log.info(
            "Digest authentication on: {count} users in realm {realm} from {path} ({algorithms}); "
            "{failures} failed authentications in {window:g} s block an address or user name for {block:g} s; "
            "nonces issued before this start are stale, so phones authenticate again once",
            count=len(in_realm),
            realm=self.realm,
            path=self.users_path or "memory",
            algorithms=", ".join(self.digest.algorithms),
            failures=self.settings.max_failures,
            window=self.settings.failure_window,
            block=self.settings.block_for,
        )
        if not in_realm:
            self.log.warn(
                "No user of {path} is in realm {realm}: nobody can authenticate (see sipproxy-passwd, --realm)",
                path=self.users_path or "the users file",
                realm=self.realm,
            )
        md5_only = sum(1 for entry in in_realm if entry.ha1_sha256 is None)
        if md5_only and "SHA-256" in self.digest.algorithms:
            self.log.warn(
                "{count} users of realm {realm} have no SHA-256 HA1 (3-field lines): their phones must answer "
                "the MD5 challenge; rewrite them with sipproxy-passwd",
                count=md5_only,
                realm=self.realm,
            )

    # -- blocks ---------------------------------------------------------------

    def is_blocked(self, key: str, now: float) -> bool:
        """Is the source address ``key`` blocked for failed authentications?

        Failures are counted twice, against ``max_failures`` and against
        ``max_failures * bound_factor``; the second count applies while the
        address holds a binding.
        """
        if self.bound_failures.is_blocked(key, now):
            return True
        return self.address_failures.is_blocked(key, now) and not self._holds_binding(key)

    def _holds_binding(self, key: str) -> bool:
        return self.bound is not None and self.bound.holds_any(key)

    def _user_blocked(self, user: str, key: str, now: float) -> bool:
        if not self.user_failures.is_blocked(f"user:{user}", now):
            return False
        return self.bound is None or not self.bound.holds_user(key, user)

    # -- the hooks ----------------------------------------------------------------

    def registrar_hook(self, request: Request, aor: str) -> Response | str | None:
        """RFC 3261 §10.3 step 3: 401 (or 403 once blocked), or the authenticated user name.

        The registrar enforces step 4 with the name: it must be the user part
        of the To address-of-record, else 403.
        """
        if self.digest is None:
            return None
        host, port = _request_address(request)
        outcome = self._authenticate(request, "authorization", 401, "WWW-Authenticate", host, port, aor)
        return outcome.response if outcome.response is not None else outcome.username

    def proxy_hook(self, request: Request, source: Source) -> Response | None:
        """RFC 3261 §16.3 step 6: 407 for requests that need credentials, 403 when From is not the user."""
        if self.digest is None or not self.needs_proxy_auth(request):
            return None
        outcome = self._authenticate(
            request, "proxy-authorization", 407, "Proxy-Authenticate", source.host, source.port, None
        )
        if outcome.response is not None:
            return outcome.response
        from_uri = request.from_.uri
        if not (isinstance(from_uri, SipURI) and from_uri.user == outcome.username and from_uri.host in self.domains):
            self.log.info(
                "Refused {method} from {host}:{port}: From {from_} is not user {user}",
                method=request.method,
                host=source.host,
                port=source.port,
                from_=str(from_uri),
                user=outcome.username,
            )
            return make_response(request, 403, "From does not match the authenticated user", to_tag=_tag())
        self._consume_credentials(request)
        return None

    def needs_proxy_auth(self, request: Request) -> bool:
        """The rule in the module docstring: who the proxy challenges."""
        if request.method in ("ACK", "CANCEL"):
            return False
        if self.in_dialog(request):
            return False
        from_uri = request.from_.uri
        if isinstance(from_uri, SipURI) and from_uri.host in self.domains:
            return True
        return not self.locality.is_us(request.uri)

    def in_dialog(self, request: Request) -> bool:
        """A To tag and a top Route that is our own Record-Route for this Call-ID (see the module docstring)."""
        if request.to.tag is None:
            return False
        routes = request.addresses("route")
        if not routes:
            return False
        uri = routes[0].uri
        if not (isinstance(uri, SipURI) and uri.user is None and self.locality.is_us(uri)):
            return False
        token = uri.params.get(DIALOG_TOKEN_PARAM)
        return token is not None and hmac.compare_digest(token, self.dialog_token(request.call_id))

    def dialog_token(self, call_id: str) -> str:
        """What our Record-Route carries for the dialog ``call_id``: HMAC-SHA256 with the server secret."""
        mac = hmac.new(self.secret, b"dialog\x00" + call_id.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return mac.hexdigest()[:20]

    # -- checking credentials -------------------------------------------------------

    def _authenticate(
        self,
        request: Request,
        header: str,
        status: int,
        challenge_header: str,
        host: str,
        port: int,
        aor: str | None,
    ) -> _Outcome:
        assert self.digest is not None
        now = self.clock.seconds()
        key = source_key(host)
        if self.is_blocked(key, now):  # the guard refuses these first; this covers a server without it
            self.metrics.blocked.labels("auth").inc()
            return _Outcome(response=make_response(request, 403, "Forbidden (blocked)", to_tag=_tag()))
        value = self._our_credentials(request.get_all(header))
        if value is None:
            return _Outcome(response=self._challenge(request, status, challenge_header, now))
        claimed = _claimed_user(value)
        if claimed is not None and self._user_blocked(claimed, key, now):
            self.metrics.blocked.labels("auth").inc()
            self.log.info(
                "Refused {method} for blocked user {user} from {host}:{port}",
                method=request.method,
                user=claimed,
                host=host,
                port=port,
            )
            return _Outcome(response=make_response(request, 403, "Forbidden (blocked)", to_tag=_tag()))
        result = self.digest.verify(value, request.method, self.realm, now)
        if result.ok:  # failures are not forgotten on success: they age out after failure_window
            assert result.username is not None
            return _Outcome(username=result.username)
        if result.stale or result.reason == "nonce replay" or self._right_digest_old_nonce(result, value, request):
            return _Outcome(response=self._challenge(request, status, challenge_header, now, stale=True))
        if result.reason == "wrong realm":
            return _Outcome(response=self._challenge(request, status, challenge_header, now))
        blocked = self._failed(result, request, key, host, port, aor)
        if blocked:
            self.metrics.blocked.labels("auth").inc()
            return _Outcome(response=make_response(request, 403, "Forbidden (blocked)", to_tag=_tag()))
        return _Outcome(response=self._challenge(request, status, challenge_header, now))

    def _our_credentials(self, values: Iterable[str]) -> str | None:
        """The credentials for our realm; a malformed value (which names no realm) if that is all there is."""
        malformed = None
        for value in values:
            try:
                _, params = parse_auth_params(value)
            except ValueError:
                malformed = malformed or value
                continue
            if params.get("realm") == self.realm:
                return value
            if "realm" not in params:
                malformed = malformed or value
        return malformed

    def _right_digest_old_nonce(self, result: AuthResult, value: str, request: Request) -> bool:
        """A nonce we cannot read (made before a restart) with a right digest: stale, not a failure."""
        if result.reason != "bad nonce" or self.users is None:
            return False
        try:
            _, p = parse_auth_params(value)
            entry = self.users.get(p["username"], p["realm"])
            stored = entry.ha1(p.get("algorithm", "MD5")) if entry is not None else None
            if stored is None:
                return False
            qop = p.get("qop")
            expected = compute_response(
                p.get("algorithm", "MD5"),
                stored,
                request.method,
                p["uri"],
                p["nonce"],
                p.get("nc") if qop else None,
                p.get("cnonce"),
                qop,
            )
        except (KeyError, ValueError):
            return False
        return hmac.compare_digest(expected.encode("ascii"), p["response"].lower().encode("utf-8", "replace"))

    def _failed(self, result: AuthResult, request: Request, key: str, host: str, port: int, aor: str | None) -> bool:
        """Count a failed authentication; True when the source address is blocked now."""
        now = self.clock.seconds()
        self.metrics.auth_failures.inc()
        user = result.username
        self.log.info(
            "Failed authentication of {method} from {host}:{port}: user {user}, {reason}",
            method=request.method,
            host=host,
            port=port,
            user=user,
            reason=result.reason,
            aor=aor,
        )
        bound = self._holds_binding(key)
        started = self.address_failures.record_failure(key, now)
        started_bound = self.bound_failures.record_failure(key, now)
        tracker = self.bound_failures if bound else self.address_failures
        if started_bound if bound else started:
            self.log.warn(
                "Blocked source {key} for {seconds:g} s after {failures} failed authentications within {window:g} s "
                "(last: {method} from {host}:{port}, user {user}, {reason})",
                key=key,
                seconds=tracker.block_for,
                failures=tracker.max_failures,
                window=tracker.window,
                method=request.method,
                host=host,
                port=port,
                user=user,
                reason=result.reason,
            )
        if user is not None and self.user_failures.record_failure(f"user:{user}", now):
            self.log.warn(
                "Blocked user {user} for {seconds:g} s after {failures} failed authentications within {window:g} s "
                "(last from {host}:{port})",
                user=user,
                seconds=self.user_failures.block_for,
                failures=self.user_failures.max_failures,
                window=self.user_failures.window,
                host=host,
                port=port,
            )
        return self.is_blocked(key, now)

    def _challenge(self, request: Request, status: int, header: str, now: float, stale: bool = False) -> Response:
        assert self.digest is not None
        response = make_response(request, status, None, to_tag=stable_tag(request) if status == 401 else _tag())
        for value in self.digest.challenge(self.realm, now, stale=stale):
            response.add(header, value)
        return response

    def _consume_credentials(self, request: Request) -> None:
        """Remove our realm's Proxy-Authorization before the request is forwarded (§22.3)."""
        values = request.get_all("proxy-authorization")
        ours = self._our_credentials(values)
        if ours is None:
            return
        request.remove("proxy-authorization")
        kept = list(values)
        kept.remove(ours)
        for value in kept:
            request.add("Proxy-Authorization", value)


def _claimed_user(value: str) -> str | None:
    try:
        return parse_auth_params(value)[1].get("username")
    except ValueError:
        return None


def _tag() -> str:
    return random_hex(4)


# -- from the command line -------------------------------------------------------


def _option(options: Mapping[str, Any], name: str, default: Any) -> Any:
    value = options.get(name)
    return default if value is None else value


def settings_from_options(options: Mapping[str, Any]) -> SecuritySettings:
    """:class:`SecuritySettings` from parsed :class:`sipproxy.tap.Options` (missing keys: defaults)."""
    users = options.get("users")
    domains = list(options.get("domains") or [])
    realm = options.get("realm") or (domains[0] if domains else socket.gethostname())
    rate_option = options.get("rate-limit")
    if rate_option is None:
        rate: float | None = DEFAULT_RATE if users else None
    else:
        rate = float(rate_option) or None
    algorithms = _option(options, "digest-algorithms", ("SHA-256", "MD5"))
    if isinstance(algorithms, str):
        algorithms = tuple(a.strip() for a in algorithms.split(",") if a.strip())
    return SecuritySettings(
        realm=realm,
        algorithms=tuple(algorithms),
        max_failures=int(_option(options, "max-failures", SecuritySettings.max_failures)),
        block_for=float(_option(options, "block-time", SecuritySettings.block_for)),
        rate=rate,
        max_message_size=int(_option(options, "max-message-size", SecuritySettings.max_message_size)),
        max_transactions=int(_option(options, "max-transactions", SecuritySettings.max_transactions)),
    )


def build_security(
    options: Mapping[str, Any],
    clock: Clock,
    metrics: Metrics,
    domains: Container[str],
    local: LocalAddress,
    store: _Store | None = None,
    secret: bytes | None = None,
) -> Security:
    """The :class:`Security` of ``twistd sipproxy``: ``--users`` loaded; ``secret`` as kept, else ``os.urandom(32)``.

    Raises ``ValueError``/``OSError`` for an unreadable or malformed users file.
    """
    path = options.get("users")
    users = UserDB.load(path) if path else None
    return Security(
        users,
        settings_from_options(options),
        domains,
        local,
        clock,
        metrics,
        store=store,
        secret=secret,
        users_path=path,
    )
