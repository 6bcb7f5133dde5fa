"""Address helpers shared by the transports."""

from __future__ import annotations

__all__ = ["normalize_host"]


def normalize_host(host: str) -> str:
    """``::ffff:192.0.2.1`` -> ``192.0.2.1``; IPv6 without brackets."""
    host = host.strip("[]")
    if host.lower().startswith("::ffff:") and "." in host:
        return host[7:]
    return host
