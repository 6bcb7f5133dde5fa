"""Address helpers shared by the transports."""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["address_key", "normalize_host"]


def normalize_host(host: str) -> str:
    """``::ffff:192.0.2.1`` -> ``192.0.2.1``; IPv6 without brackets."""
    host = host.strip("[]")
    if host.lower().startswith("::ffff:") and "." in host:
        return host[7:]
    return host


@functools.lru_cache(maxsize=4096)
def address_key(host: str) -> str:
    """Who a limit counts a peer as: its IPv4 address, or its IPv6 /64 (``2001:db8::/64``).

    An IPv6 host usually holds a whole /64 (RFC 4291 §2.5.4): counted per
    address, one host could take every connection slot.
    """
    host = normalize_host(host)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:c000:201, the hex spelling normalize_host leaves
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
