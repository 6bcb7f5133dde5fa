"""HTTP Digest authentication for SIP, sans-IO.

RFC 3261 §22.4 reuses HTTP Digest (RFC 2617, updated by RFC 7616); RFC 8760
adds SHA-256 to SIP and orders challenges strongest first (§2.4). Nothing here
reads a clock or touches the network: time arrives as ``now`` arguments and
randomness through an injectable callable.

Nonces are self-validating (RFC 7616 §3.3 suggests a time stamp plus a keyed
hash): ``base64url(timestamp || random || HMAC-SHA256(secret, label ||
timestamp || random || realm || client))``, so any worker holding ``secret``
can check one without shared state. ``client`` is what the caller binds the
nonce to (sipproxy: the source address, an IPv6 /64): a nonce is good only
from where its challenge was sent, so an off-path attacker who spoofs source
addresses cannot present a nonce of ours for them (RFC 7616 §3.3 mentions
the client's address; RFC 3261 §26.1.5 the spoofing threat). Only the
nonce-count replay table (RFC 7616 §3.4.5) is local state, bounded in size.

:class:`AuthResult` says whether a refusal is a *failure* worth counting
towards blocks: only a wrong answer to a fresh nonce we issued to that
client. Credentials naming a nonce we never issued (forged, from another
address, from before a restart) or an expired one cannot be told from
spoofed packets and are not failures; whether their digest is right is
still reported (``digest_right``) so that a phone holding an old nonce is
challenged again with ``stale=true`` instead of being asked for a password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import math
import re
import secrets
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sipproxy.auth.params import parse_auth_params, quote

if TYPE_CHECKING:
    from sipproxy.auth.users import UserDB

__all__ = [
    "AuthResult",
    "DigestAuthenticator",
    "base_algorithm",
    "canonical_algorithm",
    "compute_response",
    "ha1",
    "parse_auth_params",
]

_NC = re.compile(r"[0-9a-fA-F]{8}")

_HASHLIB_NAMES = {"MD5": "md5", "SHA-256": "sha256"}
_CANONICAL_ALGORITHMS = {
    "MD5": "MD5",
    "MD5-SESS": "MD5-sess",
    "SHA-256": "SHA-256",
    "SHA-256-SESS": "SHA-256-sess",
}
_PREFERENCE = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")

_NONCE_LABEL = b"sipproxy-digest-nonce\x00"
_OPAQUE_LABEL = b"sipproxy-digest-opaque\x00"
_DUMMY_LABEL = b"sipproxy-digest-dummy\x00"
_TIMESTAMP = struct.Struct(">d")
_RANDOM_BYTES = 16
_MAC_BYTES = 32
_NONCE_BYTES = _TIMESTAMP.size + _RANDOM_BYTES + _MAC_BYTES
_NONCE_CHARS = math.ceil(_NONCE_BYTES * 4 / 3)
_NONCE_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{{_NONCE_CHARS}}}")
_MAX_CLOCK_SKEW = 5.0
_NO_QOP_USE = 1 << 32
_MIN_SECRET_BYTES = 16


def canonical_algorithm(algorithm: str) -> str | None:
    """The RFC 7616 §6.1 spelling of ``algorithm`` (case-insensitive), or None."""
    return _CANONICAL_ALGORITHMS.get(algorithm.upper())


def base_algorithm(algorithm: str) -> str | None:
    """The hash behind ``algorithm``: ``MD5`` or ``SHA-256``, -sess stripped."""
    canonical = canonical_algorithm(algorithm)
    if canonical is None:
        return None
    return canonical.removesuffix("-sess")


def _require_algorithm(algorithm: str) -> str:
    canonical = canonical_algorithm(algorithm)
    if canonical is None:
        raise ValueError(f"unsupported digest algorithm: {algorithm!r}")
    return canonical


def _hash(algorithm: str, data: str) -> str:
    """H(data) for the hash behind ``algorithm`` (RFC 7616 §3.4.1), lowercase hex."""
    name = _HASHLIB_NAMES[_require_algorithm(algorithm).removesuffix("-sess")]
    return hashlib.new(name, data.encode("utf-8")).hexdigest()


def ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    """HA1 = H(username ":" realm ":" password), RFC 7616 §3.4.2.

    For the ``-sess`` algorithms this is the stored base value; the session
    key is derived per request in ``compute_response``.
    """
    return _hash(algorithm, f"{user}:{realm}:{password}")


def compute_response(
    algorithm: str,
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | None = None,
    cnonce: str | None = None,
    qop: str | None = None,
) -> str:
    """The ``response`` value, RFC 7616 §3.4.1-3.4.3 (RFC 2617 §3.2.2.1).

    ``ha1`` is the stored HA1 (also for -sess, whose session key
    H(HA1:nonce:cnonce) is derived here). With ``qop`` the response is
    H(HA1:nonce:nc:cnonce:qop:HA2); without it, the RFC 2069 form
    H(HA1:nonce:HA2). Only qop=auth is defined here: HA2 = H(method:uri).
    """
    algorithm = _require_algorithm(algorithm)
    if algorithm.endswith("-sess"):
        if cnonce is None:
            raise ValueError("-sess algorithms need a cnonce")
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop:
        if nc is None or cnonce is None:
            raise ValueError("qop needs nc and cnonce")
        return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")


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


@dataclass(frozen=True, slots=True, kw_only=True)
class _Credentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str | None
    cnonce: str | None


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


def _credentials_from_params(params: dict[str, str]) -> _Credentials:
    """Validate the digest-response fields of RFC 3261 §25.1 / RFC 7616 §3.4."""
    username = params.get("username")
    required = ("username", "realm", "nonce", "uri", "response")
    if username is None or any(key not in params for key in required):
        raise _Rejected("malformed credentials", username)
    algorithm = canonical_algorithm(params.get("algorithm", "MD5"))
    if algorithm is None:
        raise _Rejected("unsupported algorithm", username, algorithm=params.get("algorithm"))
    qop, nc, cnonce = params.get("qop"), params.get("nc"), params.get("cnonce")
    if qop is not None:
        if qop.lower() != "auth":
            raise _Rejected("unsupported qop", username)
        if nc is None or cnonce is None or not _NC.fullmatch(nc):
            raise _Rejected("malformed credentials", username)
    elif algorithm.endswith("-sess") and cnonce is None:
        raise _Rejected("malformed credentials", username)
    return _Credentials(
        username=username,
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=algorithm,
        qop=qop,
        nc=nc if qop is not None else None,
        cnonce=cnonce,
    )


class _NonceCounts:
    """Highest nonce-count seen per nonce (RFC 7616 §3.4.5), bounded.

    Entries leave once their nonce has expired. When full, the oldest-issued
    nonce is forgotten and ``floor`` rises to its issue time: an untracked
    nonce issued at or before ``floor`` must then be treated as stale, so
    eviction can never re-open a nonce for replay.
    """

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._last: dict[str, int] = {}
        self._by_issue: list[tuple[float, str]] = []
        self.floor = -math.inf

    def __len__(self) -> int:
        return len(self._last)

    def prune(self, now: float, lifetime: float) -> None:
        while self._by_issue and self._by_issue[0][0] + lifetime < now:
            _, nonce = heapq.heappop(self._by_issue)
            del self._last[nonce]

    def last(self, nonce: str) -> int | None:
        return self._last.get(nonce)

    def record(self, nonce: str, issued: float, count: int) -> None:
        if nonce not in self._last:
            while len(self._last) >= self._max_entries:
                evicted_at, evicted = heapq.heappop(self._by_issue)
                del self._last[evicted]
                self.floor = max(self.floor, evicted_at)
            heapq.heappush(self._by_issue, (issued, nonce))
        self._last[nonce] = count


def _sort_by_preference(algorithms: Iterable[str]) -> tuple[str, ...]:
    canonical: list[str] = []
    for algorithm in algorithms:
        name = canonical_algorithm(algorithm)
        if name is None:
            raise ValueError(f"unsupported digest algorithm: {algorithm!r}")
        if name not in canonical:
            canonical.append(name)
    if not canonical:
        raise ValueError("at least one digest algorithm is required")
    return tuple(sorted(canonical, key=_PREFERENCE.index))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


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
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"secret must be at least {_MIN_SECRET_BYTES} bytes")
        if not nonce_lifetime > 0:
            raise ValueError("nonce_lifetime must be positive")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be at least 1")
        self._users = users
        self._secret = secret
        self._nonce_lifetime = float(nonce_lifetime)
        self._algorithms = _sort_by_preference(algorithms)
        self._random_bytes = random_bytes
        self._nonce_counts = _NonceCounts(max_tracked_nonces)
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
        nonce = self._make_nonce(realm, client, now)
        common = f'realm={quote(realm)}, qop="auth"'
        tail = f"nonce={quote(nonce)}, opaque={quote(self._opaque(realm))}"
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
        creds = self._parse(header_value)
        user = creds.username
        if creds.realm != realm:
            raise _Rejected("wrong realm", user, algorithm=creds.algorithm)
        if creds.algorithm not in self._algorithms:
            raise _Rejected("unsupported algorithm", user, algorithm=creds.algorithm)
        issued = self._decode_nonce(creds.nonce, realm, client)
        if issued is None or issued > now + _MAX_CLOCK_SKEW:
            right = self._digest_problem(creds, method) is None
            raise _Rejected("bad nonce", user, algorithm=creds.algorithm, digest_right=right)
        fresh = now - issued <= self._nonce_lifetime and issued > self._nonce_counts.floor
        problem = self._digest_problem(creds, method)
        if problem is not None:
            guess = fresh and not problem.endswith("credentials for user")  # our file lacks the HA1: no guess
            raise _Rejected(problem, user, algorithm=creds.algorithm, failure=guess)
        self._check_fresh(creds, issued, now)
        self._nonce_counts.record(creds.nonce, issued, self._count(creds))
        return AuthResult(ok=True, username=user, stale=False, reason="ok", algorithm=creds.algorithm)

    @staticmethod
    def _parse(header_value: str) -> _Credentials:
        try:
            scheme, params = parse_auth_params(header_value)
        except ValueError:
            raise _Rejected("malformed credentials") from None
        if scheme.lower() != "digest":
            raise _Rejected("malformed credentials", params.get("username"))
        return _credentials_from_params(params)

    def _digest_problem(self, creds: _Credentials, method: str) -> str | None:
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

    def _check_fresh(self, creds: _Credentials, issued: float, now: float) -> None:
        """The digest is right: is the nonce still usable (RFC 7616 §3.3, §3.4.5)?"""
        counts = self._nonce_counts
        counts.prune(now, self._nonce_lifetime)
        last = counts.last(creds.nonce)
        count = self._count(creds)
        if now - issued > self._nonce_lifetime or (last is None and issued <= counts.floor):
            reason, stale = "stale nonce", True
        elif (last is None and count < 1) or (last is not None and (creds.qop is None or count <= last)):
            reason, stale = "nonce replay", False
        else:
            return
        raise _Rejected(reason, creds.username, stale=stale, algorithm=creds.algorithm, digest_right=True)

    @staticmethod
    def _count(creds: _Credentials) -> int:
        """The nonce-count; a qop-less (RFC 2069) response uses its nonce up."""
        return int(creds.nc, 16) if creds.nc is not None else _NO_QOP_USE

    def _dummy_ha1(self, creds: _Credentials) -> str:
        """A stand-in HA1 so unknown users cost the same work as known ones."""
        key = f"{creds.username}:{creds.realm}".encode()
        return _hash(creds.algorithm, hmac.new(self._secret, _DUMMY_LABEL + key, hashlib.sha256).hexdigest())

    def _mac(self, label: bytes, payload: bytes, realm: str, client: str = "") -> bytes:
        bound = realm.encode("utf-8") + (b"\x00" + client.encode("utf-8", "surrogateescape") if client else b"")
        return hmac.new(self._secret, label + payload + bound, hashlib.sha256).digest()

    def _make_nonce(self, realm: str, client: str, now: float) -> str:
        if not math.isfinite(now):
            raise ValueError("now must be finite")
        payload = _TIMESTAMP.pack(now) + self._random_bytes(_RANDOM_BYTES)
        return _b64encode(payload + self._mac(_NONCE_LABEL, payload, realm, client))

    def _opaque(self, realm: str) -> str:
        """A fixed per-realm opaque; state lives in the nonce, so it is not checked."""
        return _b64encode(self._mac(_OPAQUE_LABEL, b"", realm)[:12])

    def _decode_nonce(self, nonce: str, realm: str, client: str) -> float | None:
        """Issue time of a nonce we made for ``realm`` and ``client``, else ``None``."""
        if not _NONCE_SHAPE.fullmatch(nonce):
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _NONCE_BYTES or _b64encode(raw) != nonce:
            return None
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(_NONCE_LABEL, payload, realm, client)):
            return None
        (issued,) = _TIMESTAMP.unpack_from(payload)
        return float(issued) if math.isfinite(issued) else None
