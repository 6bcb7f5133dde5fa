# -*- test-case-name: tests.test_auth_digest -*-
"""HTTP Digest authentication for SIP, sans-IO: challenge and verify (RFC 3261 §22.4, RFC 7616, RFC 8760).

:class:`DigestAuthenticator` writes the WWW-Authenticate/Proxy-Authenticate
values (RFC 3261 §22.4, RFC 8760 §2.4 strongest first) and checks an
Authorization/Proxy-Authorization value against the users file, using the
computation of :mod:`sipproxy.auth.digest` and the nonces of
:mod:`sipproxy.auth.nonces`. Nothing here reads a clock or touches the
network: time arrives as ``now`` arguments and randomness through an
injectable callable.

:class:`AuthResult` says whether a refusal is a *failure* worth counting
towards blocks: only a wrong answer to a fresh nonce we issued to that
client. Credentials naming a nonce we never issued (forged, from another
address, from before a restart) or an expired one cannot be told from
spoofed packets and are not failures; whether their digest is right is
still reported (``digest_right``) so that a phone holding an old nonce is
challenged again with ``stale=true`` instead of being asked for a password.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sipproxy.auth.digest import (
    Credentials,
    CredentialsError,
    by_preference,
    compute_response,
    hash_hex,
    parse_credentials,
)
from sipproxy.auth.nonces import MAX_CLOCK_SKEW, NonceCounts, NonceSigner, nonce_count
from sipproxy.auth.params import quote

if TYPE_CHECKING:
    from sipproxy.auth.users import UserDB

__all__ = ["AuthResult", "DigestAuthenticator"]

_DUMMY_LABEL = b"sipproxy-digest-dummy\x00"


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of ``DigestAuthenticator.verify``.

    ``username`` is the claimed user name whenever it could be read, also on
    failure (untrusted then; useful for per-user failure counting). ``stale``
    means the digest was right but the nonce is no longer usable: challenge
    again with ``stale=True`` (RFC 7616 §3.3) instead of treating it as a
    failed guess.

    The last three fields take no part in comparisons: ``algorithm`` is the
    one the credentials used (when it could be read); ``failure`` is true
    only for a wrong answer (wrong password, unknown user) to a fresh nonce
    we issued to this client -- the one refusal that counts towards blocks
    (a user without an HA1 for the algorithm is our file's gap, not a
    guess); ``digest_right`` is true when the response
    matches the stored HA1 whatever the nonce (a "bad nonce" with a right
    digest comes from a phone holding a nonce from before a restart or from
    another address: challenge it again, stale).
    """

    ok: bool
    username: str | None
    stale: bool
    reason: str
    algorithm: str | None = field(default=None, compare=False)
    failure: bool = field(default=False, compare=False)
    digest_right: bool = field(default=False, compare=False)


class _Rejected(Exception):
    def __init__(
        self,
        reason: str,
        username: str | None = None,
        *,
        stale: bool = False,
        algorithm: str | None = None,
        failure: bool = False,
        digest_right: bool = False,
    ) -> None:
        super().__init__(reason)
        self.result = AuthResult(
            ok=False,
            username=username,
            stale=stale,
            reason=reason,
            algorithm=algorithm,
            failure=failure,
            digest_right=digest_right,
        )


