# -*- test-case-name: tests.test_web_access -*-
"""Who may see and change the bindings page: the Host check.

On a loopback listener every request (reads included) must name this
machine in its ``Host`` (:class:`HostCheck`): an IPv4 loopback literal
(``127.0.0.1``, any of 127/8), ``[::1]``, ``localhost``, or one of the names
the server was given (its domains and advertised host), each with an
optional port. A page from ``evil.example`` that the attacker's DNS rebinds
to 127.0.0.1 sends ``Host: evil.example`` and gets 403 with a reason
naming that Host. No prefix or suffix matching:
``127.evil.example`` and ``localhost.evil`` are names the attacker owns.
:class:`AccessGuard` asks it before any route runs, in front of the Klein
app as the admission guard is in front of the SIP transactions.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request
from zope.interface import implementer

__all__ = ["AccessGuard", "HostCheck", "client_address", "forwarded", "refuse"]


# -- Host ----------------------------------------------------------------------


def _split_host(host: str) -> str | None:
    """``host[:port]`` or ``[v6][:port]`` without its port, lower case; None when it is not one."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        name, rest = host[: end + 1], host[end + 1 :]
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and 0 < int(rest[1:]) < 65536):
        return None
    return name.removesuffix(".") or None


def _canonical(name: str) -> str:
    """A configured name as Host would carry it: lower case, IPv6 in brackets."""
    name = name.strip().lower().removesuffix(".")
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def _is_loopback_literal(name: str) -> bool:
    """``127.x.y.z`` written out in full, or ``[::1]`` (any spelling of it)."""
    if name.startswith("[") and name.endswith("]"):
        try:
            return ipaddress.IPv6Address(name[1:-1]).is_loopback
        except ValueError:
            return False
    try:
        return ipaddress.IPv4Address(name).is_loopback  # strict: "127.1" and "127.evil.example" are not addresses
    except ValueError:
        return False


class HostCheck:
    """Which ``Host`` headers name this server on a loopback listener."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        """``names``: the server's own names (``--domain``s, advertised host) beside the loopback ones."""
        self.names = frozenset(_canonical(n) for n in names if n.strip()) | {"localhost"}

    def problem(self, header: bytes | None) -> str | None:
        """Why ``header`` is refused, or None when it names us."""
        if header is None:
            return "the request has no Host header"
        host = header.decode("latin-1")
        name = _split_host(host)
        if name is None:
            return f"Host {host!r} is not a host name with an optional port"
        if name.startswith("["):
            try:
                name = f"[{ipaddress.IPv6Address(name[1:-1]).compressed}]"
            except ValueError:
                return f"Host {host!r} is not a host name with an optional port"
        if name in self.names or _is_loopback_literal(name):
            return None
        return f"Host {host!r} is not a name of this server (a DNS-rebinding page?); use 127.0.0.1 or localhost"


# -- where a request comes from ----------------------------------------------------


def forwarded(request: Request) -> bool:
    """Whether a reverse proxy says it forwarded ``request`` for someone else."""
    return request.getHeader(b"forwarded") is not None or request.getHeader(b"x-forwarded-for") is not None


def client_address(request: Request, *, trust_forwarded: bool) -> str:
    """The address a request comes from, as logs name it.

    The peer's address; on a loopback listener (``trust_forwarded``) behind
    a reverse proxy, the last ``X-Forwarded-For`` entry, which the proxy
    itself appended. On a public listener anyone can write that header, so
    it is not read.
    """
    if trust_forwarded:
        header = request.getHeader(b"x-forwarded-for")
        if header:
            last = header.decode("latin-1").rsplit(",", 1)[-1].strip()
            if last:
                return last
    return str(getattr(request.getClientAddress(), "host", "?"))


# -- the guard -------------------------------------------------------------------


def refuse(request: Request, status: int, reason: str, headers: dict[bytes, bytes] | None = None) -> bytes:
    """A JSON error body ``{"error": reason}`` with ``status`` (and ``headers``) set on ``request``."""
    request.setResponseCode(status)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return json.dumps({"error": reason}).encode("utf-8")


@implementer(IResource)
class AccessGuard:
    """A resource in front of the page's Klein resource: the Host check on a loopback listener."""

    isLeaf = True
    log = Logger(namespace="sipproxy.web")

    def __init__(self, inner: IResource, *, public_listener: bool, hosts: HostCheck) -> None:
        self.inner = inner
        self.public_listener = public_listener
        self.hosts = hosts

    def render(self, request: Request) -> bytes | int:
        refusal = self.refusal(request)
        if refusal is not None:
            return refusal
        return self.inner.render(request)  # type: ignore[no-any-return]

    def refusal(self, request: Request) -> bytes | None:
        """The error body when ``request`` may not go on, else None."""
        if not self.public_listener:
            problem = self.hosts.problem(request.getHeader(b"host"))
            if problem is not None:
                return self._refused(request, 403, problem)
        return None

    def _refused(self, request: Request, status: int, reason: str) -> bytes:
        self.log.warn(
            "Web refused {method} {uri} from {client}: {reason}",
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
            client=client_address(request, trust_forwarded=False),
            reason=reason,
        )
        return refuse(request, status, reason)

    # IResource: a leaf, so Site hands every request to render().

    def getChildWithDefault(self, name: bytes, request: Request) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("AccessGuard has no children")
