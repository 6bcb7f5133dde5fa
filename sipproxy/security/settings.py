# -*- test-case-name: tests.test_security_settings -*-
"""The security knobs as one value, made once from the command line.

RFC 3261 §22 (digest, with RFC 7616 and RFC 8760 for the algorithms) and
§26.1.5/§26.4.4 (denial of service is left to the implementation) name what
these settings govern; ``sipproxy.tap`` checks the options' syntax and this
module turns them into a :class:`SecuritySettings`.  The users file is read
here and nowhere else: :func:`load_users` is what ``tap`` calls to check it,
and it keeps the result in the options (``users-db``) so that
:func:`users_from_options` does not read the file a second time.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sipproxy.auth import UserDB

__all__ = ["DEFAULT_RATE", "SecuritySettings", "load_users", "settings_from_options", "users_from_options"]

DEFAULT_RATE = 20.0
"""Requests per second per source address when ``--users`` is given and ``--rate-limit`` is not."""


@dataclass(frozen=True)
class SecuritySettings:
    """Every knob, as a value.  ``rate=None`` turns the rate limit off; ``overload_lag=0`` the lag watch."""

    realm: str = "localhost"
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    nonce_lifetime: float = 300.0
    max_failures: int = 10
    """Failures of one (address, user name) pair, or of one user name, that block it; also how many
    different user names failing from one address make it a scanner (times ``bound_factor`` while
    it holds a binding)."""
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
    overload_lag: float = 0.0
    """Seconds the reactor may run behind before new requests get 503 (0: not watched)."""
    overload_wait: float = 0.5
    """The tolerance of the admission by wait time (``--overload-wait``, see
    :mod:`sipproxy.security.congestion`): shed from 40 % of it, drop UDP datagrams at 4x; 0: off."""
    log_every: float = 60.0
    """At most one log line per source and kind of refusal in this many seconds."""
    unanswered_challenges: int = 3
    """Challenges a phone leaves unanswered before the log says so (once)."""

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
        if not self.overload_lag >= 0 or not self.overload_wait >= 0 or self.unanswered_challenges < 1:
            raise ValueError("overload_lag and overload_wait must not be negative, unanswered_challenges positive")

    @property
    def effective_burst(self) -> float:
        if self.burst is not None:
            return self.burst
        return max(1.0, (self.rate or 1.0) * 5)


def load_users(path: str | os.PathLike[str]) -> UserDB:
    """Read the ``--users`` file; ``OSError``, ``UnicodeDecodeError`` or ``ValueError`` (naming the line) if bad."""
    return UserDB.load(path)


def users_from_options(options: Mapping[str, Any]) -> UserDB | None:
    """The users of ``--users``: as ``tap`` already read them (``users-db``), else read now; ``None`` without it."""
    loaded = options.get("users-db")
    if isinstance(loaded, UserDB):
        return loaded
    path = options.get("users")
    return load_users(path) if path else None


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
    algorithms = _option(options, "digest-algorithms", SecuritySettings.algorithms)
    if isinstance(algorithms, str):
        algorithms = tuple(a.strip() for a in algorithms.split(",") if a.strip())
    return SecuritySettings(
        realm=realm,
        algorithms=tuple(algorithms),
        max_failures=int(_option(options, "max-failures", SecuritySettings.max_failures)),
        block_for=float(_option(options, "block-time", SecuritySettings.block_for)),
        nonce_lifetime=float(_option(options, "nonce-lifetime", SecuritySettings.nonce_lifetime)),
        rate=rate,
        max_message_size=int(_option(options, "max-message-size", SecuritySettings.max_message_size)),
        max_transactions=int(_option(options, "max-transactions", SecuritySettings.max_transactions)),
        overload_lag=float(_option(options, "overload-lag", 0.0)),
        overload_wait=float(_option(options, "overload-wait", SecuritySettings.overload_wait)),
    )
