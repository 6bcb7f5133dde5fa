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


class _Flush:
    """Registered before every metric: a scrape first adds the counts :meth:`Metrics.inc` kept to the counters."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> list[Any]:
        self.metrics.flush()
        return []


class Metrics:
    """The server's counters and gauges, in its own registry.

    The hot path counts with :meth:`inc` (and :meth:`shed_request`,
    :meth:`method`, :meth:`status`): one dictionary update per count, added
    to the Prometheus counter when the registry is collected (a scrape of
    ``/metrics``) or a count is read with :meth:`value`.  A
    ``prometheus_client`` counter's ``inc`` takes a lock and checks its
    argument: three of them were a seventh of what a refused INVITE costs
    under overload (``bench/refusal_path.py``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._pending: dict[tuple[int, str], int] = {}
        """Counts not yet added to their counters, by (counter, label)."""
        self._children: dict[tuple[int, str], Any] = {}
        r.register(_Flush(self))  # type: ignore[arg-type]
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

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        gauge.set_function(read)

    def inc(self, counter: Counter, label: str) -> None:
        """``counter.labels(label).inc()``, counted now, added to the counter at the next scrape (hot path)."""
        self._count((id(counter), label), counter, label)

    def shed_request(self, method: str, reason: str) -> None:
        """``sip_shed_requests{method, reason}`` one up (``response`` for a dropped response)."""
        label = method if method in KNOWN_METHODS or method == "response" else "OTHER"
        self._count((id(self.shed), f"{label}\x00{reason}"), self.shed, label, reason)

    def _count(self, key: tuple[int, str], counter: Counter, *labels: str) -> None:
        pending = self._pending.get(key)
        if pending is None:
            self._children[key] = counter.labels(*labels)
            pending = 0
        self._pending[key] = pending + 1

    def flush(self) -> None:
        """Add the counts kept by :meth:`inc` to their counters."""
        children, pending = self._children, self._pending
        for key, count in pending.items():
            if count:
                children[key].inc(count)
                pending[key] = 0

    def value(self, metric: Counter | Gauge, *labels: str) -> float:
        """The value of ``metric`` (its child for ``labels``), counts kept by :meth:`inc` included."""
        self.flush()
        child = metric.labels(*labels) if labels else metric
        return child._value.get()  # type: ignore[no-any-return]

    def method(self, counter: Counter, method: str) -> None:
        self.inc(counter, method if method in KNOWN_METHODS else "OTHER")

    def status(self, counter: Counter, status: int) -> None:
        self.inc(counter, str(status))
