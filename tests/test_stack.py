"""sipproxy.stack: which core gets a request (the tutorial's sip.xml), and what the server answers itself.

The stack is driven directly, as the transaction layer would: every request
through the real parser, a recording server transaction, a real registrar
on an in-memory location store, and a proxy that only records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from sipproxy.errors import SipError
from sipproxy.locality import Domains, LocalAddress
from sipproxy.location import Binding, LocationStore
from sipproxy.message import ParseError, Request, Response, parse_message
from sipproxy.metrics import Metrics
from sipproxy.proxy.validate import ALLOW
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.stack import SipStack
from sipproxy.transaction import Source, TransactionError

try:
    from tests.messages import make_request, make_response_bytes, parse_request, parse_response
except ImportError:  # pragma: no cover
    from messages import make_request, make_response_bytes, parse_request, parse_response  # type: ignore[no-redef]

LOCAL = LocalAddress("127.0.0.1", 5070)
DOMAINS = Domains(["example.test"])  # --domain example.test: our address is not one of the domains
ALICE = Source("UDP", "127.0.0.1", 40000)
TORTURE = Path(__file__).parent / "data" / "torture"


def request(
    method: str = "OPTIONS",
    uri: str = "sip:127.0.0.1:5070",
    *,
    to: str = "sip:127.0.0.1:5070",
    headers: tuple[str, ...] = (),
    contact: str | None = None,
) -> Request:
    """What a monitor on 127.0.0.1:40000 sends (an OPTIONS to our address and port unless told), parsed."""
    contact_line = () if contact is None else (f"Contact: {contact}",)
    return parse_request(
        make_request(
            method,
            uri,
            via="SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-stack1;rport",
            from_="<sip:monitor@example.test>;tag=m1",
            to=f"<{to}>",
            call_id="stack-1@127.0.0.1",
            extra=(*headers, *contact_line),
        )
    )


class ServerTx:
    """What the stack calls on a server transaction: ``respond``; the responses as a peer would parse them."""

    def __init__(self, refuse: bool = False) -> None:
        self.responses: list[Response] = []
        self.refuse = refuse

    def respond(self, response: Response) -> None:
        if self.refuse:
            raise TransactionError("already answered")
        parsed = parse_message(response.to_bytes())
        assert isinstance(parsed, Response)
        self.responses.append(parsed)

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


class RecordingProxy:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.responses: list[Response] = []

    def handle_request(self, request: Request, source: Source, stx: Any) -> None:
        self.requests.append(request)

    def handle_response(self, response: Response, source: Source) -> None:
        self.responses.append(response)


class Server:
    def __init__(self, *, proxy: bool = True, local: LocalAddress | None = LOCAL, registrar: Any = None) -> None:
        self.metrics = Metrics()
        self.store = LocationStore(Clock())
        self.registrar = registrar or Registrar(
            self.store, Clock(), RegistrarSettings(domains=frozenset(DOMAINS.names)), local=local
        )
        self.proxy = RecordingProxy() if proxy else None
        self.stack = SipStack(
            DOMAINS,
            self.metrics,
            registrar=self.registrar,
            proxy=self.proxy,
            is_registered=lambda aor: bool(self.store.lookup(aor)),
            local=local,
        )

    def send(self, message: Request) -> ServerTx:
        stx = ServerTx()
        self.stack.request_received(message, ALICE, stx)  # type: ignore[arg-type]
        return stx

    def proxied(self) -> list[str]:
        assert self.proxy is not None
        return [r.uri_text for r in self.proxy.requests]


# -- OPTIONS to the server itself (RFC 3261 §11.2) -----------------------------------


@pytest.mark.parametrize(
    "uri",
    ["sip:127.0.0.1:5070", "sip:127.0.0.1", "sip:example.test", "sip:example.test:5080", "sip:ping@127.0.0.1:5070"],
)
def test_options_to_our_address_or_domain_is_answered_200_with_what_we_can_do(uri: str) -> None:
    server = Server()
    stx = server.send(request(uri=uri))
    [response] = stx.responses
    assert response.status == 200
    assert response.get("allow") == ALLOW and "REGISTER" in ALLOW
    assert response.get("accept") == "application/sdp"
    assert response.get("supported") == "outbound, path"
    assert response.get("server") == "sipproxy"
    assert response.to.tag is not None
    assert server.proxied() == []


@pytest.mark.parametrize("uri", ["sip:127.0.0.1:5999", "sip:bob@127.0.0.1:5999", "sip:elsewhere.test"])
def test_options_to_another_port_of_our_address_goes_to_the_proxy(uri: str) -> None:
    """Not us: a user agent or server next to us on this host (127.0.0.1 is no domain here), or another domain."""
    server = Server()
    assert server.send(request(uri=uri)).responses == []
    assert server.proxied() == [uri]


def test_options_to_a_registered_user_goes_to_the_phone() -> None:
    server = Server()
    server.store.update("sip:carol@example.test", put=[binding("sip:carol@example.test")])
    assert server.send(request(uri="sip:carol@example.test:5070")).responses == []
    assert server.proxied() == ["sip:carol@example.test:5070"]
    # a user nobody registered is a monitoring ping: answered here
    assert server.send(request(uri="sip:ping@example.test")).statuses == [200]


def test_unknown_require_in_an_options_to_us_is_420_listing_it() -> None:
    """RFC 3261 §8.2.2.3: the server answering an OPTIONS itself is its UAS."""
    server = Server()
    [response] = server.send(request(headers=("Require: path, foo, Foo",))).responses
    assert (response.status, response.get("unsupported")) == (420, "foo")
    assert response.to.tag is not None
    assert server.send(request(headers=("Require: path",))).statuses == [200]


def test_unknown_proxy_require_in_an_options_to_us_is_420_listing_it() -> None:
    server = Server()
    [response] = server.send(request(headers=("Proxy-Require: nothing",))).responses
    assert (response.status, response.get("unsupported")) == (420, "nothing")


def test_rfc4475_bext01_gets_420_with_unsupported() -> None:
    """RFC 4475 §3.3.4 bext01, sent to a server responsible for its Request-URI's domain."""
    data = (TORTURE / "bext01.sip").read_bytes()
    message = parse_message(data)
    assert isinstance(message, Request)
    proxy = RecordingProxy()
    stack = SipStack(Domains(["example.com"]), Metrics(), proxy=proxy)
    stx = ServerTx()
    stack.request_received(message, ALICE, stx)  # type: ignore[arg-type]
    [response] = stx.responses
    assert response.status == 420
    assert response.get("unsupported") == (
        "noproxiessupportthis, nordoanyproxiessupportthis, nothingsupportsthis, nothingsupportsthiseither"
    )
    assert proxy.requests == []


