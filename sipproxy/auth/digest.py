# -*- test-case-name: tests.test_auth_digest -*-
"""The digest computation and the credentials it checks (RFC 7616 §3.4, RFC 8760, RFC 3261 §22.4).

RFC 3261 §22.4 reuses HTTP Digest (RFC 2617, updated by RFC 7616); RFC 8760
adds SHA-256 to SIP and orders challenges strongest first (§2.4). This
module is the arithmetic and the grammar, no state: the algorithm names
(RFC 7616 §6.1), H and HA1 (§3.4.1, §3.4.2), the ``response`` value
(§3.4.1-3.4.3, RFC 2617 §3.2.2.1) and the ``digest-response`` fields of an
Authorization/Proxy-Authorization value (RFC 3261 §25.1, RFC 7616 §3.4).
Nonces are :mod:`sipproxy.auth.nonces`; the challenge/verify sequence that
uses both is :mod:`sipproxy.auth.authenticator`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sipproxy.auth.params import parse_auth_params

__all__ = [
    "Credentials",
    "CredentialsError",
    "base_algorithm",
    "by_preference",
    "canonical_algorithm",
    "compute_response",
    "ha1",
    "hash_hex",
    "parse_credentials",
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


def canonical_algorithm(algorithm: str) -> str | None:
    """The RFC 7616 §6.1 spelling of ``algorithm`` (case-insensitive), or None."""
    return _CANONICAL_ALGORITHMS.get(algorithm.upper())


def base_algorithm(algorithm: str) -> str | None:
    """The hash behind ``algorithm``: ``MD5`` or ``SHA-256``, -sess stripped."""
    canonical = canonical_algorithm(algorithm)
    if canonical is None:
        return None
    return canonical.removesuffix("-sess")


def by_preference(algorithms: Iterable[str]) -> tuple[str, ...]:
    """``algorithms`` in their canonical spelling, once each, strongest first (RFC 8760 §2.4)."""
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


def _require_algorithm(algorithm: str) -> str:
    canonical = canonical_algorithm(algorithm)
    if canonical is None:
        raise ValueError(f"unsupported digest algorithm: {algorithm!r}")
    return canonical


def hash_hex(algorithm: str, data: str) -> str:
    """H(data) for the hash behind ``algorithm`` (RFC 7616 §3.4.1), lowercase hex."""
    name = _HASHLIB_NAMES[_require_algorithm(algorithm).removesuffix("-sess")]
    return hashlib.new(name, data.encode("utf-8")).hexdigest()


def ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    """HA1 = H(username ":" realm ":" password), RFC 7616 §3.4.2.

    For the ``-sess`` algorithms this is the stored base value; the session
    key is derived per request in ``compute_response``.
    """
    return hash_hex(algorithm, f"{user}:{realm}:{password}")


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
        ha1 = hash_hex(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = hash_hex(algorithm, f"{method}:{uri}")
    if qop:
        if nc is None or cnonce is None:
            raise ValueError("qop needs nc and cnonce")
        return hash_hex(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return hash_hex(algorithm, f"{ha1}:{nonce}:{ha2}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """A ``digest-response`` (RFC 3261 §25.1), its fields checked for shape, not yet for truth.

    ``algorithm`` is canonical (MD5 when absent); ``nc`` is ``None`` exactly
    when ``qop`` is (the RFC 2069 form), and then it is not read at all.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str | None
    cnonce: str | None


class CredentialsError(ValueError):
    """An Authorization value that is no usable ``digest-response``.

    ``reason`` is ``malformed credentials``, ``unsupported algorithm`` or
    ``unsupported qop``; ``username`` and ``algorithm`` are what could be
    read (untrusted).
    """

    def __init__(self, reason: str, username: str | None = None, *, algorithm: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.username = username
        self.algorithm = algorithm


def parse_credentials(header_value: str) -> Credentials:
    """An Authorization/Proxy-Authorization value as :class:`Credentials` (RFC 3261 §22.4, §25.1)."""
    try:
        scheme, params = parse_auth_params(header_value)
    except ValueError:
        raise CredentialsError("malformed credentials") from None
    if scheme.lower() != "digest":
        raise CredentialsError("malformed credentials", params.get("username"))
    return _credentials_from_params(params)


def _credentials_from_params(params: dict[str, str]) -> Credentials:
    """Validate the digest-response fields of RFC 3261 §25.1 / RFC 7616 §3.4."""
    username = params.get("username")
    required = ("username", "realm", "nonce", "uri", "response")
    if username is None or any(key not in params for key in required):
        raise CredentialsError("malformed credentials", username)
    algorithm = canonical_algorithm(params.get("algorithm", "MD5"))
    if algorithm is None:
        raise CredentialsError("unsupported algorithm", username, algorithm=params.get("algorithm"))
    qop, nc, cnonce = params.get("qop"), params.get("nc"), params.get("cnonce")
    if qop is not None:
        if qop.lower() != "auth":
            raise CredentialsError("unsupported qop", username)
        if nc is None or cnonce is None or not _NC.fullmatch(nc):
            raise CredentialsError("malformed credentials", username)
    elif algorithm.endswith("-sess") and cnonce is None:
        raise CredentialsError("malformed credentials", username)
    return Credentials(
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
