# -*- test-case-name: tests.test_security_register -*-
"""The authentication hooks: 401 for the registrar (RFC 3261 §10.3 step 3), 407 for the proxy (§16.3, §22.3).

:meth:`Authentication.authenticate_register` is the registrar's step 3: a
REGISTER without valid credentials is refused with ``401`` and
``WWW-Authenticate`` challenges (§22.4, in the order of
:mod:`sipproxy.security.challenges`); a valid one gives the user name, and
the registrar checks step 4 with it (403 unless the user owns the To
address-of-record).  :meth:`Authentication.authenticate_proxy` is the
proxy's §16.3 step 6: ``407`` with ``Proxy-Authenticate``, then ``403``
when the From user is not the authenticated user.  Both refuse by raising
:class:`~sipproxy.errors.SipError`; the caller builds the response.

Which requests the proxy challenges (with ``--users``):

- never ACK (it has no response) or CANCEL (it cannot be resubmitted with
  credentials, §22.1): both belong to an INVITE that was challenged;
- never a request of a dialog we record-routed
  (:meth:`~sipproxy.security.dialog.DialogRoutes.follows_our_record_route`);
- a request whose From host is one of our domains: always challenged;
- a request from another domain to one of ours (the Request-URI is us):
  never challenged -- that is how other domains call our users;
- a request from another domain to another domain (relaying): challenged,
  and since its From cannot match a user of ours, refused (403): no open
  relay.

An authenticated request has our realm's ``Proxy-Authorization`` removed
before it is forwarded (§22.3: credentials for our realm are ours to
consume); values for other realms are forwarded untouched.  Unknown users
get exactly the challenge known users get and cost the same work.

Credentials that do not count as a failure (``AuthResult.failure``): none
at all, for another realm, malformed, for an algorithm we do not take, for
a nonce we did not issue to that address or one no longer fresh; each gets
a fresh challenge (``stale=true`` when the digest is right, RFC 7616 §3.3,
so that a phone holding a nonce from before a restart is not asked for its
password).  Failures go to :mod:`sipproxy.security.blocks`; each is logged
at info level, each block that starts at warn level.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable

from twisted.logger import Logger

from sipproxy.auth import AuthResult, DigestAuthenticator
from sipproxy.auth.params import parse_auth_params
from sipproxy.errors import SipError
from sipproxy.locality import Locality
from sipproxy.message import Request, SipURI
from sipproxy.metrics import Metrics
from sipproxy.net import Clock, Source
from sipproxy.security.blocks import Blocks, BlockStarted
from sipproxy.security.challenges import ChallengePolicy, Phone
from sipproxy.security.dialog import DialogRoutes
from sipproxy.security.sources import aor_user, source_key

__all__ = ["BLOCKED", "Authentication"]

BLOCKED = "Forbidden (blocked)"
"""The reason phrase of the 403 for a blocked phone, user name or address."""

_NO_FAILURE_STALE = ("stale nonce", "nonce replay")
_UNUSABLE = ("malformed credentials", "unsupported algorithm", "unsupported qop", "wrong realm")


class Authentication:
    """Digest authentication for the registrar and the proxy, with failure blocking."""

    log = Logger(namespace="sipproxy.security")

    def __init__(
        self,
        digest: DigestAuthenticator,
        realm: str,
        domains: Container[str],
        locality: Locality,
        dialogs: DialogRoutes,
        blocks: Blocks,
        challenges: ChallengePolicy,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.digest = digest
        self.realm = realm
        self.domains = domains
        self.locality = locality
        self.dialogs = dialogs
        self.blocks = blocks
        self.challenges = challenges
        self.clock = clock
        self.metrics = metrics
        self.on_refused: Callable[[str, Request, Source, int, str], None] | None = None
        """Told of each REGISTER refused for its credentials (401 wrong, 403 blocked), not of plain challenges:
        ``(aor, request, source, status, reason)`` (the binding history); must not raise."""

    # -- the hooks -------------------------------------------------------------------

    def authenticate_register(self, request: Request, aor: str, source: Source) -> str:
        """RFC 3261 §10.3 step 3: the authenticated user name, or :class:`SipError` 401 (403 once blocked)."""
        return self._authenticate(request, source, aor_user(aor) or "", 401, aor)

    def authenticate_proxy(self, request: Request, source: Source) -> None:
        """RFC 3261 §16.3 step 6: return if the request may be proxied, else raise 407 or 403."""
        if not self.needs_proxy_auth(request):
            return
        from_uri = request.from_.uri
        from_user = from_uri.user if isinstance(from_uri, SipURI) and from_uri.user else ""
        username = self._authenticate(request, source, from_user, 407, None)
        if not (isinstance(from_uri, SipURI) and from_uri.user == username and from_uri.host in self.domains):
            self.log.info(
                "Refused {method} from {host}:{port}: From {from_} is not user {user}",
                method=request.method,
                host=source.host,
                port=source.port,
                from_=str(from_uri),
                user=username,
            )
            raise SipError(403, "From does not match the authenticated user")
        self._consume_credentials(request)

    def needs_proxy_auth(self, request: Request) -> bool:
        """The rule in the module docstring: who the proxy challenges."""
        if request.method in ("ACK", "CANCEL"):
            return False
        if self.dialogs.follows_our_record_route(request):
            return False
        from_uri = request.from_.uri
        if isinstance(from_uri, SipURI) and from_uri.host in self.domains:
            return True
        return not self.locality.is_us(request.uri)

    # -- checking credentials -----------------------------------------------------------

    def _authenticate(self, request: Request, source: Source, user: str, status: int, aor: str | None) -> str:
        now = self.clock.seconds()
        host, port = source.host, source.port
        phone, client = Phone(host, port, user), source_key(host)
        if self.blocks.address_blocked(host, port, now):  # the guard refuses these first
            self.metrics.inc(self.metrics.blocked, "auth")
            self._tell(aor, request, source, 403, f"{BLOCKED}: address {host} is blocked")
            raise SipError(403, BLOCKED)
        header = "authorization" if status == 401 else "proxy-authorization"
        value = self._our_credentials(request.get_all(header))
        if value is None:
            self._came_back(phone, request, source, now)
            raise self._challenge(status, phone, now)
        claimed = _claimed_user(value)
        if self.blocks.refused(host, port, (claimed, user or None), now) is not None:
            self.metrics.inc(self.metrics.blocked, "auth")
            self.log.info(
                "Refused {method} for blocked user {user} from {host}:{port}",
                method=request.method,
                user=claimed or user,
                host=host,
                port=port,
            )
            self._tell(aor, request, source, 403, f"{BLOCKED}: user {claimed or user} is blocked")
            raise SipError(403, BLOCKED)
        result = self.digest.verify(value, request.method, self.realm, now, client=client)
        if result.ok:  # failures are not forgotten on success: they age out after failure_window
            assert result.username is not None
            self.challenges.answered(phone, result.algorithm, now, authenticated=True)
            return result.username
        if result.stale or result.reason in _NO_FAILURE_STALE or (result.reason == "bad nonce" and result.digest_right):
            self.challenges.answered(phone, result.algorithm, now, authenticated=False)
            raise self._challenge(status, phone, now, stale=True)
        if result.reason in _UNUSABLE:
            self._came_back(phone, request, source, now, result.reason)
            raise self._challenge(status, phone, now)
        self.challenges.answered(phone, result.algorithm, now, authenticated=False)
        if not result.failure:  # a nonce we did not issue to this address, or an old one: not a guess
            self.log.debug(
                "Ignored credentials of {method} from {host}:{port} for user {user}: {reason}, nonce not ours or old",
                method=request.method,
                host=host,
                port=port,
                user=result.username,
                reason=result.reason,
            )
            raise self._challenge(status, phone, now)
        wrong = f"user {result.username}: {result.reason}"
        if self._failed(result, request, source, aor, now):
            self.metrics.inc(self.metrics.blocked, "auth")
            self._tell(aor, request, source, 403, f"{BLOCKED} after this failed authentication ({wrong})")
            raise SipError(403, BLOCKED)
        self._tell(aor, request, source, status, f"Unauthorized: wrong credentials ({wrong})")
        raise self._challenge(status, phone, now)

    def _tell(self, aor: str | None, request: Request, source: Source, status: int, reason: str) -> None:
        """A REGISTER (``aor`` given) refused for its credentials: tell :attr:`on_refused`."""
        if aor is not None and self.on_refused is not None:
            try:
                self.on_refused(aor, request, source, status, reason)
            except Exception:
                self.log.failure("Telling of a refused REGISTER for {aor} failed", aor=aor)

    def _came_back(self, phone: Phone, request: Request, source: Source, now: float, reason: str = "") -> None:
        """A request without usable credentials: log (info, once) a phone that leaves challenges unanswered."""
        note = self.challenges.came_back(phone, now)
        if note is None:
            return
        fields = {
            "user": phone.user or "(no user)",
            "host": source.host,
            "port": source.port,
            "offered": ", ".join(note.offered),
            "now_offered": ", ".join(note.now_offered),
            "times": note.times,
            "method": request.method,
            "reason": reason or "no credentials",
        }
        if note.now_offered != note.offered and len(note.now_offered) == 1:
            self.log.info(
                "{user}@{host}:{port} did not answer the {offered} challenge ({reason}); "
                "offering {now_offered} alone from now on (clients such as baresip 1.0 fail on any SHA-256 challenge)",
                **fields,
            )
        else:
            self.log.info(
                "{user}@{host}:{port} has left {times} challenges ({offered}) unanswered ({reason}): "
                "is a password configured for it?",
                **fields,
            )

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

    def _failed(self, result: AuthResult, request: Request, source: Source, aor: str | None, now: float) -> bool:
        """Count a failed authentication; True when the request's source is now refused for it."""
        self.metrics.auth_failures.inc()
        self.log.info(
            "Failed authentication of {method} from {host}:{port}: user {user}, {reason}",
            method=request.method,
            host=source.host,
            port=source.port,
            user=result.username,
            reason=result.reason,
            aor=aor,
        )
        for started in self.blocks.record(source.host, source.port, result.username, now):
            self._log_block(started, request, source, result.reason)
        if self.blocks.address_blocked(source.host, source.port, now):
            return True  # a user name blocked now refuses this address from its next request on, as always
        return self.blocks.refused(source.host, source.port, (result.username,), now) == "phone"

    def _log_block(self, started: BlockStarted, request: Request, source: Source, reason: str) -> None:
        fields = {
            "key": started.key,
            "user": started.user,
            "seconds": started.block_for,
            "failures": started.failures,
            "window": started.window,
            "method": request.method,
            "host": source.host,
            "port": source.port,
            "reason": reason,
        }
        if started.kind == "phone":
            self.log.warn(
                "Blocked user {user} at {key} for {seconds:g} s after {failures} failed authentications within "
                "{window:g} s (last: {method} from {host}:{port}, {reason}); other users there are not affected",
                **fields,
            )
        elif started.kind == "user":
            self.log.warn(
                "Blocked user {user} for {seconds:g} s after {failures} failed authentications within {window:g} s "
                "(last from {host}:{port}); addresses holding its bindings are not affected",
                **fields,
            )
        else:
            self.log.warn(
                "Blocked source {key} for {seconds:g} s: failed authentications for {failures} different user "
                "names within {window:g} s, like a scanner (last: {method} from {host}:{port}, user {user}, {reason})",
                **fields,
            )

    def _challenge(self, status: int, phone: Phone, now: float, stale: bool = False) -> SipError:
        """The 401/407 for ``phone``: its challenges in its order, with a nonce bound to its address."""
        header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        order = self.challenges.offer(phone, now, probe=status == 401)
        values = self.digest.challenge(self.realm, now, stale=stale, client=source_key(phone.host), algorithms=order)
        return SipError(status, None, [(header, value) for value in values])

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