# -- REGISTER -------------------------------------------------------------------------


def test_register_to_our_address_and_port_reaches_the_registrar() -> None:
    """REGISTER sip:127.0.0.1:5070 with only example.test as a domain: us, so the registrar answers."""
    server = Server()
    stx = server.send(request("REGISTER", to="sip:carol@example.test", contact="<sip:carol@127.0.0.1:40000>"))
    assert stx.statuses == [200]
    assert [b.contact for b in server.store.lookup("sip:carol@example.test")] == ["sip:carol@127.0.0.1:40000"]
    assert server.metrics.value(server.metrics.registers, "accepted") == 1


def test_register_for_another_domain_goes_to_the_proxy_or_gets_404_without_one() -> None:
    server = Server()
    server.send(request("REGISTER", "sip:elsewhere.test", to="sip:carol@elsewhere.test"))
    assert server.proxied() == ["sip:elsewhere.test"]
    alone = Server(proxy=False)
    [response] = alone.send(request("REGISTER", "sip:elsewhere.test", to="sip:carol@elsewhere.test")).responses
    assert (response.status, response.reason) == (404, "Not our domain")


def test_rejected_register_is_counted_as_rejected() -> None:
    server = Server()
    stx = server.send(request("REGISTER", to="sip:carol@elsewhere.test", contact="<sip:carol@127.0.0.1:40000>"))
    assert stx.statuses == [404]
    assert server.metrics.value(server.metrics.registers, "rejected") == 1


# -- everything else, and the answering boundary ----------------------------------------


def test_other_requests_go_to_the_proxy() -> None:
    server = Server()
    server.send(request("INVITE", "sip:carol@example.test"))
    assert server.proxied() == ["sip:carol@example.test"]


def test_without_a_proxy_an_unknown_method_is_501_and_an_ack_is_not_answered() -> None:
    server = Server(proxy=False)
    assert server.send(request("FOO", "sip:carol@example.test")).statuses == [501]
    assert server.send(request("ACK", "sip:carol@example.test")).statuses == []


def test_a_refusal_raised_by_a_core_becomes_its_response() -> None:
    class Refusing:
        def is_for_us(self, request: Request) -> bool:
            return True

        def answer(self, request: Request, source: Source, send: Any) -> None:
            raise SipError(423, None, [("Min-Expires", "60")])

    server = Server(registrar=Refusing())
    [response] = server.send(request("REGISTER")).responses
    assert (response.status, response.reason, response.get("min-expires")) == (423, "Interval Too Brief", "60")
    assert response.to.tag is not None


def test_a_parse_error_met_while_dispatching_is_its_4xx_and_logged() -> None:
    class Picky(RecordingProxy):
        def handle_request(self, request: Request, source: Source, stx: Any) -> None:
            raise ParseError("Bad To")

    server = Server()
    server.stack.proxy = Picky()
    with capturedLogs() as events:
        [response] = server.send(request("INVITE", "sip:carol@example.test")).responses
    assert (response.status, response.reason) == (400, "Bad To")
    assert any(e["log_level"] == LogLevel.warn and e.get("reason") == "Bad To" for e in events)


def test_a_bug_is_500_and_logged_never_raised() -> None:
    class Broken(RecordingProxy):
        def handle_request(self, request: Request, source: Source, stx: Any) -> None:
            raise RuntimeError("bug")

    server = Server()
    server.stack.proxy = Broken()
    with capturedLogs() as events:
        stx = server.send(request("INVITE", "sip:carol@example.test"))
    assert stx.statuses == [500]
    assert any(e["log_level"] == LogLevel.critical for e in events)


def test_an_answer_the_transaction_refuses_is_logged_not_raised() -> None:
    server = Server()
    with capturedLogs() as events:
        server.stack.request_received(request(), ALICE, ServerTx(refuse=True))  # type: ignore[arg-type]
    assert any(e["log_level"] == LogLevel.warn and e.get("status") == 200 for e in events)


def test_stray_responses_go_to_the_proxy_or_are_dropped() -> None:
    response = parse_response(
        make_response_bytes(
            method="BYE",
            via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx",
            from_="<sip:a@x>;tag=1",
            to="<sip:b@x>;tag=2",
            call_id="c",
        )
    )
    server = Server()
    server.stack.response_received(response, ALICE)
    assert server.proxy is not None and server.proxy.responses == [response]
    Server(proxy=False).stack.response_received(response, ALICE)  # nothing to hand it to: dropped


def binding(aor: str) -> Binding:
    return Binding(
        aor=aor,
        contact="sip:carol@127.0.0.1:40000",
        call_id="reg-1",
        cseq=1,
        expires_at=3600.0,
        transport="UDP",
        source_host="127.0.0.1",
        source_port=40000,
    )
