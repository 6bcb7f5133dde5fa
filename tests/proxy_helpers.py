"""Shared fixtures for the proxy tests: messages through the real parser, a fake transaction layer, a harness.

A helpers module, not a test module: the ``test_proxy_*`` modules import
from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock

from sipproxy.location import Binding, LocationStore
from sipproxy.message import Request, Response, make_response, parse_message
from sipproxy.proxy import LocalAddress, Proxy, ProxySettings
from sipproxy.transaction import Source, Target, TransactionError, build_cancel

try:
    from tests import messages
    from tests.messages import parse_request
except ImportError:  # pragma: no cover
    import messages  # type: ignore[no-redef]
    from messages import parse_request  # type: ignore[no-redef]

LOCAL = LocalAddress("192.0.2.1", 5060)
DOMAINS = frozenset({"example.test", "192.0.2.1", "proxy.example.test"})
ALICE = Source("UDP", "192.0.2.7", 5060)
ALICE_TCP = Source("TCP", "192.0.2.7", 40001)

_counter = iter(range(1, 10**9))


def make_request(
    method: str = "INVITE",
    uri: str = "sip:bob@example.test",
    *,
    via: str | None = None,
    branch: str | None = None,
    transport: str = "UDP",
    from_: str = "Alice <sip:alice@example.test>;tag=a1",
    to: str = "Bob <sip:bob@example.test>",
    call_id: str = "call-1@192.0.2.7",
    cseq: int = 1,
    max_forwards: int | None = 70,
    headers: tuple[str, ...] = (),
    body: str = "",
) -> Request:
    """A request as it arrives from Alice (UDP 192.0.2.7:5060) unless told otherwise, through the real parser."""
    if via is None:
        via = f"SIP/2.0/{transport} 192.0.2.7:5060;branch={branch or f'z9hG4bKalice{next(_counter)}'}"
    data = messages.make_request(
        method,
        uri,
        via=via,
        max_forwards=None if max_forwards is None else str(max_forwards),
        from_=from_,
        to=to,
        call_id=call_id,
        cseq=f"{cseq} {method}",
        extra=(*headers, *(["Content-Type: application/sdp"] if body else [])),
        body=body,
    )
    return parse_request(data)


def binding(
    aor: str = "sip:bob@example.test",
    contact: str = "sip:bob@192.0.2.20:5060",
    *,
    q: float = 1.0,
    transport: str = "UDP",
    source: tuple[str, int] = ("192.0.2.20", 5060),
    path: tuple[str, ...] = (),
    refreshed_at: float = 0.0,
) -> Binding:
    return Binding(
        aor=aor,
        contact=contact,
        call_id=f"reg-{contact}",
        cseq=1,
        expires_at=3600.0,
        q=q,
        transport=transport,
        source_host=source[0],
        source_port=source[1],
        path=path,
        refreshed_at=refreshed_at,
        registered_at=refreshed_at,
    )


class FakeServerTx:
    """A server transaction that records what the proxy answers (the real one's rules, simplified)."""

    def __init__(self, request: Request, source: Source) -> None:
        self.request = request
        self.source = source
        self.responses: list[Response] = []
        self.terminated = False

    def respond(self, response: Response) -> None:
        final = self.last_response is not None and self.last_response.status >= 200
        if final and not (
            self.request.method == "INVITE" and 200 <= self.last_response.status < 300 and 200 <= response.status < 300  # type: ignore[union-attr]
        ):
            raise TransactionError("a final response was already sent")
        self.responses.append(response)

    @property
    def last_response(self) -> Response | None:
        return self.responses[-1] if self.responses else None

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


class FakeClient:
    """A client transaction that only records; the test plays the far end through :meth:`Harness.reply`."""

    def __init__(self, request: Request, target: Target, owner: Any) -> None:
        self.request = request
        self.target = target
        self.owner = owner
        self.last_provisional: Response | None = None
        self.final_response: Response | None = None
        self.terminated = False

    def __repr__(self) -> str:
        return f"<FakeClient {self.request.method} {self.request.uri_text} -> {self.target}>"

    @property
    def method(self) -> str:
        return self.request.method


@dataclass
class FakeTransactions:
    """The three calls the proxy makes on the transaction layer."""

    sent: list[FakeClient] = field(default_factory=list)
    servers: list[FakeServerTx] = field(default_factory=list)
    fail_next: str | None = None

    def send_request(self, request: Request, target: Target, owner: Any) -> FakeClient:
        if self.fail_next is not None:
            reason, self.fail_next = self.fail_next, None
            raise TransactionError(reason)
        assert request.top_via.branch and request.top_via.branch.startswith("z9hG4bK")
        client = FakeClient(request, target, owner)
        self.sent.append(client)
        return client

    def find_invite_server_transaction(self, cancel: Request) -> FakeServerTx | None:
        for stx in self.servers:
            req = stx.request
            if req.method == "INVITE" and req.top_via.branch == cancel.top_via.branch and req.call_id == cancel.call_id:
                return stx
        return None

    def build_cancel(self, invite: Request) -> Request:
        return build_cancel(invite)


class Harness:
    """A proxy on a task.Clock, a fake transaction layer, a real LocationStore, recorded stateless sends."""

    def __init__(
        self,
        settings: ProxySettings = ProxySettings(),
        dns: dict[str, str | list[str] | None] | None = None,
        defer_dns: bool = False,
        authorize: Any = None,
        **proxy_options: Any,
    ) -> None:
        """``proxy_options``: further keyword arguments of :class:`Proxy` (``on_call``, ``flow_open``)."""
        self.clock = Clock()
        self.tx = FakeTransactions()
        self.store = LocationStore(Clock())  # its expiry timers stay out of the proxy clock
        self.stateless: list[tuple[Request | Response, Target | None]] = []
        self.dns = dns or {}
        self.dns_queries: list[str] = []
        self.defer_dns = defer_dns
        self.pending_dns: list[tuple[str, Any]] = []
        self.log = RecordingLog()
        self.proxy = Proxy(
            self.clock,
            self.tx,
            self.store,
            DOMAINS,
            LOCAL,
            lambda msg, target: self.stateless.append((msg, target)),
            self.resolve,
            settings,
            authorize=authorize,
            log=self.log,
            **proxy_options,
        )

    def resolve(self, hop: Target, callback: Any) -> None:
        """The fake DNS: ``dns`` maps a host to its address(es); deferred answers are given as an address too."""

        def answer(addresses: str | list[str] | None) -> None:
            if isinstance(addresses, str):
                addresses = [addresses]
            callback([hop._replace(host=address) for address in addresses or ()])

        self.dns_queries.append(hop.host)
        if self.defer_dns:
            self.pending_dns.append((hop.host, answer))
        else:
            answer(self.dns.get(hop.host))

    def register(self, *bindings: Binding) -> None:
        for b in bindings:
            self.store.update(b.aor, put=[b])

    def send(self, request: Request, source: Source = ALICE) -> FakeServerTx:
        """Deliver a new request to the proxy with its own server transaction (ACK: none)."""
        if request.method == "ACK":
            self.proxy.handle_request(request, source, None)
            return FakeServerTx(request, source)
        stx = FakeServerTx(request, source)
        self.tx.servers.append(stx)
        self.proxy.handle_request(request, source, stx)
        return stx

    def branches(self, method: str = "INVITE") -> list[FakeClient]:
        return [c for c in self.tx.sent if c.method == method]

    def reply(
        self,
        client: FakeClient,
        status: int,
        *,
        to_tag: str | None = "callee",
        headers: tuple[tuple[str, str], ...] = (),
        reason: str | None = None,
    ) -> Response:
        """The far end answers ``client``'s request (through the real message code)."""
        response = make_response(client.request, status, reason, to_tag=to_tag if status > 100 else None)
        for name, value in headers:
            response.add(name, value)
        response = parse_message(response.to_bytes())  # type: ignore[assignment]
        if status < 200:
            client.last_provisional = response
        elif client.final_response is None:
            client.final_response = response
        client.owner.response_received(client, response)
        return response


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, object]]] = []

    def info(self, format: str, **kwargs: object) -> None:
        self.events.append(("info", format, kwargs))

    def warn(self, format: str, **kwargs: object) -> None:
        self.events.append(("warn", format, kwargs))

    def failure(self, format: str, **kwargs: object) -> None:
        self.events.append(("failure", format, kwargs))

    @property
    def failures(self) -> list[str]:
        return [fmt for level, fmt, _ in self.events if level == "failure"]
