"""Prometheus metrics for one running server (its own registry, so tests never collide)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["Metrics", "KNOWN_METHODS"]

#: Methods counted under their own name; any other token a peer sends is "OTHER",
#: so that nobody can grow the metrics without bound by inventing methods.
KNOWN_METHODS = frozenset(
    [
        "INVITE",
        "ACK",
        "CANCEL",
        "BYE",
        "OPTIONS",
        "REGISTER",
        "MESSAGE",
        "SUBSCRIBE",
        "NOTIFY",
        "REFER",
        "INFO",
        "UPDATE",
        "PRACK",
        "PUBLISH",
    ]
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests_in = Counter("sip_requests_received", "SIP requests received, by method", ["method"], registry=r)
        self.responses_in = Counter(
            "sip_responses_received", "SIP responses received, by status code", ["status"], registry=r
        )
        self.responses_out = Counter("sip_responses_sent", "SIP responses sent, by status code", ["status"], registry=r)
        self.requests_out = Counter("sip_requests_sent", "SIP requests sent, by method", ["method"], registry=r)
        self.parse_errors = Counter(
            "sip_parse_errors", "Messages that could not be parsed, by transport", ["transport"], registry=r
        )
        self.registers = Counter(
            "sip_registers", "REGISTER requests answered, by result (accepted/rejected)", ["result"], registry=r
        )
        self.auth_failures = Counter("sip_auth_failures", "Failed digest authentications", registry=r)
        self.blocked = Counter(
            "sip_blocked_requests", "Requests refused by abuse limits, by reason", ["reason"], registry=r
        )
        self.shed = Counter(
            "sip_shed_requests",
            "Requests refused or dropped for overload, by method and reason (wait: 503 while messages wait too "
            "long; retransmission: the same 503 again, unparsed; stale: a UDP datagram dropped unread; "
            "transactions; lag)",
            ["method", "reason"],
            registry=r,
        )
        self.admission_wait = Gauge(
            "sip_admission_wait_seconds",
            "How long messages waited before they were read, as the last admission decision saw it",
            registry=r,
        )
        self.shedding = Gauge("sip_overload_shedding", "1 while new requests get 503 for overload, else 0", registry=r)
        self.refused_share = Gauge(
            "sip_overload_refused_share",
            "The share of new out-of-dialog requests refused for overload, 0 to 1 (RFC 7339's loss)",
            registry=r,
        )
        self.server_transactions = Gauge("sip_server_transactions", "Active server transactions", registry=r)
        self.client_transactions = Gauge("sip_client_transactions", "Active client transactions", registry=r)
        self.bindings = Gauge("sip_bindings", "Current registration bindings", registry=r)
        self.aors = Gauge("sip_aors", "Addresses-of-record with at least one binding", registry=r)
        self.tcp_connections = Gauge("sip_tcp_connections", "Open TCP connections, inbound and outbound", registry=r)
        self.tcp_closed = Counter(
            "sip_tcp_connections_closed",
            "TCP connections the server dropped, by reason (evicted, timeout)",
            ["reason"],
            registry=r,
        )

        self._children: dict[tuple[int, str], Any] = {}

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        gauge.set_function(read)

    def inc(self, counter: Counter, label: str) -> None:
        """``counter.labels(label).inc()``, with the labelled child looked up once (hot path)."""
        key = (id(counter), label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(label)
        child.inc()

    def shed_request(self, method: str, reason: str) -> None:
        """``sip_shed_requests{method, reason}`` one up (``response`` for a dropped response)."""
        label = method if method in KNOWN_METHODS or method == "response" else "OTHER"
        key = (id(self.shed), f"{label}\x00{reason}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.shed.labels(label, reason)
        child.inc()

    def method(self, counter: Counter, method: str) -> None:
        self.inc(counter, method if method in KNOWN_METHODS else "OTHER")

    def status(self, counter: Counter, status: int) -> None:
        self.inc(counter, str(status))
