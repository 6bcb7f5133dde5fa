# -*- test-case-name: tests.test_web -*-
"""The bindings page: the tutorial's ``index.jsp`` for an operator who keeps it open all day.

Routes (a Klein app on :class:`BindingsPage`):

- ``GET /``: every address-of-record with its contacts, live.
- ``GET /static/<name>``: the page's script and style sheet.
- ``GET /api/bindings``: the bindings as JSON; ``?aor=`` selects one AOR.
- ``GET /api/events``: Server-Sent Events, a ``snapshot`` event first and
  then one ``binding`` event per change of the location service, with its
  ``kind`` and ``reason`` (:data:`sipproxy.location.Reason`).
- ``DELETE /api/bindings/<aor>`` (``?contact=`` for one contact): removes bindings.
- ``GET /calls``: the Recent calls page, live; ``GET /api/calls`` the
  recent calls as JSON (``?aor=``, ``?call_id=``), ``GET /api/ladder?call_id=``
  one call's flow with its messages, ``GET /api/call-events`` a ``call``
  event per finished call (:mod:`sipproxy.web.calls`).  Message texts show
  what peers sent (credentials masked): these follow the removal rule, never
  served to a public request without a password.
- ``GET /history?aor=``: one address-of-record's binding history, the page;
  ``GET /api/history?aor=`` the same as JSON, newest first
  (:mod:`sipproxy.web.history`); these follow the removal rule too.
- ``GET /api/route?uri=&from=&method=``: routing explain, what the proxy's
  §16 steps would do with that request (nothing is sent), also a form on
  the Recent calls page.
- ``GET /healthz`` and ``GET /metrics``.

Who may do what is decided in front of the routes (:mod:`sipproxy.web.access`):
on a loopback listener every request's ``Host`` must name this machine
(against DNS rebinding); a public request (public listener, or forwarded
by a reverse proxy) needs HTTP Basic credentials (user ``admin``, the
``--web-password``) for everything but ``/healthz`` and ``/metrics``, wrong
ones throttled per client address. Removing bindings is open on a
loopback-only listener; a public request without a password configured
gets the page read-only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from typing import Any, cast

import jinja2
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request

from sipproxy.calls.ring import RecentCalls
from sipproxy.location import LocationService
from sipproxy.location.history import BindingHistory
from sipproxy.metrics import Metrics
from sipproxy.net import Clock
from sipproxy.web.access import ADMIN_USER, AccessGuard, HostCheck, client_address, forwarded
from sipproxy.web.calls import MAX_LISTED, CallHub, call_json, calls_answer, ladder_json, render_calls_page
from sipproxy.web.events import EventHub
from sipproxy.web.history import history_json, render_history_page
from sipproxy.web.render import EMPTY_BINDING, FlowState, binding_json, readable
from sipproxy.web.streams import MAX_STREAMS, PING_INTERVAL, EventStream, sse_message

__all__ = ["ADMIN_USER", "PING_INTERVAL", "BindingsPage", "EventStream", "Explain", "sse_message"]

Explain = Callable[[str, str, str], dict[str, Any]]
"""Routing explain: (Request-URI, From, method) -> the proxy's §16 steps as JSON-ready values."""


_STATIC = {
    "bindings.js": b"text/javascript; charset=utf-8",
    "bindings.css": b"text/css; charset=utf-8",
    "calls.js": b"text/javascript; charset=utf-8",
    "calls.css": b"text/css; charset=utf-8",
    "history.css": b"text/css; charset=utf-8",
}

_SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}


