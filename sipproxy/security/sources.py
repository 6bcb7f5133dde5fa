# -*- test-case-name: tests.test_security_guard -*-
"""Who sent a message, as the limits count it: source keys, the packet's address, a log throttle.

RFC 3261 §18.2.1 has the transport stamp ``received`` (and RFC 3581
``rport``) on the top Via when the packet's source differs from what the
Via says, so the top Via names the real source once the transport saw the
request.  Limits count by address, not by port: one phone uses one address,
and an IPv6 host usually holds a whole /64 (RFC 4291 §2.5.4), so IPv6
sources are counted per /64.
"""

from __future__ import annotations

from collections import OrderedDict

from sipproxy.message import Request
from sipproxy.transport.address import address_key

__all__ = ["Throttle", "aor_user", "request_address", "source_key"]


source_key = address_key
"""What limits count by: the IPv4 address or the IPv6 /64, as the transport's connection limits count."""


def request_address(request: Request) -> tuple[str, int]:
    """The address a request came from, read from its top Via (``received``/``rport`` or the sent-by)."""
    via = request.top_via
    return (via.received or via.host_bare).strip("[]"), via.rport or via.port or 5060


def aor_user(aor: str) -> str | None:
    """``sip:alice@example.test`` -> ``alice``."""
    _, _, rest = aor.partition(":")
    user, at, _ = rest.rpartition("@")
    return user if at else None


class Throttle:
    """At most one event per key per ``every`` seconds (for log lines); bounded."""

    def __init__(self, every: float, max_keys: int = 10_000) -> None:
        self.every = every
        self.max_keys = max_keys
        self._last: OrderedDict[str, float] = OrderedDict()

    def __call__(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        self._last.pop(key, None)
        self._last[key] = now
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return True
