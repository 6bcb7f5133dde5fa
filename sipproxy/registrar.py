# -*- test-case-name: tests.test_registrar -*-
"""The registrar: RFC 3261 §10.3 REGISTER processing, steps 1 to 8.

This is the tutorial's Registrar servlet with its TODO items done (Request-URI
and domain checks, Require, several Contact headers), on top of the location
service.  It is pure: no Twisted, no I/O except the calls to the store, and
time only from the injected clock's ``seconds()``.

Every step is marked "step N" in the code.  A step that refuses the request
raises :class:`_Rejection` carrying the response it implies; ``handle`` turns
that, a :class:`ParseError` (a malformed header read lazily) and any
unexpected exception into a response at one place, so ``handle`` never raises.

Choices the RFC leaves open, and what we do:

- Step 1 looks at the Request-URI's host only: its port is ignored and a user
  part (which §10.2 says must not be there) is tolerated.
- Step 5 refuses an address-of-record without a user part (404): it would
  name the domain itself.
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
  is stored, not acted on).  No ``outbound`` option tag, flow token or
  ``Require: outbound`` handling is implied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Literal, NamedTuple, Protocol

from sipproxy.location import Binding, LocationService
from sipproxy.message import NameAddr, ParseError, Request, Response, SipURI, make_response, parse_uri
from sipproxy.message.headers import unquote
from sipproxy.message.uri import canonical_host
from sipproxy.randomness import stable_tag

__all__ = ["Authenticate", "Registrar", "RegistrarSettings"]

Authenticate = Callable[[Request, str], Response | str | None]
"""The step 3 hook: ``(request, aor_text) -> Response | username | None``."""

_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")
"""RFC 3261 §25.1 ``qvalue``."""

_DIGITS = re.compile(r"[0-9]+\Z")

_DELTA_SECONDS_LIMIT = 2**32 - 1
"""RFC 3261 §20.19: larger expiry values are taken as this."""

_REG_ID_LIMIT = 2**31 - 1
"""RFC 5626 §4.2: ``reg-id`` is 1 to 2**31-1."""


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
    supported: frozenset[str] = frozenset({"path"})

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


class _Clock(Protocol):
    def seconds(self) -> float: ...


class _Source(Protocol):
    """Where the request came from (``sipproxy.transaction.Source``)."""

    @property
    def transport(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class _Log(Protocol):
    """The part of ``twisted.logger.Logger`` used; ``failure`` records the exception being handled."""

    def failure(self, format: str, **kwargs: object) -> None: ...


class _NullLog:
    def failure(self, format: str, **kwargs: object) -> None:
        pass


class _Rejection(Exception):
    """A step refuses the request: the response to send instead."""

    def __init__(self, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers


class _Contact(NamedTuple):
    """One Contact of the REGISTER, validated (step 6)."""

    contact: str
    uri: SipURI
    expires: int
    q: float
    instance: str | None
    reg_id: int | None


class Registrar:
    """RFC 3261 §10.3: turns REGISTER requests into location service updates and 200 OK listings."""

    def __init__(
        self,
        store: LocationService,
        clock: _Clock,
        settings: RegistrarSettings,
        authenticate: Authenticate | None = None,
        *,
        log: _Log | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._authenticate = authenticate
        self._log: _Log = log if log is not None else _NullLog()
        self._supported = ", ".join(sorted(settings.supported))
        self._date_second = -1
        self._date_text = ""

    def is_for_us(self, request: Request) -> bool:
        """Step 1: is the Request-URI a SIP or SIPS URI naming one of our domains?"""
        try:
            uri = request.uri
        except ParseError:
            return False
        return isinstance(uri, SipURI) and canonical_host(uri.host) in self._settings.domains

    def answer(self, request: Request, source: _Source, send: Callable[[Response], None]) -> None:
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

    def handle(self, request: Request, source: _Source) -> Response:
        """Process one REGISTER and return the response to send; never raises."""
        try:
            return self._process(request, source)
        except _Rejection as rejection:
            return self._respond(request, rejection.status, rejection.reason, rejection.headers)
        except ParseError as error:
            return self._respond(request, error.status, error.reason)
        except Exception:
            self._log.failure("REGISTER {request!r} failed unexpectedly", request=request)
            try:
                return self._respond(request, 500)
            except Exception:
                return Response(500, "Server Internal Error")

    # -- the steps ---------------------------------------------------------

    def _process(self, request: Request, source: _Source) -> Response:
        if request.method != "REGISTER":
            raise _Rejection(405, None, [("Allow", "REGISTER")])
        now = self._clock.seconds()

        # step 1: the Request-URI names the registrar's domain.
        if not isinstance(request.uri, SipURI):
            raise _Rejection(416)
        if not self.is_for_us(request):
            raise _Rejection(404, "Not our domain")

        # step 2: every extension in Require is one we support.
        unsupported = [t for t in dict.fromkeys(request.option_tags("require")) if t not in self._settings.supported]
        if unsupported:
            raise _Rejection(420, None, [("Unsupported", ", ".join(unsupported))])

        # step 3: authenticate (the hook answers 401/403 itself).
        to_uri = request.to.uri
        aor_uri = to_uri.aor() if isinstance(to_uri, SipURI) else None
        aor = str(aor_uri) if aor_uri is not None else str(to_uri)
        identity = self._authenticate(request, aor) if self._authenticate is not None else None
        if isinstance(identity, Response):
            return identity

        # step 4: authorize: the authenticated user may change only their own address-of-record.
        if identity is not None and (aor_uri is None or aor_uri.user != identity):
            raise _Rejection(403, "Not your address-of-record")

        # step 5: the address-of-record (To, canonicalised) belongs to one of our domains.
        if aor_uri is None or canonical_host(aor_uri.host) not in self._settings.domains:
            raise _Rejection(404)
        if not aor_uri.user:
            raise _Rejection(404, "No user part in address-of-record")

        # step 6: read and check the Contacts (wildcard rules, expiry, q, instance).
        contacts = self._contacts(request)
        path = self._path(request)

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
        return self._listing(request, aor, path, now)

    def _contacts(self, request: Request) -> Literal["*"] | list[_Contact]:
        """Step 6: the Contacts to bind, ``"*"`` to remove them all, ``[]`` for a query."""
        header_expires = _header_expires(request)
        try:
            addresses = request.contacts
        except ParseError as error:
            reason = error.reason if "Contact" in error.reason else f"Bad Contact: {error.reason}"
            raise ParseError(reason) from None
        if addresses == "*":
            if header_expires != 0:
                raise _Rejection(400, "Wildcard Contact requires Expires: 0")
            return "*"
        wanted: list[_Contact] = []
        for address in addresses:
            contact = self._contact(address, header_expires)
            # The same URI, or the same instance and reg-id, twice in one REGISTER: the last one counts.
            key = _instance_key(contact)
            wanted = [w for w in wanted if w.uri != contact.uri and (key is None or _instance_key(w) != key)]
            wanted.append(contact)
        return wanted

    def _contact(self, address: NameAddr, header_expires: int | None) -> _Contact:
        uri = address.uri
        if not isinstance(uri, SipURI):
            raise _Rejection(400, "Contact must be a SIP or SIPS URI")
        params = address.params
        return _Contact(
            contact=str(uri),
            uri=uri,
            expires=self._expires(params, header_expires),
            q=_qvalue(params),
            instance=_instance(params),
            reg_id=_reg_id(params),
        )

    def _expires(self, params: dict[str, str | None], header_expires: int | None) -> int:
        """The expiry a contact asks for (§10.2.1.1), checked against our bounds (§10.3 step 7)."""
        settings = self._settings
        if "expires" in params:
            value = params["expires"]
            if value is None or not _DIGITS.match(value):
                raise _Rejection(400, "Bad expires parameter in Contact")
            expires = _delta_seconds(value)
        elif header_expires is not None:
            expires = header_expires
        else:
            expires = settings.default_expires
        if 0 < expires < settings.min_expires:
            raise _Rejection(423, None, [("Min-Expires", str(settings.min_expires))])
        return min(expires, settings.max_expires)

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
            _check_order(binding, call_id, cseq)
        return [], [b.contact for b in existing]

    def _bindings(
        self,
        request: Request,
        source: _Source,
        aor: str,
        contacts: list[_Contact],
        existing: list[Binding],
        path: tuple[str, ...],
        now: float,
    ) -> tuple[list[Binding], list[str]]:
        """Step 7: the bindings to put and the contacts to remove for this REGISTER.

        Each contact updates the bindings it matches (see :func:`_matching`):
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
            same = _matching(existing, wanted)
            for binding in same:
                _check_order(binding, call_id, cseq)
            remove.extend(b.contact for b in same if wanted.expires == 0 or b.contact != wanted.contact)
            if wanted.expires == 0:
                continue
            refreshed = next((b for b in same if b.call_id == call_id), None)
            put.append(
                Binding(
                    aor=aor,
                    contact=wanted.contact,
                    call_id=call_id,
                    cseq=cseq,
                    expires_at=now + wanted.expires,
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
            raise _Rejection(403, f"Too many contacts (max {limit})")
        return put, remove

    def _commit(self, aor: str, put: list[Binding], remove: list[str]) -> None:
        try:
            self._store.update(aor, put=put, remove=remove)
        except Exception:
            self._log.failure("Location service update for {aor} failed", aor=aor)
            raise _Rejection(500, "Location service failure") from None

    def _listing(self, request: Request, aor: str, path: tuple[str, ...], now: float) -> Response:
        """Step 8: 200 OK with one Contact per current binding and its remaining lifetime."""
        response = self._respond(request, 200)
        add = response.add
        for binding in self._store.lookup(aor):
            value = f"<{binding.contact}>;expires={binding.expires_in(now)}"
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


# -- helpers -----------------------------------------------------------------


def _header_expires(request: Request) -> int | None:
    try:
        return request.expires
    except ValueError as error:
        if isinstance(error, ParseError):
            raise
        raise ParseError("Bad Expires") from None  # e.g. non-ASCII digits that int() refuses


def _delta_seconds(value: str) -> int:
    if len(value) > 10:
        return _DELTA_SECONDS_LIMIT
    return min(int(value), _DELTA_SECONDS_LIMIT)


def _qvalue(params: dict[str, str | None]) -> float:
    if "q" not in params:
        return 1.0
    value = params["q"]
    if value is None or not _QVALUE.match(value):
        raise _Rejection(400, "Bad q parameter in Contact (must be 0 to 1)")
    return float(value)


def _instance(params: dict[str, str | None]) -> str | None:
    """RFC 5626 ``+sip.instance``, without its quotes."""
    if "+sip.instance" not in params:
        return None
    value = params["+sip.instance"]
    instance = unquote(value) if value is not None else ""
    if not instance:
        raise _Rejection(400, "Bad +sip.instance parameter in Contact")
    return instance


def _reg_id(params: dict[str, str | None]) -> int | None:
    """RFC 5626 ``reg-id``: 1 to 2**31-1."""
    if "reg-id" not in params:
        return None
    value = params["reg-id"]
    if value is None or not _DIGITS.match(value) or len(value) > 10 or not 1 <= int(value) <= _REG_ID_LIMIT:
        raise _Rejection(400, "Bad reg-id parameter in Contact")
    return int(value)


def _matching(existing: list[Binding], wanted: _Contact) -> list[Binding]:
    """Existing bindings the contact updates or replaces, those with its URI first.

    By URI: the same text, else equal by RFC 3261 §19.1.4.  By instance
    (RFC 5626 §6), when the contact has ``+sip.instance``: the same instance
    ID and reg-id, whatever the URI.
    """
    same_uri = [b for b in existing if b.contact == wanted.contact]
    if not same_uri:
        same_uri = [b for b in existing if _same_uri(b.contact, wanted.uri)]
    key = _instance_key(wanted)
    if key is None:
        return same_uri
    found = {b.contact for b in same_uri}
    return same_uri + [b for b in existing if b.contact not in found and _instance_key(b) == key]


def _instance_key(item: Binding | _Contact) -> tuple[str, int | None] | None:
    """RFC 5626 §6: ``(instance ID, reg-id)`` naming one registration of a UA instance; None without an instance."""
    if item.instance is None:
        return None
    return item.instance, item.reg_id


def _same_uri(text: str, uri: SipURI) -> bool:
    try:
        return parse_uri(text) == uri
    except ParseError:
        return False


def _check_order(binding: Binding, call_id: str, cseq: int) -> None:
    """Step 7: the same Call-ID must come with a higher CSeq, or the whole request fails."""
    if binding.call_id == call_id and binding.cseq >= cseq:
        raise _Rejection(500, "Out of order CSeq")


def _format_q(q: float) -> str:
    return f"{q:.3f}".rstrip("0").rstrip(".")
