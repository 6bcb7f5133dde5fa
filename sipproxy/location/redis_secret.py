# -*- test-case-name: tests.test_location_redis -*-
"""The server secret in Redis, read at start-up, before the reactor runs: the same on every node.

The secret signs digest nonces and Record-Route dialog tokens
(``sipproxy.security``); every node must hold the same one, so that a
nonce issued by one node is accepted by another and a dialog set up
through one is recognised by all. The first node to start makes it
(``SET sipproxy:secret <32 random bytes> NX``); the others read it. It is
read once, blocking, while ``twistd`` starts (as ``--db`` is opened), so a
node that cannot reach Redis refuses to start with one line rather than
run with a secret of its own. A few lines of RESP over a socket: it runs
before the reactor, where txredisapi cannot.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

from sipproxy.location.redis_url import RedisAddress

__all__ = ["RedisReplyError", "server_secret"]

KEY = b"sipproxy:secret"
TIMEOUT = 5.0


class RedisReplyError(Exception):
    """Redis answered with an error (``-ERR ...``, ``-WRONGPASS ...``)."""


def server_secret(address: RedisAddress, make: Callable[[], bytes]) -> bytes:
    """The secret kept in Redis, made with ``make()`` by the first node; ``OSError`` or :class:`RedisReplyError`."""
    with socket.create_connection((address.host, address.port), timeout=TIMEOUT) as raw:
        sock: socket.socket = raw
        if address.tls:
            sock = ssl.create_default_context(cafile=address.ca).wrap_socket(raw, server_hostname=address.host)
        reader = sock.makefile("rb")
        if address.password is not None:
            auth = [b"AUTH", address.password.encode()]
            if address.username:
                auth.insert(1, address.username.encode())
            _call(sock, reader, *auth)
        _call(sock, reader, b"SELECT", str(address.db).encode())
        _call(sock, reader, b"SET", KEY, make(), b"NX")
        secret = _call(sock, reader, b"GET", KEY)
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise RedisReplyError(f"{KEY.decode()} does not hold a secret of at least 16 bytes")
    return secret


def _call(sock: socket.socket, reader: object, *args: bytes) -> object:
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    return _reply(reader)


def _reply(reader: object) -> object:
    line = reader.readline()  # type: ignore[attr-defined]
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"-":
        raise RedisReplyError(rest.decode(errors="replace"))
    if kind in (b"+", b":"):
        return rest
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data = reader.read(length + 2)  # type: ignore[attr-defined]
        return data[:-2]
    raise RedisReplyError(f"unexpected reply {line[:40]!r}")