class DigestAuthenticator:
    """Issue digest challenges and verify credentials (RFC 3261 §22.4).

    The same object serves 401/WWW-Authenticate (registrar, UAS) and
    407/Proxy-Authenticate (proxy): only the header names differ, and those
    are the caller's business.
    """

    def __init__(
        self,
        users: UserDB | None,
        secret: bytes,
        nonce_lifetime: float = 300.0,
        algorithms: Iterable[str] = ("SHA-256", "MD5"),
        *,
        max_tracked_nonces: int = 100_000,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        not_before: float | None = None,
    ) -> None:
        """``not_before``: nonces issued before then are stale (the start time, when ``secret`` is
        kept across restarts: the replay table starts empty, so older nonces cannot be trusted)."""
        self._nonces = NonceSigner(secret, random_bytes)
        if not nonce_lifetime > 0:
            raise ValueError("nonce_lifetime must be positive")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be at least 1")
        self._users = users
        self._secret = secret
        self._nonce_lifetime = float(nonce_lifetime)
        self._algorithms = by_preference(algorithms)
        self._nonce_counts = NonceCounts(max_tracked_nonces)
        if not_before is not None:  # the floor is inclusive: nonces issued at not_before itself are fine
            self._nonce_counts.floor = math.nextafter(not_before, -math.inf)

    @property
    def algorithms(self) -> tuple[str, ...]:
        """Offered algorithms, strongest first (RFC 8760 §2.4)."""
        return self._algorithms

    @property
    def tracked_nonces(self) -> int:
        """Number of nonces in the replay table (a gauge for metrics)."""
        return len(self._nonce_counts)

    def challenge(
        self,
        realm: str,
        now: float,
        stale: bool = False,
        *,
        client: str = "",
        algorithms: Sequence[str] | None = None,
    ) -> list[str]:
        """Header values for WWW-Authenticate (401) or Proxy-Authenticate (407).

        One challenge per algorithm sharing one fresh nonce, bound to
        ``client``; in ``algorithms`` order when given (a subset of the
        configured ones: the caller's per-phone preference, RFC 8760 §2.3),
        else strongest first. The form never depends on the user name, so
        unknown users cannot be told apart from known ones.
        """
        offered = self._algorithms if algorithms is None else tuple(algorithms)
        if not offered or any(a not in self._algorithms for a in offered):
            raise ValueError(f"can only offer configured algorithms {self._algorithms}, not {offered}")
        nonce = self._nonces.issue(realm, client, now)
        common = f'realm={quote(realm)}, qop="auth"'
        tail = f"nonce={quote(nonce)}, opaque={quote(self._nonces.opaque(realm))}"
        if stale:
            tail += ", stale=true"
        return [f"Digest {common}, algorithm={algorithm}, {tail}" for algorithm in offered]

    def verify(self, header_value: str, method: str, realm: str, now: float, *, client: str = "") -> AuthResult:
        """Check an Authorization/Proxy-Authorization value (RFC 3261 §22.4).

        Order: syntax, realm, algorithm and qop, nonce integrity (issued by
        us, for ``realm`` and ``client``), the digest itself, then freshness
        and nonce-count replay. A stale nonce is reported as stale only when
        the digest is right (RFC 2617 §3.2.1), so a wrong guess never earns
        a silent retry; it is no ``failure`` either.
        """
        try:
            return self._verify(header_value, method, realm, now, client)
        except _Rejected as rejected:
            return rejected.result

    def _verify(self, header_value: str, method: str, realm: str, now: float, client: str) -> AuthResult:
        try:
            creds = parse_credentials(header_value)
        except CredentialsError as error:
            raise _Rejected(error.reason, error.username, algorithm=error.algorithm) from None
        user = creds.username
        if creds.realm != realm:
            raise _Rejected("wrong realm", user, algorithm=creds.algorithm)
        if creds.algorithm not in self._algorithms:
            raise _Rejected("unsupported algorithm", user, algorithm=creds.algorithm)
        issued = self._nonces.issued_at(creds.nonce, realm, client)
        if issued is None or issued > now + MAX_CLOCK_SKEW:
            right = self._digest_problem(creds, method) is None
            raise _Rejected("bad nonce", user, algorithm=creds.algorithm, digest_right=right)
        fresh = now - issued <= self._nonce_lifetime and issued > self._nonce_counts.floor
        problem = self._digest_problem(creds, method)
        if problem is not None:
            guess = fresh and not problem.endswith("credentials for user")  # our file lacks the HA1: no guess
            raise _Rejected(problem, user, algorithm=creds.algorithm, failure=guess)
        # The digest is right: is the nonce still usable (RFC 7616 §3.3, §3.4.5)?
        unusable = self._nonce_counts.problem(creds.nonce, issued, creds.nc, now, self._nonce_lifetime)
        if unusable is not None:
            stale = unusable == "stale nonce"
            raise _Rejected(unusable, user, stale=stale, algorithm=creds.algorithm, digest_right=True)
        self._nonce_counts.record(creds.nonce, issued, nonce_count(creds.nc))
        return AuthResult(ok=True, username=user, stale=False, reason="ok", algorithm=creds.algorithm)

    def _digest_problem(self, creds: Credentials, method: str) -> str | None:
        """The one digest check: ``None`` when the response matches the stored HA1, else why not.

        Unknown users and users without an HA1 for the algorithm are
        computed against a stand-in HA1, so they cost the same work.
        """
        entry = self._users.get(creds.username, creds.realm) if self._users is not None else None
        stored = entry.ha1(creds.algorithm) if entry is not None else None
        expected = compute_response(
            creds.algorithm,
            stored if stored is not None else self._dummy_ha1(creds),
            method,
            creds.uri,
            creds.nonce,
            creds.nc,
            creds.cnonce,
            creds.qop,
        )
        matches = hmac.compare_digest(expected.encode("ascii"), creds.response.lower().encode("utf-8", "replace"))
        if entry is None:
            return "no such user"
        if stored is None:
            return f"no {creds.algorithm} credentials for user"
        if not matches:
            return "wrong password"
        return None

    def _dummy_ha1(self, creds: Credentials) -> str:
        """A stand-in HA1 so unknown users cost the same work as known ones."""
        key = f"{creds.username}:{creds.realm}".encode()
        return hash_hex(creds.algorithm, hmac.new(self._secret, _DUMMY_LABEL + key, hashlib.sha256).hexdigest())
