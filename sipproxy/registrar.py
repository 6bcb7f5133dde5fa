# -*- test-case-name: tests.test_registrar -*-
"""The registrar: RFC 3261 §10.3 REGISTER processing, steps 1 to 8.

This is the tutorial's Registrar servlet with its TODO items done (Request-URI
and domain checks, Require, several Contact headers), on top of the location
service.  It is pure: no Twisted, no I/O except the calls to the store, and
time only from the injected clock's ``seconds()``.

Every step is marked "step N" in the code; reading the Contacts (step 6)
and matching them to the existing bindings (step 7) are in
:mod:`sipproxy.contacts`.  A step that refuses the request
raises :class:`sipproxy.errors.SipError` carrying the response it implies;
``handle`` turns that (also when the authentication hook raises it), a
:class:`ParseError` (a malformed header read lazily) and any unexpected
exception into a response at one place, so ``handle`` never raises.

Choices the RFC leaves open, and what we do:

- Step 1 asks :meth:`sipproxy.locality.Locality.is_us_or_our_domain`: the
  Request-URI's host is one of our domains (its port is ignored), or the URI
  is us as the stack and the proxy see it (our address, our port or none).
  A user part (which §10.2 says must not be there) is tolerated.
- Step 5 canonicalises the address-of-record as :func:`canonical_aor` does:
  no parameters, no port (``sip:carol@127.0.0.1:5060`` is stored as
  ``sip:carol@127.0.0.1``, as Kamailio and OpenSIPS key user@domain; the
  proxy looks up the same form, §16.5).  Bindings an older version stored
  under the AOR with its port are moved to the canonical AOR by the next
  REGISTER for it (see ``_adopt_legacy``).  An address-of-record without a
  user part is refused (404): it would name the domain itself.
- Step 6 accepts only SIP and SIPS contacts (400 otherwise): the proxy can
  route to nothing else.  ``+sip.instance`` is stored without its double
  quotes (the angle brackets stay), ``reg-id`` as an integer.
- Step 7 compares a contact with the existing bindings by its URI text first,
  then by RFC 3261 §19.1.4 URI equality; a binding found the second way is
  re-keyed to the new text.  Several Contacts with the same URI in one
  REGISTER: the last one counts.  ``registered_at`` is kept when the same
  Call-ID refreshes a binding and restarts when another Call-ID replaces it.
  A REGISTER that would leave more than ``max_contacts`` bindings (and more
  than there were) gets ``403 Too many contacts (max N)``: a 4xx because
  retrying elsewhere cannot help (5xx would invite that), 403 because the
  server understood the request and refuses it by policy; the count is taken
  after every removal and replacement.  A failure of the store gets
  ``500 Location service failure`` and changes nothing.
- Step 7, replacement by instance (RFC 5626 §6, without its flows): a
  Contact carrying ``+sip.instance`` also matches every binding of the
  address-of-record with the same instance ID (compared exactly, as stored)
  and the same ``reg-id`` (none on both sides counts as the same), whatever
  its URI.  Such a binding under another URI is replaced: removed in the same
  store update that puts the new contact, so a phone that re-registers from a
  new NAT port after a reboot leaves no stale binding to fork to.  With
  ``expires=0`` the contact removes those bindings as well as its own URI's.
  A replaced binding is checked like an updated one (RFC 3261 §10.3 step 7):
  the same Call-ID with a CSeq not below the request's fails the whole
  request with ``500 Out of order CSeq``.  Two Contacts of one REGISTER with
  the same instance ID and reg-id: the last one counts, as for the same URI.
  Contacts without ``+sip.instance`` match by URI only (a ``reg-id`` alone
  is stored, not acted on).
- RFC 5626 outbound (§6): the ``outbound`` option tag is supported (and
  ``path``, RFC 3327).  A REGISTER with ``Supported: outbound`` and a
  Contact carrying ``+sip.instance`` and ``reg-id`` binds that contact to
  the flow it arrived on (the binding keeps transport and source address;
  :attr:`Binding.flow_bound`), keyed by (aor, instance, reg-id) as above;
  its 200 carries ``Require: outbound`` and ``Flow-Timer`` (§4.4.1, §5.4:
  how often the phone should send keep-alives; 29 s on UDP, where NATs
  forget a mapping after 30 s, else ``flow_timer``).  We are the edge
  proxy and the registrar in one, so no Path with a flow token is needed:
  the binding itself names the flow, and the proxy writes the flow token
  into its Record-Route (:mod:`sipproxy.flowtoken`).  Two flows of one
  instance with *the same* Contact URI are two bindings: the location
  service keys bindings by contact, so the second is stored under
  ``"URI reg-id=N"`` (:func:`~sipproxy.location.binding.flow_key`; the
  Request-URI stays the URI, :attr:`Binding.contact_uri`).
- A flow-bound binding whose connection closes is removed (reason
  ``flow-lost``, :meth:`Registrar.flow_lost`), unless
  ``keep_flow_bindings``; so are those restored at start-up on a
  connection-oriented transport (:meth:`Registrar.drop_lost_flows`): their
  connection cannot come back, the phone re-registers on a new one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Protocol

from sipproxy.contacts import Contact, check_order, matching, read_contacts
from sipproxy.errors import SipError
from sipproxy.locality import LocalAddress, Locality, canonical_aor
from sipproxy.location import Binding, LocationService
from sipproxy.location.binding import flow_key
from sipproxy.message import ParseError, Request, Response, SipURI, make_response
from sipproxy.message.uri import canonical_host
from sipproxy.net import Clock, Source, is_reliable
from sipproxy.randomness import stable_tag

__all__ = ["UDP_FLOW_TIMER", "Authenticate", "Refused", "Registrar", "RegistrarSettings"]

UDP_FLOW_TIMER = 29
"""RFC 5626 §4.4.1: the ``Flow-Timer`` of an outbound registration over UDP (NAT mappings last about 30 s)."""

Authenticate = Callable[[Request, str], Response | str | None]
"""The step 3 hook: ``(request, aor_text) -> Response | username | None``; it may also raise :class:`SipError`."""

Refused = Callable[[str, Request, Source, int, str], None]
"""Told of each REGISTER the registrar refuses by policy (403, 423): ``(aor, request, source, status, reason)``."""

_TOLD = frozenset({403, 423})
"""The refusals :data:`Refused` hears: step 4's 403, too many contacts, step 6's 423 Interval Too Brief."""


@dataclass(frozen=True)
class RegistrarSettings:
    """What the registrar accepts.

    ``domains`` are host names or addresses (IPv6 with or without brackets);
    they are compared case-insensitively and without a trailing dot.
    ``default_expires`` (used when a REGISTER states no expiry) is brought
    within ``min_expires..max_expires``; inconsistent bounds raise ``ValueError``.
    """

    domains: frozenset[str]
    min_expires: int = 60
    max_expires: int = 7200
    default_expires: int = 3600
    max_contacts: int = 10
    supported: frozenset[str] = frozenset({"path", "outbound"})
    flow_timer: int = 120
    """RFC 5626 §4.4.1: the ``Flow-Timer`` of an outbound registration on a connection (seconds between keep-alives)."""
    keep_flow_bindings: bool = False
    """Keep flow-bound bindings until they expire when their connection closes (``--keep-flow-bindings``)."""
    expires_jitter: float = 0.0
    """Step 7 grants a random expiry in [expires x (1 - jitter), expires] (``--expires-jitter``), never
    under ``min_expires``: phones registered together refresh spread out."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", frozenset(canonical_host(d.strip()) for d in self.domains))
        object.__setattr__(self, "supported", frozenset(t.lower() for t in self.supported))
        if not 0 <= self.min_expires <= self.max_expires or self.max_expires < 1:
            raise ValueError(f"need 0 <= min_expires ({self.min_expires}) <= max_expires ({self.max_expires})")
        # A default outside the bounds (say --max-expires 1800 with the stock 3600) is brought within them.
        default = min(max(self.default_expires, self.min_expires, 1), self.max_expires)
        object.__setattr__(self, "default_expires", default)
        if self.max_contacts < 1:
            raise ValueError(f"max_contacts {self.max_contacts} is not positive")
        if self.flow_timer < 1:
            raise ValueError(f"flow_timer {self.flow_timer} is not positive")
        if not 0 <= self.expires_jitter < 1:
            raise ValueError(f"expires_jitter {self.expires_jitter} is not in [0, 1)")

    def granted(self, expires: int, draw: Callable[[], float]) -> int:
        """The expiry step 7 grants for ``expires``; ``draw()`` is uniform in [0, 1) (``expires_jitter``)."""
        if not self.expires_jitter or expires <= self.min_expires:
            return expires
        return max(self.min_expires, expires - int(expires * self.expires_jitter * draw()))


