# -*- test-case-name: tests.test_web_access -*-
"""Who may see and change the bindings page: the Host check, the admin password and its throttle.

Three questions, asked of every request before a route runs
(:class:`AccessGuard`, in front of the Klein app as the admission guard is
in front of the SIP transactions):

- **Is this Host one of ours?** On a loopback listener every request (reads
  included) must name this machine: an IPv4 loopback literal
  (``127.0.0.1``, any of 127/8), ``[::1]``, ``localhost``, or one of the
  names the server was given (its domains and advertised host), each with
  an optional port. A page from ``evil.example`` that the attacker's DNS
  rebinds to 127.0.0.1 sends ``Host: evil.example`` and gets 403 naming it. No
  prefix or suffix matching: ``127.evil.example`` and ``localhost.evil``
  are names the attacker owns.
- **Is the request public?** A public listener (see
  :func:`sipproxy.web.is_loopback_description`) or a loopback one reached
  through a reverse proxy (``Forwarded`` / ``X-Forwarded-For``). With a
  password, a public request needs HTTP Basic credentials (user ``admin``)
  for everything but ``/healthz`` and ``/metrics``, which show no binding.
- **Is this address guessing?** :class:`LoginThrottle`: after
  :data:`FREE_FAILURES` wrong passwords from one client address, it must
  wait 1 s, and after each further failure twice as long, up to 15 minutes
  (429 + ``Retry-After``; attempts while it waits are not even looked
  at); a success clears that address only.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request
from zope.interface import implementer

from sipproxy.net import Clock

__all__ = [
    "ADMIN_USER",
    "FREE_FAILURES",
    "OPEN_PATHS",
    "AccessGuard",
    "HostCheck",
    "LoginThrottle",
    "check_password",
    "client_address",
    "forwarded",
    "refuse",
]


ADMIN_USER = "admin"
"""The only user name the ``--web-password`` is accepted with."""

FREE_FAILURES = 5
"""Wrong passwords from one address after which (and after each further one) it has to wait."""

FIRST_DELAY = 1.0
"""Seconds the first throttled attempt waits; each further failure doubles it."""

MAX_DELAY = 900.0
"""The longest wait, like ``--block-time``'s default for SIP."""

FORGET_AFTER = 3600.0
"""Seconds after its last failure (and its wait) that an address's count is forgotten."""

MAX_TRACKED = 10_000
"""Addresses the throttle remembers; the longest quiet ones go first beyond it."""

OPEN_PATHS = frozenset({b"/healthz", b"/metrics"})
"""What a public listener serves without the password: health and counters, no binding."""

_CHALLENGE = b'Basic realm="sipproxy", charset="UTF-8"'


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


# -- the password and its throttle ---------------------------------------------------


@dataclass
class _Failures:
    count: int = 0
    until: float = 0.0
    """Clock time before which this address may not try again."""
    logged: bool = False


class LoginThrottle:
    """Wrong ``--web-password`` attempts counted per client address, with a doubling wait after the free ones.

    The answer to an address that must wait is given without looking at its
    credentials, so guesses cost the guesser time, not us work. A success
    clears only its own address's count. Memory is bounded: an address is
    forgotten :data:`FORGET_AFTER` seconds after its wait ends, and at most
    :data:`MAX_TRACKED` are kept.
    """

    log = Logger(namespace="sipproxy.web")

    def __init__(self, clock: Clock, free: int = FREE_FAILURES, max_tracked: int = MAX_TRACKED) -> None:
        self.clock = clock
        self.free = free
        self.max_tracked = max_tracked
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def wait(self, client: str) -> float:
        """Seconds ``client`` must still wait before its next attempt is looked at (0: none)."""
        entry = self._failures.get(client)
        if entry is None:
            return 0.0
        now = self.clock.seconds()
        if now >= entry.until + FORGET_AFTER:
            del self._failures[client]
            return 0.0
        return max(0.0, entry.until - now)

    def failed(self, client: str) -> None:
        """Count one wrong password from ``client``; from the ``free``-th on it waits, twice as long each time."""
        entry = self._failures.pop(client, None) or _Failures()
        self._failures[client] = entry  # most recent last
        entry.count += 1
        if entry.count >= self.free:
            delay = min(MAX_DELAY, FIRST_DELAY * 2 ** min(entry.count - self.free, 32))
            entry.until = self.clock.seconds() + delay
            if not entry.logged:
                entry.logged = True
                self.log.info(
                    "Web password attempts from {client} throttled after {count} failures "
                    "(each further one waits longer, up to {most:.0f} s)",
                    client=client,
                    count=entry.count,
                    most=MAX_DELAY,
                )
        else:
            entry.until = self.clock.seconds()
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """The right password from ``client``: its count starts again (others' stay)."""
        self._failures.pop(client, None)


def check_password(request: Request, password: str) -> bool:
    """Whether ``request`` carries ``admin`` and ``password`` in HTTP Basic (compared in constant time)."""
    user_ok = hmac.compare_digest(request.getUser(), ADMIN_USER.encode())
    password_ok = hmac.compare_digest(request.getPassword(), password.encode("utf-8"))
    return user_ok and password_ok


# -- where a request comes from ----------------------------------------------------


def forwarded(request: Request) -> bool:
    """Whether a reverse proxy says it forwarded ``request`` for someone else."""
    return request.getHeader(b"forwarded") is not None or request.getHeader(b"x-forwarded-for") is not None


def client_address(request: Request, *, trust_forwarded: bool) -> str:
    """The address a request comes from: what logs name and password attempts are counted against.

    The peer's address; on a loopback listener (``trust_forwarded``) behind
    a reverse proxy, the last ``X-Forwarded-For`` entry, which the proxy
    itself appended, so that clients of one proxy are counted apart. On a
    public listener anyone can write that header, so it is not read.
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
    """A resource in front of the page's Klein resource: Host check, then password for public requests.

    ``is_public(request)`` says whether a request is public (public
    listener or forwarded); ``public_listener`` whether the listener itself
    is. ``password`` is ``--web-password``; without one nothing is asked
    (the page refuses removals to public requests then; ``twistd
    sipproxy`` does not start a public listener without one).
    """

    isLeaf = True
    log = Logger(namespace="sipproxy.web")

    def __init__(
        self,
        inner: IResource,
        clock: Clock,
        *,
        public_listener: bool,
        hosts: HostCheck,
        password: str | None = None,
        is_public: Callable[[Request], bool] | None = None,
    ) -> None:
        self.inner = inner
        self.public_listener = public_listener
        self.hosts = hosts
        self.password = password
        self.is_public = is_public or (lambda request: public_listener or forwarded(request))
        self.throttle = LoginThrottle(clock)

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
        if self.password is None or not self.is_public(request) or request.path in OPEN_PATHS:
            return None
        client = client_address(request, trust_forwarded=not self.public_listener)
        if self.throttle.wait(client) > 0:
            return self._throttled(request, client)
        if check_password(request, self.password):
            self.throttle.succeeded(client)
            return None
        if request.getHeader(b"authorization") is not None:
            self.throttle.failed(client)
            if self.throttle.wait(client) > 0:
                return self._throttled(request, client)
        return refuse(
            request, 401, "this page needs user admin and the --web-password", {b"www-authenticate": _CHALLENGE}
        )

    def _throttled(self, request: Request, client: str) -> bytes:
        wait = math.ceil(self.throttle.wait(client))
        reason = f"too many wrong passwords from {client}: try again in {wait} s"
        return refuse(request, 429, reason, {b"retry-after": str(wait).encode()})

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
