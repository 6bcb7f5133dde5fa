# -*- test-case-name: tests.test_registrar -*-
"""The Contacts of a REGISTER (RFC 3261 §10.3 step 6) and the bindings each one matches (step 7, RFC 5626 §6).

The registrar's reading of its request, apart from its decisions: pure
functions over the parsed message and the existing bindings.  A Contact the
registrar cannot take raises :class:`SipError` (or the :class:`ParseError`
of ``NameAddr.expires``/``.q``) naming the problem.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal, NamedTuple

from sipproxy.errors import SipError
from sipproxy.message import NameAddr, ParseError, Request, SipURI, parse_uri
from sipproxy.message.headers import unquote

if TYPE_CHECKING:
    from sipproxy.location import Binding
    from sipproxy.registrar import RegistrarSettings

__all__ = ["Contact", "check_order", "matching", "read_contacts"]

_DIGITS = re.compile(r"[0-9]+\Z")

_REG_ID_LIMIT = 2**31 - 1
"""RFC 5626 §4.2: ``reg-id`` is 1 to 2**31-1."""


class Contact(NamedTuple):
    """One Contact of the REGISTER, validated (step 6)."""

    contact: str
    uri: SipURI
    expires: int
    q: float
    instance: str | None
    reg_id: int | None


def read_contacts(request: Request, settings: RegistrarSettings) -> Literal["*"] | list[Contact]:
    """Step 6: the Contacts to bind, ``"*"`` to remove them all, ``[]`` for a query."""
    expires = _header_expires(request)
    try:
        addresses = request.contacts
    except ParseError as error:
        reason = error.reason if "Contact" in error.reason else f"Bad Contact: {error.reason}"
        raise ParseError(reason) from None
    if addresses == "*":
        if expires != 0:
            raise SipError(400, "Wildcard Contact requires Expires: 0")
        return "*"
    wanted: list[Contact] = []
    for address in addresses:
        contact = _contact(address, expires, settings)
        # The same URI, or the same instance and reg-id, twice in one REGISTER: the last one counts.
        key = _instance_key(contact)
        wanted = [w for w in wanted if w.uri != contact.uri and (key is None or _instance_key(w) != key)]
        wanted.append(contact)
    return wanted


def _contact(address: NameAddr, header_expires: int | None, settings: RegistrarSettings) -> Contact:
    uri = address.uri
    if not isinstance(uri, SipURI):
        raise SipError(400, "Contact must be a SIP or SIPS URI")
    params = address.params
    q = address.q
    return Contact(
        contact=str(uri),
        uri=uri,
        expires=_expires(address.expires, header_expires, settings),
        q=1.0 if q is None else q,
        instance=_instance(params),
        reg_id=_reg_id(params),
    )


def _expires(param: int | None, header_expires: int | None, settings: RegistrarSettings) -> int:
    """The expiry a contact asks for (§10.2.1.1), checked against our bounds (§10.3 step 7)."""
    if param is not None:
        expires = param
    elif header_expires is not None:
        expires = header_expires
    else:
        expires = settings.default_expires
    if 0 < expires < settings.min_expires:
        raise SipError(423, None, [("Min-Expires", str(settings.min_expires))])
    return min(expires, settings.max_expires)


def _header_expires(request: Request) -> int | None:
    try:
        return request.expires
    except ValueError as error:
        if isinstance(error, ParseError):
            raise
        raise ParseError("Bad Expires") from None  # e.g. non-ASCII digits that int() refuses


def _instance(params: dict[str, str | None]) -> str | None:
    """RFC 5626 ``+sip.instance``, without its quotes."""
    if "+sip.instance" not in params:
        return None
    value = params["+sip.instance"]
    instance = unquote(value) if value is not None else ""
    if not instance:
        raise SipError(400, "Bad +sip.instance parameter in Contact")
    return instance


def _reg_id(params: dict[str, str | None]) -> int | None:
    """RFC 5626 ``reg-id``: 1 to 2**31-1."""
    if "reg-id" not in params:
        return None
    value = params["reg-id"]
    if value is None or not _DIGITS.match(value) or len(value) > 10 or not 1 <= int(value) <= _REG_ID_LIMIT:
        raise SipError(400, "Bad reg-id parameter in Contact")
    return int(value)


def matching(existing: list[Binding], wanted: Contact) -> list[Binding]:
    """Step 7: existing bindings the contact updates or replaces, those with its URI first.

    By URI: the same text, else equal by RFC 3261 §19.1.4.  By instance
    (RFC 5626 §6), when the contact has ``+sip.instance``: the same instance
    ID and reg-id, whatever the URI; then a binding of the same instance
    under another reg-id is another flow, kept even under the same URI.
    """
    same_uri = [b for b in existing if b.contact_uri == wanted.contact]
    if not same_uri:
        same_uri = [b for b in existing if _same_uri(b.contact_uri, wanted.uri)]
    key = _instance_key(wanted)
    if key is None:
        return same_uri
    if key[1] is not None:  # §6: the instance's other flows (another reg-id) stay, whatever their URI
        same_uri = [b for b in same_uri if b.instance != key[0] or b.reg_id is None or b.reg_id == key[1]]
    found = {b.contact for b in same_uri}
    return same_uri + [b for b in existing if b.contact not in found and _instance_key(b) == key]


def _instance_key(item: Binding | Contact) -> tuple[str, int | None] | None:
    """RFC 5626 §6: ``(instance ID, reg-id)`` naming one registration of a UA instance; None without an instance."""
    if item.instance is None:
        return None
    return item.instance, item.reg_id


def _same_uri(text: str, uri: SipURI) -> bool:
    try:
        return parse_uri(text) == uri
    except ParseError:
        return False


def check_order(binding: Binding, call_id: str, cseq: int) -> None:
    """Step 7: the same Call-ID must come with a higher CSeq, or the whole request fails."""
    if binding.call_id == call_id and binding.cseq >= cseq:
        raise SipError(500, "Out of order CSeq")
