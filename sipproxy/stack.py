# -*- test-case-name: tests.test_stack -*-
"""The seam between the transaction layer and the cores (the tutorial's ``sip.xml``).

REGISTER for one of our domains goes to the registrar, OPTIONS addressed to
the server itself is answered here, everything else goes to the proxy.
"For us" is :class:`sipproxy.locality.Locality`'s answer, the same object
the registrar and the proxy ask.

This is the answering boundary for the requests the server answers itself:
a :class:`SipError` or :class:`ParseError` raised on the way becomes the
response here (the registrar's ``handle`` is the boundary for REGISTER).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from twisted.logger import Logger

from sipproxy.errors import SipError
from sipproxy.locality import Domains, LocalAddress, Locality, canonical_aor
from sipproxy.message import ParseError, Request, Response, SipURI, make_response
from sipproxy.metrics import Metrics
from sipproxy.proxy.validate import ALLOW, SERVER, answer_options, refusal_response
from sipproxy.randomness import stable_tag
from sipproxy.transaction import ServerTransaction, Source, TransactionError

__all__ = ["SipStack", "Domains", "Core", "ALLOW"]


class Core(Protocol):
    def handle_request(self, request: Request, source: Source, stx: ServerTransaction | None) -> None: ...
    def handle_response(self, response: Response, source: Source) -> None: ...


class Registrar(Protocol):
    def is_for_us(self, request: Request) -> bool: ...
    def answer(self, request: Request, source: Source, send: Callable[[Response], None]) -> None: ...


class SipStack:
    """Implements the transaction layer's ``TransactionUser``.

    ``local`` is our address (``None``: only ``domains`` are us, on port
    5060); ``is_registered(aor)`` tells whether an address-of-record (in
    :func:`canonical_aor` form) has bindings; ``challenged(request)``
    whether the proxy would ask the request for credentials (§16.3 step 6:
    ``Security.proxy_challenges``); ``proxy_extensions`` are the option
    tags the proxy accepts in Proxy-Require (its
    ``ProxySettings.extensions``).
    """

    log = Logger()

    def __init__(
        self,
        domains: Domains,
        metrics: Metrics,
        registrar: Registrar | None = None,
        proxy: Core | None = None,
        is_registered: Callable[[str], bool] = lambda aor: False,
        server_name: str = SERVER,
        *,
        challenged: Callable[[Request], bool] = lambda request: False,
        local: LocalAddress | None = None,
        proxy_extensions: Collection[str] = frozenset(),
    ) -> None:
        self.domains = domains
        self.locality = Locality(local, domains)
        self.metrics = metrics
        self.registrar = registrar
        self.proxy = proxy
        self.is_registered = is_registered
        self.challenged = challenged
        self.server_name = server_name
        self.proxy_extensions = proxy_extensions

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
        except SipError as refusal:
            self._answer(stx, refusal_response(request, refusal, stable_tag(request)))
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

        The question the registrar asks in §10.3 step 1,
        :meth:`Locality.is_us_or_our_domain`: one of our domains (whatever
        the port) or us (our address on our port, ``sip:127.0.0.1:5070`` from
        a load balancer, also when only ``--domain example.test`` is given).
        With no user part, or a user of ours nobody registered (a monitoring
        ping such as ``sipsak -s sip:ping@proxy``, whose 0.9.8 release cuts a
        five-digit port in the Request-URI to four); an OPTIONS to a
        registered user is proxied to the phone.

        Except, with a user part, a request the proxy would challenge
        (``--users``, From one of our domains): it goes to the proxy
        whatever the user, which answers 407 before it looks anyone up
        (§16.3 step 6 before §16.5), then the phone's answer or 480. Were
        an unregistered user answered 200 here, the 407 for a registered
        one would tell a scanner (sipvicious ``svwar -m OPTIONS``) who
        exists.
        """
        uri = request.uri
        if not isinstance(uri, SipURI) or not self.locality.is_us_or_our_domain(uri):
            return False
        if uri.user is None:
            return True
        return not self.challenged(request) and not self.is_registered(canonical_aor(uri))

    def options_response(self, request: Request) -> Response:
        """RFC 3261 §11.2 what we can do, or §8.2.2.3 420 (raised as :class:`SipError`) for an unknown Require."""
        return answer_options(request, stable_tag(request), self.proxy_extensions, self.server_name)

    def _answer(self, stx: ServerTransaction | None, response: Response) -> None:
        if stx is None:
            return
        try:
            stx.respond(response)
        except TransactionError as exc:
            self.log.warn("Could not answer {status}: {error}", status=response.status, error=str(exc))
