# -*- test-case-name: tests.test_transport_rfc3263 -*-
"""RFC 3263 §4.1 and RFC 2782, as pure functions: which NAPTR records a client uses, and the order of SRV records.

- :func:`naptr_choices`: the NAPTR records of a domain that lead to a
  transport we have, in ``order`` then ``preference`` (RFC 3403 §4.1), each
  as (transport, SRV name); for a ``sips:`` URI only the TLS-based services
  (RFC 3263 §4.1: "SIPS+D2T", "SIPS+D2W").
- :func:`srv_name`: the SRV name asked for a transport when there is no
  usable NAPTR record, or the URI named the transport (§4.1).
- :func:`srv_order`: the SRV records in the order a client tries them:
  lowest priority first, and within one priority the RFC 2782 weighted
  random order ("Usage rules"), with the random source given (a fixed seed
  in tests).

No I/O: ``resolve.py`` asks the DNS, these decide what the answers mean.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from random import Random
from typing import NamedTuple

__all__ = ["NAPTR_SERVICES", "SrvRecord", "naptr_choices", "srv_name", "srv_order"]

#: RFC 3263 §4.1 (and RFC 4168 for SCTP, RFC 7118 §6 for WebSocket): NAPTR service -> (transport, secure).
NAPTR_SERVICES: dict[str, tuple[str, bool]] = {
    "SIP+D2U": ("UDP", False),
    "SIP+D2T": ("TCP", False),
    "SIP+D2S": ("SCTP", False),
    "SIP+D2W": ("WS", False),
    "SIPS+D2T": ("TLS", True),
    "SIPS+D2S": ("TLS-SCTP", True),
    "SIPS+D2W": ("WSS", True),
}

#: RFC 3263 §4.1: the SRV service and protocol labels of each transport.
_SRV_LABELS: dict[str, str] = {
    "UDP": "_sip._udp",
    "TCP": "_sip._tcp",
    "SCTP": "_sip._sctp",
    "WS": "_sip._ws",
    "TLS": "_sips._tcp",
    "TLS-SCTP": "_sips._sctp",
    "WSS": "_sips._ws",
}


class NaptrRecord(NamedTuple):
    order: int
    preference: int
    flags: str
    service: str
    replacement: str


class SrvRecord(NamedTuple):
    priority: int
    weight: int
    port: int
    target: str


def srv_name(transport: str, domain: str) -> str:
    """``_sip._udp.example.com`` for UDP, ``_sips._tcp.example.com`` for TLS (§4.1)."""
    return f"{_SRV_LABELS[transport.upper()]}.{domain}"


def is_secure(transport: str) -> bool:
    return transport.upper() in ("TLS", "TLS-SCTP", "WSS")


def naptr_choices(records: Iterable[NaptrRecord], secure: bool, supported: Collection[str]) -> list[tuple[str, str]]:
    """§4.1: the usable NAPTR records, best first, as (transport, SRV name to ask).

    Usable: flag "s" (the next lookup is SRV), a SIP service whose transport
    is in ``supported``, and for a ``sips:`` URI a secure one.  Records with
    other services (E2U, SIP over transports we lack) are skipped, as §4.1
    tells a client to.
    """
    chosen: list[tuple[int, int, str, str]] = []
    for record in records:
        service = NAPTR_SERVICES.get(record.service.upper())
        if service is None or record.flags.lower() != "s" or not record.replacement:
            continue
        transport, service_secure = service
        if transport not in supported or (secure and not service_secure):
            continue
        chosen.append((record.order, record.preference, transport, record.replacement.rstrip(".")))
    chosen.sort(key=lambda c: (c[0], c[1]))
    return list(dict.fromkeys((transport, name) for _, _, transport, name in chosen))


def srv_order(records: Sequence[SrvRecord], rng: Random) -> list[SrvRecord]:
    """RFC 2782 "Usage rules": by priority, lowest first; within a priority, a weighted random order.

    Within one priority, the records of weight 0 are put first, then, until
    none is left: a number is drawn uniformly from 0 to the sum of the
    remaining weights, and the first record whose running sum of weights
    reaches it is taken next.  A weight-0 record is thereby chosen only
    rarely before the others, as RFC 2782 wants.  A target of "." means
    "no such service here" and is left out.
    """
    usable = [r for r in records if r.target not in ("", ".")]
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in usable}):
        remaining = [r for r in usable if r.priority == priority]
        while remaining:
            remaining.sort(key=lambda r: r.weight != 0)  # stable: weight 0 first, the rest in DNS order
            pick = rng.randint(0, sum(r.weight for r in remaining))
            running = 0
            for index, record in enumerate(remaining):
                running += record.weight
                if running >= pick:
                    out.append(remaining.pop(index))
                    break
    return out
