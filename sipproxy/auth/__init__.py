"""Authentication and abuse limits for sipproxy: pure, no Twisted, no clock.

RFC 3261 §22 digest authentication (RFC 7616, RFC 8760 SHA-256), the users
file, and the failure/rate limits that guard them.
"""

from __future__ import annotations

from sipproxy.auth.digest import (
    AuthResult,
    DigestAuthenticator,
    compute_response,
    ha1,
    parse_auth_params,
)
from sipproxy.auth.limits import FailureTracker, RateLimiter
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
