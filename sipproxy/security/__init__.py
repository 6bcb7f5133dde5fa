# -*- test-case-name: tests.test_security_register -*-
"""Authentication and abuse limits in the running server: the glue between ``sipproxy.auth`` and the stack.

``sipproxy.auth`` is pure (digest, users file, failure and rate counters);
this package decides *when* they apply and answers for them, one module
per job:

- :mod:`~sipproxy.security.settings`: the options as one value, the users
  file read once;
- :mod:`~sipproxy.security.sources`: source keys (IPv6 per /64), a log
  throttle;
- :mod:`~sipproxy.security.bound`: who holds a binding (from the location
  service);
- :mod:`~sipproxy.security.congestion`: admission by how long messages
  wait before they are read (RFC 3261 §21.5.4, on by default);
- :mod:`~sipproxy.security.feedback`: the share it refuses, in the ``oc``
  Via parameter of responses to clients that ask (RFC 7339);
- :mod:`~sipproxy.security.overload`: the reactor's lag (the wait of
  stream transports, and the older ``--overload-lag`` rule);
- :mod:`~sipproxy.security.guard`: the admission guard in front of the
  message sink (403/503/513, before any transaction state);
- :mod:`~sipproxy.security.authentication`: the 401 (§10.3 step 3) and 407
  (§16.3 step 6, §22.3) hooks, with :mod:`~sipproxy.security.challenges`
  (RFC 8760 challenge order per phone) and
  :mod:`~sipproxy.security.blocks` (failure blocking);
- :mod:`~sipproxy.security.dialog`: the HMAC that signs our Record-Route.

:class:`Security` builds them for one server.  Nonces are signed with the
server secret (``os.urandom(32)`` the first time, kept in ``--db``) and
valid only until the server restarts (the nonce-count replay table lives
in memory): after a restart each phone is asked once more (``stale=true``,
no password prompt).  IPv6 sources are counted per /64.  Each refused
request counts in ``sip_blocked_requests`` with reason ``auth``, ``rate``,
``size``, ``transactions``, ``lag`` or ``wait``, and what overload refused
or dropped in ``sip_shed_requests`` by method and reason; failed authentications in
``sip_auth_failures``.  Bindings per address-of-record (``--max-contacts``)
and TCP connections per address are limited where they are made.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Container, Mapping
from typing import Any

from twisted.logger import Logger

from sipproxy.auth import DigestAuthenticator, UserDB
from sipproxy.errors import SipError
from sipproxy.locality import LocalAddress, Locality
from sipproxy.location import LocationService
from sipproxy.message import Request, Response, make_response
from sipproxy.metrics import Metrics
from sipproxy.net import Clock, Source
from sipproxy.randomness import random_hex, stable_tag
from sipproxy.security.authentication import Authentication
from sipproxy.security.blocks import Blocks
from sipproxy.security.bound import BoundSources
from sipproxy.security.challenges import ChallengePolicy
from sipproxy.security.congestion import Congestion
from sipproxy.security.dialog import DialogRoutes
from sipproxy.security.feedback import OverloadFeedback
from sipproxy.security.guard import Guard, MessageSink, Reply
from sipproxy.security.overload import LagWatch, ReactorLag
from sipproxy.security.settings import (
    DEFAULT_RATE,
    SecuritySettings,
    load_users,
    settings_from_options,
    users_from_options,
)
from sipproxy.security.sources import request_address, source_key

__all__ = [
    "DEFAULT_RATE",
    "Congestion",
    "Guard",
    "LagWatch",
    "MessageSink",
    "OverloadFeedback",
    "ReactorLag",
    "Reply",
    "Security",
    "SecuritySettings",
    "build_security",
    "load_users",
    "settings_from_options",
    "source_key",
]


class Security:
    """Digest authentication for the registrar and the proxy, failure blocking, the :class:`Guard`.

    ``users=None`` runs open: the hooks let everything through (no
    authentication) and only the guard's size and transaction limits (and
    a rate limit, if one is set) apply.
    """

    log = Logger(namespace="sipproxy.security")

    def __init__(
        self,
        users: UserDB | None,
        settings: SecuritySettings,
        domains: Container[str],
        local: LocalAddress,
        clock: Clock,
        metrics: Metrics,
        *,
        store: LocationService | None = None,
        secret: bytes | None = None,
        users_path: str | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        self.users = users
        self.settings = settings
        self.realm = settings.realm
        self.clock = clock
        self.metrics = metrics
        self.users_path = users_path
        self.secret = secret if secret is not None else os.urandom(32)
        locality = Locality(local, domains)
        self.dialogs = DialogRoutes(self.secret, locality)
        self.bound = BoundSources(store) if store is not None and users is not None else None
        self.blocks = Blocks(settings, self.bound)
        self.digest: DigestAuthenticator | None = None
        self.authentication: Authentication | None = None
        if users is not None:
            self.digest = DigestAuthenticator(
                users,
                self.secret,
                settings.nonce_lifetime,
                settings.algorithms,
                random_bytes=random_bytes if random_bytes is not None else secrets.token_bytes,
                not_before=clock.seconds(),
            )
            challenges = ChallengePolicy(
                self.digest.algorithms, settings.nonce_lifetime, unanswered_limit=settings.unanswered_challenges
            )
            self.authentication = Authentication(
                self.digest, self.realm, domains, locality, self.dialogs, self.blocks, challenges, clock, metrics
            )
        self.congestion: Congestion | None = None
        if settings.overload_wait > 0:
            self.congestion = Congestion(clock, settings.overload_wait, retry_after=settings.overload_retry_after)
            congestion = self.congestion
            metrics.watch(metrics.admission_wait, lambda: congestion.wait)
            metrics.watch(metrics.shedding, lambda: float(congestion.shedding))
            metrics.watch(metrics.refused_share, lambda: congestion.refusing)
        self.lag: ReactorLag | None = None
        """The ``--overload-lag`` rule, if it is on (the guard's ``lagging``)."""
        self.watch: ReactorLag | None = None
        """The lag timer: the ``--overload-lag`` rule's, which also feeds the congestion, or one for that alone."""
        if settings.overload_lag > 0:
            self.lag = self.watch = ReactorLag(clock, settings.overload_lag)
        elif self.congestion is not None:
            self.watch = ReactorLag(clock, settings.overload_wait)
        if self.watch is not None and self.congestion is not None:
            self.watch.observe = self.congestion.reactor_lagged
        self.guard = self.admission_guard()
        """The server's guard: ``build_core`` makes it the transport's message sink, before the transactions."""

    @property
    def enabled(self) -> bool:
        """Is digest authentication on (``--users``)?"""
        return self.authentication is not None

    def admission_guard(
        self,
        sink: MessageSink | None = None,
        reply: Reply | None = None,
        *,
        in_flight: Callable[[], int] = lambda: 0,
        is_retransmission: Callable[[Request], bool] = lambda request: False,
    ) -> Guard:
        """A :class:`Guard` in front of ``sink``, answering through ``reply``, sharing this server's blocks."""
        return Guard(
            self.settings,
            self.clock,
            self.metrics,
            sink=sink,
            reply=reply,
            is_blocked=self.is_blocked,
            holds_binding=self.bound.holds_any if self.bound is not None else (lambda key: False),
            in_flight=in_flight,
            is_retransmission=is_retransmission,
            lagging=self.lag if self.lag is not None else (lambda: None),
            in_dialog=self.dialogs.follows_our_record_route,
            congestion=self.congestion,
        )

    def overload_service(self) -> LagWatch | None:
        """The service that runs the lag timer (``--overload-wait``, ``--overload-lag``), if either is on."""
        if self.watch is None:
            return None
        if self.congestion is None:
            return LagWatch(self.watch)
        congestion = self.congestion
        return LagWatch(self.watch, lag_rule=self.lag is not None, wait=congestion.tolerance, on_stop=congestion.stop)

    def is_blocked(self, source: Source, now: float) -> bool:
        """Is ``source`` refused as a scanner's address (see :mod:`sipproxy.security.blocks`)?"""
        return self.blocks.address_blocked(source.host, source.port, now)

    def dialog_token(self, call_id: str) -> str:
        """What our Record-Route carries for the dialog ``call_id`` (:class:`DialogRoutes`)."""
        return self.dialogs.token(call_id)

    # -- the hooks -------------------------------------------------------------------

    def authenticate_register(self, request: Request, aor: str, source: Source) -> str | None:
        """RFC 3261 §10.3 step 3: the authenticated user name (``None``: authentication is off).

        Raises :class:`SipError` 401 with ``WWW-Authenticate`` challenges, or
        403 ``Forbidden (blocked)``.
        """
        if self.authentication is None:
            return None
        return self.authentication.authenticate_register(request, aor, source)

    def authenticate_proxy(self, request: Request, source: Source) -> None:
        """RFC 3261 §16.3 step 6: returns when the request may be proxied.

        Raises :class:`SipError` 407 with ``Proxy-Authenticate`` challenges,
        403 ``From does not match the authenticated user`` or 403
        ``Forbidden (blocked)``.
        """
        if self.authentication is not None:
            self.authentication.authenticate_proxy(request, source)

    def proxy_challenges(self, request: Request) -> bool:
        """Would :meth:`authenticate_proxy` ask ``request`` for credentials (the rule in ``authentication.py``)?

        The stack asks before it answers an OPTIONS to a user of ours
        itself: such a request goes to the proxy whether or not the user is
        registered, so that its answer (407 alike) does not tell a scanner
        who exists.
        """
        return self.authentication is not None and self.authentication.needs_proxy_auth(request)

    def registrar_hook(self, request: Request, aor: str) -> Response | str | None:
        """Compatibility shim for ``Registrar(authenticate=...)``: the refusal as a response, else the user name.

        The source is read from the top Via, which the transport stamped
        (``received``/``rport``).  Call :meth:`authenticate_register` instead.
        """
        host, port = request_address(request)
        try:
            return self.authenticate_register(request, aor, Source("UDP", host, port))
        except SipError as refusal:
            return _refusal(request, refusal, stable_tag(request))

    def proxy_hook(self, request: Request, source: Source) -> Response | None:
        """Compatibility shim for ``Proxy(authorize=...)``; call :meth:`authenticate_proxy` instead."""
        try:
            self.authenticate_proxy(request, source)
        except SipError as refusal:
            return _refusal(request, refusal, random_hex(4))
        return None

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
        self._announce_users(self.users, self.digest)

    def _announce_users(self, users: UserDB, digest: DigestAuthenticator) -> None:
        in_realm = [entry for (_, realm), entry in users.entries().items() if realm == self.realm]
        self.log.info(
            "Digest authentication on: {count} {users} in realm {realm} from {path} ({algorithms}); "
            "{failures} failed authentications in {window:g} s block a phone (address and user name) or a user "
            "name for {block:g} s, failures for {failures} user names from one address block the address; "
            "nonces issued before this start are stale, so phones authenticate again once",
            count=len(in_realm),
            users="user" if len(in_realm) == 1 else "users",
            realm=self.realm,
            path=self.users_path or "memory",
            algorithms=", ".join(digest.algorithms),
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
        if md5_only and "SHA-256" in digest.algorithms:
            self.log.warn(
                "{count} {users} of realm {realm} {have} no SHA-256 HA1 (3-field lines): their phones must answer "
                "the MD5 challenge; rewrite them with sipproxy-passwd",
                count=md5_only,
                users="user" if md5_only == 1 else "users",
                have="has" if md5_only == 1 else "have",
                realm=self.realm,
            )


def _refusal(request: Request, refusal: SipError, to_tag: str) -> Response:
    response = make_response(request, refusal.status, refusal.reason, to_tag=to_tag)
    for name, value in refusal.headers:
        response.add(name, value)
    return response


def build_security(
    options: Mapping[str, Any],
    clock: Clock,
    metrics: Metrics,
    domains: Container[str],
    local: LocalAddress,
    store: LocationService | None = None,
    secret: bytes | None = None,
) -> Security:
    """The :class:`Security` of ``twistd sipproxy``: ``--users`` as ``tap`` read it; ``secret`` as kept.

    Raises ``ValueError``/``OSError`` for an unreadable or malformed users file not read before.
    """
    return Security(
        users_from_options(options),
        settings_from_options(options),
        domains,
        local,
        clock,
        metrics,
        store=store,
        secret=secret,
        users_path=options.get("users"),
    )