class _Log(Protocol):
    """The part of ``twisted.logger.Logger`` used; ``failure`` records the exception being handled."""

    def failure(self, format: str, **kwargs: object) -> None: ...


class _NullLog:
    def failure(self, format: str, **kwargs: object) -> None:
        pass


class Registrar:
    """RFC 3261 §10.3: turns REGISTER requests into location service updates and 200 OK listings."""

    def __init__(
        self,
        store: LocationService,
        clock: Clock,
        settings: RegistrarSettings,
        authenticate: Authenticate | None = None,
        *,
        log: _Log | None = None,
        local: LocalAddress | None = None,
        on_refused: Refused | None = None,
    ) -> None:
        """``on_refused`` hears the policy refusals (the binding history); it must not raise."""
        self._store = store
        self._on_refused = on_refused
        self._locality = Locality(local, settings.domains)
        self._clock = clock
        self._settings = settings
        self._authenticate = authenticate
        self._log: _Log = log if log is not None else _NullLog()
        self._supported = ", ".join(sorted(settings.supported))
        self._date_second = -1
        self._date_text = ""
        self.random: Callable[[], float] = random.random
        """The draw for ``--expires-jitter``."""

    def is_for_us(self, request: Request) -> bool:
        """Step 1: is the Request-URI a SIP or SIPS URI naming one of our domains or us?

        :meth:`Locality.is_us_or_our_domain`: a domain at any port, our own
        address on our port (``REGISTER sip:127.0.0.1:5060`` when only
        ``example.test`` is a domain).
        """
        try:
            uri = request.uri
        except ParseError:
            return False
        return self._locality.is_us_or_our_domain(uri)

    def answer(self, request: Request, source: Source, send: Callable[[Response], None]) -> None:
        """Process one REGISTER and ``send`` its response once it may go out.

        A 200 OK reports bindings, so it waits until the store has made them
        durable (group commit: the end of this reactor turn); if that commit
        fails the REGISTER is answered 500 instead. Rejections go at once.
        """
        response = self.handle(request, source)
        if response.status != 200:
            send(response)
            return

        def durable(committed: bool) -> None:
            send(response if committed else self._respond(request, 500, "Location service failure"))

        self._store.when_durable(durable)

    def handle(self, request: Request, source: Source) -> Response:
        """Process one REGISTER and return the response to send; never raises."""
        try:
            return self._process(request, source)
        except SipError as refusal:
            response = self._respond(request, refusal.status, refusal.reason, refusal.headers)
            if self._on_refused is not None and refusal.status in _TOLD:
                self._told(request, source, response)
            return response
        except ParseError as error:
            return self._respond(request, error.status, error.reason)
        except Exception:
            self._log.failure("REGISTER {request!r} failed unexpectedly", request=request)
            try:
                return self._respond(request, 500)
            except Exception:
                return Response(500, "Server Internal Error")

    def _told(self, request: Request, source: Source, response: Response) -> None:
        assert self._on_refused is not None
        reason = response.reason
        minimum = response.get("min-expires")
        if minimum is not None:
            reason = f"{reason} (Min-Expires {minimum})"
        try:
            to_uri = request.to.uri
            aor = canonical_aor(to_uri) if isinstance(to_uri, SipURI) else str(to_uri)
            self._on_refused(aor, request, source, response.status, reason)
        except Exception:  # the history is not the REGISTER: it is answered all the same
            self._log.failure("Telling of the refused REGISTER {request!r} failed", request=request)

    # -- the steps ---------------------------------------------------------

    def _process(self, request: Request, source: Source) -> Response:
        if request.method != "REGISTER":
            raise SipError(405, None, [("Allow", "REGISTER")])
        now = self._clock.seconds()

        # step 1: the Request-URI names the registrar's domain.
        if not isinstance(request.uri, SipURI):
            raise SipError(416)
        if not self.is_for_us(request):
            raise SipError(404, "Not our domain")

        # step 2: every extension in Require is one we support.
        unsupported = [t for t in dict.fromkeys(request.option_tags("require")) if t not in self._settings.supported]
        if unsupported:
            raise SipError(420, None, [("Unsupported", ", ".join(unsupported))])

        # step 3: authenticate (the hook answers 401/403 itself).
        to_uri = request.to.uri
        aor_uri = to_uri.aor() if isinstance(to_uri, SipURI) else None
        aor = canonical_aor(to_uri) if isinstance(to_uri, SipURI) else str(to_uri)
        identity = self._authenticate(request, aor) if self._authenticate is not None else None
        if isinstance(identity, Response):
            return identity

        # step 4: authorize: the authenticated user may change only their own address-of-record.
        if identity is not None and (aor_uri is None or aor_uri.user != identity):
            raise SipError(403, "Not your address-of-record")

        # step 5: the address-of-record (To, canonicalised: no port, no parameters) belongs to one of our domains.
        if aor_uri is None or not self._locality.is_our_domain(aor_uri.host):
            raise SipError(404)
        if not aor_uri.user:
            raise SipError(404, "No user part in address-of-record")

        # step 6: read and check the Contacts (wildcard rules, expiry, q, instance).
        contacts = read_contacts(request, self._settings)
        path = self._path(request)
        if aor_uri.port is not None:
            self._adopt_legacy(aor, str(aor_uri))

        # step 7: apply every change to the bindings together, or none.
        if contacts:
            existing = self._store.lookup(aor)
            if contacts == "*":
                put, remove = self._remove_all(request, existing)
            else:
                put, remove = self._bindings(request, source, aor, contacts, existing, path, now)
            if put or remove:
                self._commit(aor, put, remove)

        # step 8: 200 OK listing every current binding.
        response = self._listing(request, aor, path, now)
        if contacts and contacts != "*" and self._uses_outbound(request, contacts):
            # RFC 5626 §6: the registrar says it applied outbound; §4.4.1: how often to send keep-alives.
            response.add("Require", "outbound")
            timer = min(self._settings.flow_timer, UDP_FLOW_TIMER) if not is_reliable(source.transport) else None
            response.add("Flow-Timer", str(timer or self._settings.flow_timer))
        return response

    def _uses_outbound(self, request: Request, contacts: list[Contact]) -> bool:
        """RFC 5626 §6: we and the phone support ``outbound``, and a Contact has ``+sip.instance`` and ``reg-id``."""
        if "outbound" not in self._settings.supported or "outbound" not in request.option_tags("supported"):
            return False
        return any(c.instance is not None and c.reg_id is not None for c in contacts)

    # -- flows (RFC 5626 §5.3, §7) -------------------------------------------

    def flow_lost(self, keys: Iterable[tuple[str, str]]) -> int:
        """The connection of these ``(aor, contact)`` bindings closed: remove the flow-bound ones; return how many.

        RFC 5626 §5.3: a request for that flow would fail (430); the phone
        registers again on a new flow.  Bindings that are not flow-bound
        stay (their Contact may still be reachable, RFC 3261 §18.2.2), and
        so does everything with ``keep_flow_bindings`` (until it expires).
        Never raises.
        """
        if self._settings.keep_flow_bindings:
            return 0
        removed = 0
        for aor, contact in keys:
            try:
                binding = self._store.get(aor, contact)
                if binding is not None and binding.flow_bound:
                    removed += self._store.remove(aor, contact, reason="flow-lost")
            except Exception:
                self._log.failure(
                    "Removing the binding of a lost flow, {aor} {contact}, failed", aor=aor, contact=contact
                )
        return removed

    def drop_lost_flows(self) -> int:
        """At start-up, once the bindings are restored: remove the flow-bound ones on connections (none survived)."""
        lost = [(b.aor, b.contact) for b in self._store.all_bindings() if b.flow_bound and is_reliable(b.transport)]
        return self.flow_lost(lost)

    def _path(self, request: Request) -> tuple[str, ...]:
        """RFC 3327: the Path vector to store, only when both sides support ``path``."""
        if "path" not in self._settings.supported or "path" not in request.option_tags("supported"):
            return ()
        try:
            request.addresses("path")
        except ParseError as error:
            raise ParseError(f"Bad Path: {error.reason}") from None
        return tuple(request.get_all("path"))

    def _remove_all(self, request: Request, existing: list[Binding]) -> tuple[list[Binding], list[str]]:
        """Step 6/7 for ``Contact: *``: remove every binding, unless one is newer than the request."""
        call_id, cseq = request.call_id, request.cseq.seq
        for binding in existing:
            check_order(binding, call_id, cseq)
        return [], [b.contact for b in existing]

    def _bindings(
        self,
        request: Request,
        source: Source,
        aor: str,
        contacts: list[Contact],
        existing: list[Binding],
        path: tuple[str, ...],
        now: float,
    ) -> tuple[list[Binding], list[str]]:
        """Step 7: the bindings to put and the contacts to remove for this REGISTER.

        Each contact updates the bindings it matches (see :func:`sipproxy.contacts.matching`):
        those under its own URI and, with ``+sip.instance``, those of the same
        instance and reg-id under another URI, which it replaces (RFC 5626 §6).
        Every matched binding must be older than the request (RFC 3261 §10.3
        step 7), or nothing changes.
        """
        call_id, cseq = request.call_id, request.cseq.seq
        user_agent = request.get("user-agent") or ""
        put: list[Binding] = []
        remove: list[str] = []
        for wanted in contacts:
            same = matching(existing, wanted)
            for binding in same:
                check_order(binding, call_id, cseq)
            contact = _key(wanted, same, existing)
            remove.extend(b.contact for b in same if wanted.expires == 0 or b.contact != contact)
            if wanted.expires == 0:
                continue
            refreshed = next((b for b in same if b.call_id == call_id), None)
            put.append(
                Binding(
                    aor=aor,
                    contact=contact,
                    call_id=call_id,
                    cseq=cseq,
                    expires_at=now + self._settings.granted(wanted.expires, self.random),
                    q=wanted.q,
                    transport=source.transport.upper(),
                    source_host=source.host,
                    source_port=source.port,
                    path=path,
                    user_agent=user_agent,
                    instance=wanted.instance,
                    reg_id=wanted.reg_id,
                    registered_at=refreshed.registered_at if refreshed is not None else now,
                    refreshed_at=now,
                )
            )
        kept = {b.contact for b in put}
        remove = [c for c in dict.fromkeys(remove) if c not in kept]
        after = ({b.contact for b in existing} - set(remove)) | kept
        limit = self._settings.max_contacts
        if len(after) > limit and len(after) > len(existing):
            raise SipError(403, f"Too many contacts (max {limit})")
        return put, remove

    def _adopt_legacy(self, aor: str, legacy: str) -> None:
        """Step 5, for a database written before AORs lost their port: move the bindings under ``legacy`` to ``aor``.

        Bindings restored from such a file are keyed by the To URI's AOR with
        its port (``sip:carol@127.0.0.1:5060``).  The proxy looks that key up
        too until they are gone; the phone's next REGISTER moves them here,
        so that it refreshes, replaces or removes them like its other
        bindings.  A binding already under ``aor`` with the same contact wins.
        """
        old = self._store.lookup(legacy)
        if not old:
            return
        have = {b.contact for b in self._store.lookup(aor)}
        moved = [replace(b, aor=aor) for b in old if b.contact not in have]
        self._commit(legacy, [], [b.contact for b in old])
        if moved:
            self._commit(aor, moved, [])

    def _commit(self, aor: str, put: list[Binding], remove: list[str]) -> None:
        try:
            self._store.update(aor, put=put, remove=remove)
        except SipError:  # the store's own refusal (503 + Retry-After while a shared store is unreachable)
            raise
        except Exception:
            self._log.failure("Location service update for {aor} failed", aor=aor)
            raise SipError(500, "Location service failure") from None

    def _listing(self, request: Request, aor: str, path: tuple[str, ...], now: float) -> Response:
        """Step 8: 200 OK with one Contact per current binding and its remaining lifetime."""
        response = self._respond(request, 200)
        add = response.add
        for binding in self._store.lookup(aor):
            value = f"<{binding.contact_uri}>;expires={binding.expires_in(now)}"
            if binding.q != 1.0:
                value += f";q={_format_q(binding.q)}"
            add("Contact", value)
        for hop in path:
            add("Path", hop)
        add("Date", self._date(now))
        if self._supported:
            add("Supported", self._supported)
        return response

    def _date(self, now: float) -> str:
        """``formatdate(now, usegmt=True)``, formatted once per second."""
        second = int(now)
        exact = 0.0 <= now - second < 0.999  # no rounding up into the next second
        if exact and second == self._date_second:
            return self._date_text
        text = formatdate(now, usegmt=True)
        if exact:
            self._date_second, self._date_text = second, text
        return text

    def _respond(
        self, request: Request, status: int, reason: str | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        response = make_response(request, status, reason, to_tag=stable_tag(request))
        for name, value in headers:
            response.add(name, value)
        return response


def _format_q(q: float) -> str:
    return f"{q:.3f}".rstrip("0").rstrip(".")


def _key(wanted: Contact, same: list[Binding], existing: list[Binding]) -> str:
    """Step 7: the key to store ``wanted`` under: its URI, unless another flow of its instance holds that.

    RFC 5626 §6 knows an outbound registration by (instance, reg-id): a
    phone on two flows may register the same Contact URI on both, and the
    second is kept under :func:`~sipproxy.location.binding.flow_key`, so
    the proxy still has a next flow to fail over to (§7).
    """
    if wanted.instance is None or wanted.reg_id is None:
        return wanted.contact
    for b in same:
        if (b.instance, b.reg_id, b.contact_uri) == (wanted.instance, wanted.reg_id, wanted.contact):
            return b.contact  # the flow's refresh keeps its key
    staying = {b.contact for b in existing} - {b.contact for b in same}
    return flow_key(wanted.contact, wanted.reg_id) if wanted.contact in staying else wanted.contact
