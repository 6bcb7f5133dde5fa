"""Authentication and abuse limits for sipproxy: pure, no Twisted, no clock.

RFC 3261 §22 digest authentication (RFC 7616, RFC 8760 SHA-256): the
computation and credentials (``digest``), the nonces (``nonces``), the
challenge/verify sequence (``authenticator``); the users file (``users``),
and the failure/rate limits that guard them (``limits``).
"""

from __future__ import annotations

from sipproxy.auth.authenticator import AuthResult, DigestAuthenticator
from sipproxy.auth.digest import compute_response, ha1
from sipproxy.auth.limits import FailureTracker, RateLimiter
from sipproxy.auth.params import parse_auth_params
from sipproxy.auth.users import UserDB, UserEntry, write_user

__all__ = [
    "AuthResult",
    "DigestAuthenticator",
    "FailureTracker",
    "RateLimiter",
    "UserDB",
    "UserEntry",
    "compute_response",
    "ha1",
    "parse_auth_params",
    "write_user",
]