class BindingsPage:
    """The web face of the location service (see the module docstring for the routes)."""

    app = Klein()
    log = Logger()

    def __init__(
        self,
        store: LocationService,
        clock: Clock,
        metrics: Metrics,
        env: jinja2.Environment,
        healthy: Callable[[], bool | str],
        password: str | None = None,
        public: bool = False,
        debug: bool = False,
        hosts: Iterable[str] = (),
        max_streams: int = MAX_STREAMS,
        calls: RecentCalls | None = None,
        explain: Explain | None = None,
        flow: FlowState | None = None,
        history: BindingHistory | None = None,
    ) -> None:
        """Serve ``store``; ``public`` says the listener is reachable beyond loopback.

        ``hosts``: the server's names (domains, advertised host) that a
        ``Host`` header may carry on a loopback listener besides the
        loopback ones (:class:`HostCheck`). ``max_streams``:
        ``--max-event-streams`` (for each of the two event streams).
        ``calls``: the recent calls (``None``: ``--recent-calls 0``, the
        page says so).  ``explain``: the proxy's routing explain, for
        ``/api/route`` (``None``: no proxy, 404).  ``history``: the binding
        history (``None``: off, ``--history-events 0``); removals through
        the page are recorded in it with who made them.

        ``debug`` logs every event stream opening and closing (at debug
        level: ``twistd`` prints every level, so without ``--debug`` these
        lines are not emitted at all).
        """
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.env = env
        self.healthy = healthy
        self.password = password
        self.public = public
        self.debug = debug
        self.hosts = HostCheck(hosts)
        self.flow = flow
        """Each binding's flow state (RFC 5626 outbound) for the ``flow`` field; ``None``: not known."""
        self.hub = EventHub(store, clock, max_streams=max_streams, debug=debug, client=_client, flow=flow)
        self.calls = calls
        self.explain = explain
        self.history = history
        self.call_hub = CallHub(calls, clock, max_streams=max_streams, client=_client) if calls is not None else None

    def resource(self) -> IResource:
        """What to serve: the Klein app behind the :class:`AccessGuard` (Host, password and its throttle)."""
        return AccessGuard(
            cast(IResource, self.app.resource()),
            self.clock,
            public_listener=self.public,
            hosts=self.hosts,
            password=self.password,
            is_public=self._is_public,
        )

    def can_remove(self, request: Request) -> bool:
        """Whether the page shown to ``request`` offers removal buttons at all."""
        return not self._is_public(request) or self.password is not None

    def _is_public(self, request: Request) -> bool:
        """Public listener, or a loopback one reached through a reverse proxy."""
        return self.public or forwarded(request)

    # -- the page ---------------------------------------------------------

    @app.route("/", methods=["GET"])
    def index(self, request: Request) -> bytes:
        """The bindings page, rendered with the current bindings; the script keeps it live."""
        self._secure(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        now = self.clock.seconds()
        groups = [
            (readable(aor), [binding_json(b, now, self.flow) for b in self.store.lookup(aor)])
            for aor in self.store.aors()
        ]
        page = self.env.get_template("bindings.html").render(
            groups=groups,
            aor_count=len(groups),
            total=sum(len(rows) for _, rows in groups),
            placeholder=EMPTY_BINDING,
            can_remove=self.can_remove(request),
            needs_login=self._is_public(request) and self.password is not None,
        )
        return page.encode("utf-8")

    @app.route("/static/<name>", methods=["GET"])
    def static(self, request: Request, name: str) -> bytes:
        """The page's script and style sheet, straight from the template directory."""
        content_type = _STATIC.get(name)
        if content_type is None or self.env.loader is None:
            return self._json(request, 404, {"error": f"no such file: {name}"})
        source, _, _ = self.env.loader.get_source(self.env, name)
        self._secure(request)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return source.encode("utf-8")

    # -- JSON API ---------------------------------------------------------

    @app.route("/api/bindings", methods=["GET"])
    def list_bindings(self, request: Request) -> bytes:
        """``{"bindings": [...], "aors": N, "total": M}``; ``?aor=`` keeps one AOR (exact match)."""
        aor = _query(request, "aor")
        return self._json(request, 200, self._snapshot(aor))

    @app.route("/api/bindings/<path:aor>", methods=["DELETE"])
    def remove_bindings(self, request: Request, aor: str) -> bytes | Deferred[bytes]:
        """Remove every binding of ``aor``, or only ``?contact=``; 404 when nothing matched.

        The answer waits until the removal is committed to the database (the
        end of this reactor turn); 500 if that commit fails.
        """
        refusal = self._refuse_removal(request)
        if refusal is not None:
            return refusal
        contact = _query(request, "contact")
        with self._acting(request):
            if contact is None:
                count = self.store.remove_aor(aor, reason="web")
            else:
                count = 1 if self.store.remove(aor, contact, reason="web") else 0
        if count == 0:
            what = f"binding {contact} of {aor}" if contact is not None else f"bindings of {aor}"
            return self._json(request, 404, {"error": f"no {what}"})
        client = _client(request)
        if contact is None:
            self.log.info(
                "Web removed {count} {bindings} of {aor}",
                count=count,
                bindings="binding" if count == 1 else "bindings",
                aor=aor,
                client=client,
            )
        else:
            self.log.info("Web removed binding {contact} of {aor}", contact=contact, aor=aor, client=client)
        answered: Deferred[bytes] = Deferred()

        def durable(committed: bool) -> None:
            if committed:
                answered.callback(self._json(request, 200, {"removed": count, "aor": aor, "contact": contact}))
            else:
                answered.callback(self._json(request, 500, {"error": "location service failure"}))

        self.store.when_durable(durable)
        return answered

    def _acting(self, request: Request) -> Any:
        """The history's ``acting`` for whoever sends ``request``: its address, with the user when it logged in."""
        if self.history is None:
            return contextlib.nullcontext()
        who = client_address(request, trust_forwarded=not self.public)
        if self._is_public(request) and self.password is not None:
            who = f"{ADMIN_USER} from {who}"
        return self.history.acting(who)

    # -- the binding history (issue 18) -----------------------------------

    @app.route("/history", methods=["GET"])
    def history_page(self, request: Request) -> bytes:
        """One AOR's binding history (``?aor=``), newest first; a form to ask for one."""
        refusal = self._refuse_reads(request, page=True, what="the binding history is")
        if refusal is not None:
            return refusal
        self._secure(request)
        # The page's one form (GET, to this page) needs form-action; it has no script.
        csp = _SECURITY_HEADERS[b"content-security-policy"].replace(b"form-action 'none'", b"form-action 'self'")
        request.setHeader(b"content-security-policy", csp)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        aor = _query(request, "aor") or None
        history = self.history
        if history is None:
            events, max_age, max_count = [], 0.0, 0
        else:
            events = history.events(aor) if aor is not None else []
            max_age, max_count = history.store.max_age, history.store.max_per_aor
        return render_history_page(self.env, aor, events, max_age, max_count).encode("utf-8")

    @app.route("/api/history", methods=["GET"])
    def history_api(self, request: Request) -> bytes:
        """``{"aor": ..., "events": [...newest first]}`` for ``?aor=`` (exact, as the bindings are keyed)."""
        refusal = self._refuse_reads(request, what="the binding history is")
        if refusal is not None:
            return refusal
        if self.history is None:
            return self._json(request, 404, {"error": "the binding history is off (--history-events 0)"})
        aor = _query(request, "aor")
        if not aor:
            return self._json(
                request, 400, {"error": "give the address-of-record: /api/history?aor=sip:alice@example.test"}
            )
        events = [history_json(e) for e in self.history.events(aor)]
        return self._json(request, 200, {"aor": aor, "events": events, "total": len(events)})

    # -- live updates -----------------------------------------------------

    @app.route("/api/events", methods=["GET"])
    def events(self, request: Request) -> bytes | Deferred[None]:
        """A ``text/event-stream``: a ``snapshot`` of every binding, then one ``binding`` event per change.

        Bounded (:mod:`sipproxy.web.events`): 503 beyond ``--max-event-streams``.
        The returned Deferred never fires; Klein cancels it when the client
        goes away, and ``notifyFinish`` drops the stream.
        """
        return self.hub.serve(request)

    @property
    def streams(self) -> set[EventStream]:
        """The event streams open now."""
        return self.hub.streams

    # -- the recent calls (issue 18) ----------------------------------------

    @app.route("/calls", methods=["GET"])
    def calls_page(self, request: Request) -> bytes:
        """The Recent calls page: the list rendered now, ``calls.js`` keeps it live and draws the ladders."""
        refusal = self._refuse_reads(request, page=True)
        if refusal is not None:
            return refusal
        self._secure(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return render_calls_page(self.env, self.calls).encode("utf-8")

    @app.route("/api/calls", methods=["GET"])
    def list_calls(self, request: Request) -> bytes:
        """``{"calls": [...newest first], "total": N, ...}``; ``?aor=`` and ``?call_id=`` select (exact match).

        At most ``?limit=`` calls (default and most :data:`MAX_LISTED`), the newest; ``total`` counts them all.
        """
        refusal = self._refuse_reads(request)
        if refusal is not None:
            return refusal
        limit = _query(request, "limit") or ""
        answer = calls_answer(
            self.calls,
            aor=_query(request, "aor"),
            call_id=_query(request, "call_id"),
            limit=min(int(limit), MAX_LISTED) if limit.isdigit() else MAX_LISTED,
        )
        return self._json(request, 200, answer)

    @app.route("/api/ladder", methods=["GET"])
    def call_ladder(self, request: Request) -> bytes:
        """One call's flow (``?call_id=``): parties and messages with their text; 404 when it is not kept."""
        refusal = self._refuse_reads(request)
        if refusal is not None:
            return refusal
        call_id = _query(request, "call_id")
        entry = self.calls.get(call_id) if self.calls is not None and call_id is not None else None
        if entry is None:
            return self._json(request, 404, {"error": f"no recent call with Call-ID {call_id}"})
        return self._json(request, 200, {"call": call_json(entry), "ladder": ladder_json(entry)})

    @app.route("/api/call-events", methods=["GET"])
    def call_events(self, request: Request) -> bytes | Deferred[None]:
        """A ``text/event-stream`` of ``call`` events, one per finished call (bounded like ``/api/events``)."""
        refusal = self._refuse_reads(request)
        if refusal is not None:
            return refusal
        hub = self.call_hub
        if hub is None:
            return self._json(request, 404, {"error": "the recent calls are off (--recent-calls 0)"})
        return hub.serve(request)

    @app.route("/api/route", methods=["GET"])
    def route(self, request: Request) -> bytes:
        """Routing explain: ``?uri=`` (``&from=``, ``&method=INVITE``): the §16 steps, nothing sent."""
        refusal = self._refuse_reads(request)
        if refusal is not None:
            return refusal
        if self.explain is None:
            return self._json(request, 404, {"error": "no proxy to explain"})
        uri = _query(request, "uri")
        if not uri:
            return self._json(request, 400, {"error": "give the Request-URI: /api/route?uri=sip:alice@example.test"})
        answer = self.explain(uri, _query(request, "from") or "", _query(request, "method") or "INVITE")
        return self._json(request, 200, answer)

    def _refuse_reads(self, request: Request, page: bool = False, what: str = "the recent calls are") -> bytes | None:
        """Message texts and call parties follow the removal rule: refused to a public request without a password."""
        if not self._is_public(request) or self.password is not None:
            return None
        reason = f"{what} disabled: the web listener is public and has no password"
        if page:
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (reason + "\n").encode()
        return self._json(request, 403, {"error": reason})

    # -- operations -------------------------------------------------------

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Request) -> bytes:
        """200 ``ok`` while the server is healthy, 503 otherwise, with why when ``healthy`` says it (a string)."""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        verdict = self.healthy()  # True, or False or why not
        if verdict and not isinstance(verdict, str):
            return b"ok\n"
        request.setResponseCode(503)
        return b"unhealthy: %s\n" % verdict.encode() if isinstance(verdict, str) else b"unhealthy\n"

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: Request) -> bytes:
        """The server's Prometheus metrics in the text exposition format."""
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.metrics.registry)

    # -- helpers ----------------------------------------------------------

    def _snapshot(self, aor: str | None) -> dict[str, Any]:
        now = self.clock.seconds()
        bindings = self.store.lookup(aor) if aor is not None else self.store.all_bindings()
        return {
            "bindings": [binding_json(b, now, self.flow) for b in bindings],
            "aors": len({b.aor for b in bindings}),
            "total": len(bindings),
        }

    def _refuse_removal(self, request: Request) -> bytes | None:
        """The error response when ``request`` may not remove bindings, else None.

        A request that came through a reverse proxy (``Forwarded`` or
        ``X-Forwarded-For``) is treated as public even on a loopback
        listener. :class:`AccessGuard` has already checked the Host (on
        loopback, which stops DNS rebinding) and the password (on a public
        request, when one is set). Cross-site requests need no check of their own:
        a DELETE from another origin needs a CORS preflight that this server
        never grants.
        """
        if not self._is_public(request):
            return None
        if self.password is None:
            return self._refused(request, 403, "removal is disabled: the web listener is public and has no password")
        return None  # the AccessGuard has checked the password (and throttles wrong ones)

    def _refused(self, request: Request, status: int, reason: str) -> bytes:
        self.log.warn(
            "Web refused removal {uri} from {client}: {reason}",
            uri=_uri(request),
            client=_client(request),
            reason=reason,
        )
        return self._json(request, status, {"error": reason})

    def _json(self, request: Request, status: int, body: object) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return json.dumps(body).encode("utf-8")

    @staticmethod
    def _secure(request: Request) -> None:
        for name, value in _SECURITY_HEADERS.items():
            request.setHeader(name, value)


def _query(request: Request, name: str) -> str | None:
    """The first ``name=`` query parameter, decoded as UTF-8."""
    values = request.args.get(name.encode()) if request.args is not None else None
    return values[0].decode("utf-8", "replace") if values else None


def _client(request: Request) -> str:
    peer = request.getClientAddress()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


def _uri(request: Request) -> str:
    return request.uri.decode("latin-1")
