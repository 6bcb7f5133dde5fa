# -*- test-case-name: tests.test_auth_digest -*-
"""Digest nonces: issued signed, checked without shared state, counted against replay (RFC 7616 §3.3, §3.4.5).

Nonces are self-validating (RFC 7616 §3.3 suggests a time stamp plus a keyed
hash): ``base64url(timestamp || random || HMAC-SHA256(secret, label ||
timestamp || random || realm || client))``, so any worker holding ``secret``
can check one without shared state. ``client`` is what the caller binds the
nonce to (sipproxy: the source address, an IPv6 /64): a nonce is good only
from where its challenge was sent, so an off-path attacker who spoofs source
addresses cannot present a nonce of ours for them (RFC 7616 §3.3 mentions
the client's address; RFC 3261 §26.1.5 the spoofing threat). Only the
nonce-count replay table (RFC 7616 §3.4.5) is local state, bounded in size.

Nothing here reads a clock: time arrives as ``now`` arguments and
randomness through an injectable callable.
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
from collections.abc import Callable

__all__ = ["MAX_CLOCK_SKEW", "MIN_SECRET_BYTES", "NonceCounts", "NonceSigner", "nonce_count"]

#: Seconds a nonce's time stamp may lie ahead of ``now`` and still be taken as ours.
MAX_CLOCK_SKEW = 5.0
MIN_SECRET_BYTES = 16

_NONCE_LABEL = b"sipproxy-digest-nonce\x00"
_OPAQUE_LABEL = b"sipproxy-digest-opaque\x00"
_TIMESTAMP = struct.Struct(">d")
_RANDOM_BYTES = 16
_MAC_BYTES = 32
_NONCE_BYTES = _TIMESTAMP.size + _RANDOM_BYTES + _MAC_BYTES
_NONCE_CHARS = math.ceil(_NONCE_BYTES * 4 / 3)
_NONCE_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{{_NONCE_CHARS}}}")
_NO_QOP_USE = 1 << 32


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class NonceSigner:
    """Make nonces and opaques under ``secret``, and read back the issue time of ours (RFC 7616 §3.3)."""

    def __init__(self, secret: bytes, random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._random_bytes = random_bytes

    def _mac(self, label: bytes, payload: bytes, realm: str, client: str = "") -> bytes:
        bound = realm.encode("utf-8") + (b"\x00" + client.encode("utf-8", "surrogateescape") if client else b"")
        return hmac.new(self._secret, label + payload + bound, hashlib.sha256).digest()

    def issue(self, realm: str, client: str, now: float) -> str:
        """A fresh nonce for ``realm``, good only from ``client``, stamped ``now``."""
        if not math.isfinite(now):
            raise ValueError("now must be finite")
        payload = _TIMESTAMP.pack(now) + self._random_bytes(_RANDOM_BYTES)
        return _b64encode(payload + self._mac(_NONCE_LABEL, payload, realm, client))

    def opaque(self, realm: str) -> str:
        """A fixed per-realm opaque; state lives in the nonce, so it is not checked."""
        return _b64encode(self._mac(_OPAQUE_LABEL, b"", realm)[:12])

    def issued_at(self, nonce: str, realm: str, client: str) -> float | None:
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


def nonce_count(nc: str | None) -> int:
    """The nonce-count of a response (RFC 7616 §3.4); a qop-less (RFC 2069) response uses its nonce up."""
    return int(nc, 16) if nc is not None else _NO_QOP_USE


class NonceCounts:
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

    def problem(self, nonce: str, issued: float, nc: str | None, now: float, lifetime: float) -> str | None:
        """Is a nonce of ours still usable with this ``nc`` (RFC 7616 §3.3, §3.4.5)? ``None`` if so.

        Else ``"stale nonce"`` (too old, or forgotten at or before ``floor``)
        or ``"nonce replay"`` (a count not above the last one, a zero count,
        or any reuse of a nonce a qop-less response -- ``nc`` ``None`` --
        used up).
        """
        self.prune(now, lifetime)
        last = self.last(nonce)
        count = nonce_count(nc)
        if now - issued > lifetime or (last is None and issued <= self.floor):
            return "stale nonce"
        if (last is None and count < 1) or (last is not None and (nc is None or count <= last)):
            return "nonce replay"
        return None

    def record(self, nonce: str, issued: float, count: int) -> None:
        if nonce not in self._last:
            while len(self._last) >= self._max_entries:
                evicted_at, evicted = heapq.heappop(self._by_issue)
                del self._last[evicted]
                self.floor = max(self.floor, evicted_at)
            heapq.heappush(self._by_issue, (issued, nonce))
        self._last[nonce] = count
