# -*- test-case-name: tests.test_location_redis_url -*-
"""``--store redis://[[user]:password@]host[:port][/db]`` (and ``rediss://`` for TLS): where the shared store is.

The form is Redis's own URL scheme (the one ``redis-cli -u`` and redis-py
read). The password is never shown: :meth:`RedisAddress.display` is what
logs and ``/healthz`` say.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["RedisAddress", "parse_redis_url"]

DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """One Redis server: address, database number, credentials, TLS or not."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = None
    username: str | None = None
    tls: bool = False
    ca: str | None = None
    """With TLS: a PEM file of the CAs Redis's certificate must chain to (``--store-ca``); None: the system's."""

    def display(self) -> str:
        """``redis://host:port/db`` (``rediss://`` with TLS), without the credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """The :class:`RedisAddress` ``url`` names; ``ValueError`` saying what is wrong with it otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("not a redis:// or rediss:// URL")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    if not host:
        raise ValueError("names no host")
    if port == 0:
        raise ValueError("the port is not a number from 1 to 65535")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database {path!r} is not a number")
    if parts.query or parts.fragment:
        raise ValueError("takes no query or fragment")
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    return RedisAddress(
        host=host,
        port=port or DEFAULT_PORT,
        db=int(path) if path else 0,
        password=password or None,
        username=username if password else None,
        tls=parts.scheme == "rediss",
    )
