"""The seam between the transaction layer and the cores (the tutorial's ``sip.xml``).

REGISTER for one of our domains goes to the registrar, OPTIONS addressed to
the server itself is answered here, everything else goes to the proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from twisted.logger import Logger

from sipproxy.message import ParseError, Request, Response, SipURI, make_response
from sipproxy.message.uri import canonical_host
from sipproxy.metrics import Metrics
from sipproxy.proxy.validate import ALLOW
from sipproxy.randomness import stable_tag
from sipproxy.transaction import ServerTransaction, Source, TransactionError

__all__ = ["SipStack", "Domains", "Core", "ALLOW", "SUPPORTED"]

SUPPORTED = "path"


class Domains:
    """The host names and addresses we answer for (registrar domains and our own addresses)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(canonical_host(n) for n in names if n)

    def __contains__(self, host: object) -> bool:
        return isinstance(host, str) and canonical_host(host) in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.names))


class Core(Protocol):
    def handle_request(self, request: Request, source: Source, stx: ServerTransaction | None) -> None: ...
    def handle_response(self, response: Response, source: Source) -> None: ...


class Registrar(Protocol):
    def is_for_us(self, request: Request) -> bool: ...
    def answer(self, request: Request, source: Source, send: Callable[[Response], None]) -> None: ...


class SipStack:
    """Implements the transaction layer's ``TransactionUser``."""

    log = Logger()

    def __init__(
        self,
        domains: Domains,
        metrics: Metrics,
        registrar: Registrar | None = None,
        proxy: Core | None = None,
        is_registered: Callable[[str], bool] = lambda aor: False,
        server_name: str = "sipproxy",
    ) -> None:
        self.domains = domains
        self.metrics = metrics
        self.registrar = registrar
        self.proxy = proxy
        self.is_registered = is_registered
        self.server_name = server_name

    # -- TransactionUser ------------------------------------------------

    def request_received(self, request: Request, source: Source, stx: ServerTransaction | None) -> None:
        try:
            self._dispatch(request, source, stx)
        except ParseError as exc:
            self.log.warn(
                "Bad {method} from {host}:{port}: {reason}",
                method=request.method,
                host=source.host,
                port=source.port,
                reason=exc.reason,
            )
            self._answer(stx, make_response(request, exc.status, exc.reason))
        except Exception:
            self.log.failure("Bug while handling {method} {uri}", method=request.method, uri=request.uri_text)
            self._answer(stx, make_response(request, 500, "Server Internal Error"))

    def response_received(self, response: Response, source: Source) -> None:
        if self.proxy is None:
            self.log.debug("Dropped a response that matches no transaction: {status}", status=response.status)
            return
        try:
            self.proxy.handle_response(response, source)
        except Exception:
            self.log.failure("Bug while handling a stray {status} response", status=response.status)

    # -- dispatch -------------------------------------------------------

    def _dispatch(self, request: Request, source: Source, stx: ServerTransaction | None) -> None:
        method = request.method
        if method == "REGISTER" and self.registrar is not None and self.registrar.is_for_us(request):
            assert stx is not None

            def send(response: Response) -> None:
                self.metrics.inc(self.metrics.registers, "accepted" if response.status == 200 else "rejected")
                self._answer(stx, response)

            self.registrar.answer(request, source, send)
            return
        if method == "OPTIONS" and self.is_for_server(request):
            self._answer(stx, self.options_response(request))
            return
        if self.proxy is not None:
            self.proxy.handle_request(request, source, stx)
            return
        if method == "ACK" or stx is None:
            return
        if method == "REGISTER":
            self._answer(stx, make_response(request, 404, "Not our domain", to_tag=stable_tag(request)))
            return
        self._answer(stx, make_response(request, 501, "Not Implemented", to_tag=stable_tag(request)))

    def is_for_server(self, request: Request) -> bool:
        """Is the Request-URI the server itself?

        Our host with no user part, or a user of ours nobody registered (a
        monitoring ping such as ``sipsak -s sip:ping@proxy``); an OPTIONS to a
        registered user is proxied to the phone.
        """
        uri = request.uri
        if not isinstance(uri, SipURI) or uri.host not in self.domains:
            return False
        return uri.user is None or not self.is_registered(str(uri.aor()))

    def options_response(self, request: Request) -> Response:
        """RFC 3261 §11.2: what we can do."""
        response = make_response(request, 200, "OK", to_tag=stable_tag(request))
        response.add("Allow", ALLOW)
        response.add("Accept", "application/sdp")
        response.add("Supported", SUPPORTED)
        response.add("Server", self.server_name)
        return response

    def _answer(self, stx: ServerTransaction | None, response: Response) -> None:
        if stx is None:
            return
        try:
            stx.respond(response)
        except TransactionError as exc:
            self.log.warn("Could not answer {status}: {error}", status=response.status, error=str(exc))
