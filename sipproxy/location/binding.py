"""The binding: one contact registered for one address-of-record.

RFC 3261 §10.3 step 7 keeps, per address-of-record, a list of bindings keyed
by contact URI; each carries the Call-ID and CSeq of the REGISTER that last
touched it (to reject out-of-order requests), its expiration and its q-value.
The remaining fields record where the registration came from (RFC 3327 Path,
RFC 5626 instance and reg-id) and what the bindings page shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FLOW_KEY", "TRANSPORTS", "Binding", "flow_key"]

FLOW_KEY = " reg-id="
"""Between a Contact URI and its reg-id in the key of a second flow registered with the same URI (RFC 5626 §6).

A space never appears in a SIP URI, so the key cannot be taken for one."""

TRANSPORTS = frozenset({"UDP", "TCP", "TLS", "SCTP", "WS", "WSS"})
"""Transport names as they appear in a Via sent-protocol, upper case."""

_CSEQ_LIMIT = 2**31
"""RFC 3261 §8.1.1.5: a CSeq sequence number is below 2**31."""

_EXPIRES_IN_TOLERANCE = 1e-6
"""Float noise ignored when rounding the remaining lifetime up to seconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """One entry of the location service (RFC 3261 §10.3 step 7).

    ``contact`` is the key within the ``aor``: the Contact URI, or for a
    second RFC 5626 flow of one instance registered with the same URI,
    that URI and the flow's reg-id (:func:`flow_key`); :attr:`contact_uri`
    is always the URI. ``expires_at``,
    ``registered_at`` and ``refreshed_at`` are absolute times on the clock
    the store runs on. The constructor rejects values a registrar could never
    have accepted, so an invalid binding cannot exist.
    """

    aor: str
    contact: str
    call_id: str
    cseq: int
    expires_at: float
    q: float = 1.0
    transport: str = "UDP"
    source_host: str = ""
    source_port: int = 0
    path: tuple[str, ...] = ()
    user_agent: str = ""
    instance: str | None = None
    reg_id: int | None = None
    registered_at: float = 0.0
    refreshed_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.aor:
            raise ValueError("binding needs an address-of-record")
        if not self.contact:
            raise ValueError("binding needs a contact")
        if not 0 <= self.cseq < _CSEQ_LIMIT:
            raise ValueError(f"CSeq {self.cseq} is outside 0..2**31-1")
        if not math.isfinite(self.expires_at):
            raise ValueError(f"expires_at {self.expires_at} is not finite")
        if not 0.0 <= self.q <= 1.0:
            raise ValueError(f"q {self.q} is outside 0..1")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {self.transport!r}")
        if not 0 <= self.source_port <= 65535:
            raise ValueError(f"source port {self.source_port} is outside 0..65535")
        if self.reg_id is not None and self.reg_id < 1:
            raise ValueError(f"reg-id {self.reg_id} is not positive")
        if not isinstance(self.path, tuple):
            object.__setattr__(self, "path", tuple(self.path))

    @property
    def contact_uri(self) -> str:
        """The Contact URI as the phone registered it: the Request-URI of requests to it (RFC 3261 §16.5)."""
        return self.contact.split(FLOW_KEY, 1)[0]

    def expires_in(self, now: float) -> int:
        """Whole seconds left at ``now``, as sent in a 200 OK (RFC 3261 §10.3 step 8).

        Rounds up, so a binding that is still live never reports 0 and a fresh
        3600-second registration reports 3600; once expired it reports 0.
        """
        remaining = self.expires_at - now
        if remaining <= 0:
            return 0
        return max(1, math.ceil(remaining - _EXPIRES_IN_TOLERANCE))

    @property
    def flow_bound(self) -> bool:
        """Is this binding reached only over the flow its REGISTER came on (RFC 5626 §3.1, RFC 7118 §5.3)?

        A WebSocket phone always is (its Contact names a ``.invalid`` host);
        any other phone is when it registered with ``+sip.instance`` and
        ``reg-id`` (only an RFC 5626 user agent sends ``reg-id``).  When
        such a flow is gone the binding is not reachable at its Contact.
        """
        return self.transport in ("WS", "WSS") or (self.instance is not None and self.reg_id is not None)

    def source(self) -> str:
        """Transport and address the REGISTER came from, e.g. ``"UDP 192.0.2.7:5062"``.

        IPv6 hosts are bracketed; without a known source host only the
        transport is given.
        """
        if not self.source_host:
            return self.transport
        host = f"[{self.source_host}]" if ":" in self.source_host else self.source_host
        return f"{self.transport} {host}:{self.source_port}"


def flow_key(contact: str, reg_id: int) -> str:
    """The key of a flow whose Contact URI another flow of the same instance holds already (RFC 5626 §6).

    The location service keys bindings by contact; RFC 5626 §6 keys an
    outbound registration by (instance, reg-id) instead, and a phone
    registering on two flows (two edge proxies, two nodes) may give both the
    same Contact URI, as the RFC's own example does.
    """
    return f"{contact}{FLOW_KEY}{reg_id}"
