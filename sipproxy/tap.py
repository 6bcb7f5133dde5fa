# -*- test-case-name: tests.test_tap -*-
"""``twistd sipproxy``: command-line options and ``makeService``.

Two kinds of start-up refusal, each one line naming the option and its value,
with exit status 1 and no traceback:

- a mistake in the command line (a value that is not a port, not an IP
  address, not a strports description, an unreadable ``--users`` file):
  ``postOptions`` raises ``UsageError``, and ``twistd`` prints the option
  list followed by that line;
- what only the machine can tell (``--db`` cannot be opened or written, the
  SIP or web port is in use, ``--sip-interface`` is not an address of this
  host): ``makeService`` opens the database and binds every port before
  anything starts, and exits with just that line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

__all__ = ["Options", "makeService"]


def _port(name: str, value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise usage.UsageError(f"--{name} {value!r}: not a port number (1-65535)")
    return int(value)


def _strports(name: str, value: str) -> str:
    """Refuse what ``endpoints.serverFromString`` cannot read (``tcp:abc``), as it would at start-up."""
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(None, value)  # parsed only: no reactor is needed until it listens
    except (ValueError, TypeError, KeyError, OSError) as error:
        raise usage.UsageError(
            f"--{name} {value!r}: not a strports description such as tcp:8080:interface=127.0.0.1 ({error})"
        ) from None
    return value


def _tcp_port(name: str, description: str) -> int:
    """The port of a ``tcp:``/``tcp6:`` strports description (what Via and Record-Route name)."""
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6"):
        raise usage.UsageError(f"--{name} {description!r}: give a tcp: description (TLS for WSS comes from --tls-cert)")
    for part in rest.split(":"):
        value = part.removeprefix("port=")
        if "=" not in value and value:
            return _port(name, value)
    raise usage.UsageError(f"--{name} {description!r}: names no port")


def _positive(name: str, value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise usage.UsageError(f"--{name} must be a positive whole number of seconds or items, not {value!r}")
    return int(value)


def _non_negative(name: str, value: str, meaning: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number < float("inf"):
        raise usage.UsageError(f"--{name} must be {meaning}, not {value!r}")
    return number


def _fraction(name: str, value: str) -> float:
    """``10%`` or ``0.1``: a share from 0 up to (not including) 1."""
    text = str(value).strip()
    percent = text.endswith("%")
    number = _non_negative(name, text[:-1] if percent else text, "a share such as 10% or 0.1 (0: off)")
    number = number / 100 if percent else number
    if number >= 1:
        raise usage.UsageError(f"--{name} must be below 100%, not {value!r}")
    return number


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A SIP registrar and stateful proxy (RFC 3261). SIP on UDP and TCP, "
        "a live bindings page on the web, registrations kept in SQLite."
    )

    optParameters = [  # noqa: RUF012 - Twisted's usage.Options convention
        ["sip-port", None, "5060", "UDP and TCP port for SIP."],
        ["sip-interface", None, "", "Address to listen on for SIP (default: all IPv4 and IPv6 addresses)."],
        [
            "advertised-host",
            None,
            None,
            "Host or address put in our Via and Record-Route (default: the interface, or this host's address).",
        ],
        ["web", None, "tcp:8080:interface=127.0.0.1", "strports description for the bindings page and JSON API."],
        [
            "web-password",
            None,
            None,
            "Password (user 'admin') for the page and API when --web listens beyond loopback (required there).",
        ],
        [
            "max-event-streams",
            None,
            "100",
            "Live event streams (/api/events) open at once; one more gets 503 and its page polls instead.",
        ],
        ["db", None, "sipproxy.sqlite", "SQLite file for the bindings (':memory:' keeps them in memory only)."],
        [
            "store",
            None,
            None,
            "redis://[:password@]host:port/db (rediss:// for TLS): keep the bindings and the server secret in a "
            "Redis shared by several nodes, instead of --db (see README, Several nodes).",
        ],
        [
            "store-ca",
            None,
            None,
            "PEM file of the CA certificates a rediss:// --store's certificate must chain to (default: the system's).",
        ],
        ["node-id", None, None, "This node's name in the shared store (default: advertised host:SIP port)."],
        [
            "workers",
            None,
            "1",
            "Processes serving the SIP port together (SO_REUSEPORT); more than 1 needs --store redis://.",
        ],
        ["worker", None, "0", "(set by worker 0 for the workers it starts)"],
        ["worker-ports", None, None, "(set by worker 0 for the workers it starts: every worker's own port)"],
        ["min-expires", None, "60", "Shortest registration accepted (423 Interval Too Brief below it)."],
        ["max-expires", None, "7200", "Longest registration granted (longer requests are lowered)."],
        ["max-contacts", None, "10", "Bindings allowed per address-of-record."],
        [
            "flow-timer",
            None,
            "120",
            "Seconds between a phone's keep-alives on an RFC 5626 outbound connection (Flow-Timer; UDP: at most 29).",
        ],
        [
            "expires-jitter",
            None,
            "0",
            "Grant each registration a random expiry in [expires x (1 - J), expires], e.g. 10%, so that phones "
            "registered together (after an outage) refresh spread out. 0: the expiry asked for (within bounds).",
        ],
        ["timer-c", None, "180", "Seconds a forwarded INVITE may ring unanswered before it is cancelled (Timer C)."],
        ["users", None, None, "Digest users file (user:realm:HA1 lines, see sipproxy-passwd); enables authentication."],
        ["realm", None, None, "Digest realm (default: the first --domain)."],
        [
            "digest-algorithms",
            None,
            "SHA-256,MD5",
            "Digest algorithms offered with --users (SHA-256 and/or MD5). With both, a phone not seen before "
            "gets MD5 alone, is offered SHA-256 first at a later REGISTER and keeps it if it answers it "
            "(see README, Authentication and limits).",
        ],
        [
            "nonce-lifetime",
            None,
            "300",
            "Seconds a digest nonce is accepted; after it the phone gets a new challenge (stale=true).",
        ],
        [
            "max-failures",
            None,
            "10",
            "Failed authentications within 5 minutes that block a phone (address and user name) or a user name; "
            "failures for this many user names from one address block the address.",
        ],
        [
            "block-time",
            None,
            "900",
            "Seconds a blocked phone, user name or address stays blocked (its requests get 403).",
        ],
        [
            "rate-limit",
            None,
            None,
            "Requests/s per source address (bursts: 5 s worth; 10x with a binding); over it 503. "
            "Default: 20 with --users, else none; 0: none.",
        ],
        [
            "max-message-size",
            None,
            "65535",
            "Largest SIP request accepted on UDP and TCP, in bytes (513 Message Too Large above).",
        ],
        [
            "max-transactions",
            None,
            "20000",
            "Proxied requests awaiting their final response above which new requests get 503 + Retry-After.",
        ],
        [
            "overload-lag",
            None,
            "0",
            "Seconds the reactor may run behind (three times in a row, sampled every 50 ms) before new requests "
            "get 503 + Retry-After; requests of established dialogs still pass. 0: off.",
        ],
        [
            "overload-wait",
            None,
            "0.5",
            "Overload control: the seconds a message may wait before it is read. Once messages wait 40% of it, "
            "a share of the new out-of-dialog requests gets 503 + jittered Retry-After, as many as keeps the wait "
            "near 20% of it; UDP datagrams that waited 4 times it are dropped unread. 0: off.",
        ],
        # -- the recent calls (sipproxy.calls) --
        [
            "recent-calls",
            None,
            "200",
            "Calls kept for the Recent calls page and /api/calls, with their call-flow ladders (0: none).",
        ],
        [
            "recent-calls-bytes",
            None,
            "4M",
            "Memory for the recent calls and their messages, in bytes (K, M suffixes); the oldest calls go "
            "beyond it. 0: outcomes only, no call-flow ladders (the transport then captures nothing).",
        ],
        # -- the binding history (sipproxy.location.history) --
        [
            "history-age",
            None,
            "7d",
            "How long the binding history keeps an event (s, m, h, d suffixes; default 7d); in --db's file, "
            "or in memory with --db :memory:.",
        ],
        [
            "history-events",
            None,
            "50",
            "Binding history events kept per address-of-record (0: no history).",
        ],
        # -- HEP (sipproxy.transport.hep, sipproxy.transport.hep3) --
        [
            "hep",
            None,
            None,
            "udp:HOST:PORT of a Homer capture server: a HEP3 copy of every SIP message sent and received goes there.",
        ],
        ["hep-capture-id", None, "2001", "The capture agent ID in each HEP copy (--hep), 0-4294967295."],
        ["hep-password", None, None, "The authentication key in each HEP copy, when the capture server wants one."],
        # -- TCP (sipproxy.transport.stream) --
        [
            "tcp-message-timeout",
            None,
            "30",
            "Seconds a TCP message (header section and body) may take to arrive from its first byte; "
            "slower senders are disconnected.",
        ],
        [
            "max-connections",
            None,
            "1024",
            "TCP, TLS and WebSocket connections open at once, in all (64 per address); at the limit the peer's "
            "connection idle longest without a binding is closed for the newcomer.",
        ],
        # -- TLS (sipproxy.transport.tls, sipproxy.transport.certificates) --
        ["tls-cert", None, None, "PEM certificate chain (e.g. certbot's fullchain.pem); enables TLS. SIGHUP reloads."],
        ["tls-key", None, None, "PEM private key of --tls-cert (e.g. certbot's privkey.pem), unencrypted."],
        ["tls-port", None, "5061", "TCP port of the TLS listener (with --tls-cert)."],
        ["tls-ca", None, None, "PEM CA certificate(s) outgoing TLS peers must be signed by (default: the system's)."],
        [
            "tls-client-cert",
            None,
            None,
            "PEM certificate chain presented to TLS peers that ask for one (mutual TLS; default: --tls-cert).",
        ],
        ["tls-client-key", None, None, "PEM private key of --tls-client-cert."],
        # -- WebSocket (sipproxy.transport.websocket, RFC 7118) --
        ["ws", None, None, "strports description (tcp:PORT[:interface=ADDR]) for SIP over WebSocket, e.g. tcp:8088."],
        [
            "wss",
            None,
            None,
            "strports description (tcp:...) for SIP over secure WebSocket; its certificate is --tls-cert's.",
        ],
        [
            "ws-origin",
            None,
            None,
            "Comma-separated origins (https://phone.example.com) whose pages may connect over WS/WSS (default: any).",
        ],
    ]
    optFlags = [  # noqa: RUF012
        ["log-sip", None, "Log every SIP message in and out (info level)."],
        ["debug", None, "Log at debug level, including the SIP trace."],
        [
            "keep-flow-bindings",
            None,
            "Keep outbound and WebSocket bindings until they expire when their connection closes (default: drop).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["domains"] = []

    def opt_domain(self, domain: str) -> None:
        """Domain we serve as registrar and home proxy (repeatable; default: host name, FQDN, localhost, our IPs)."""
        domain = domain.strip().lower()
        if not domain or (any(c in domain for c in " \t;:@<>/") and not domain.startswith("[")):
            raise usage.UsageError(f"{domain!r} is not a domain name")
        self["domains"].append(domain)

    # -- DNS (sipproxy.transport.resolve, RFC 3263) --
    def opt_dns(self, value: str) -> None:
        """DNS server to ask, IP[:PORT] or [IPv6]:PORT, instead of /etc/resolv.conf's (repeatable; default port 53)."""
        text = value.strip()
        if text.startswith("["):  # [IPv6]:PORT
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else rest or "53"
        elif text.count(":") == 1:  # IPv4:PORT
            host, port = text.split(":")
        else:  # a bare IPv4 or IPv6 address
            host, port = text, "53"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            host = ""
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise usage.UsageError(f"--dns {value!r}: not IP[:PORT] or [IPv6]:PORT, such as 127.0.0.1:53")
        self.setdefault("dns", []).append((host, int(port)))

    def postOptions(self) -> None:
        self["sip-port"] = _port("sip-port", self["sip-port"])
        iface = self["sip-interface"]
        if iface:
            try:
                ipaddress.ip_address(iface)
            except ValueError:
                raise usage.UsageError(f"--sip-interface must be an IP address, not {iface!r}") from None
        for name in ("min-expires", "max-expires", "max-contacts", "timer-c", "flow-timer"):
            self[name] = _positive(name, self[name])
        if self["min-expires"] > self["max-expires"]:
            raise usage.UsageError("--min-expires must not exceed --max-expires")
        if not self["web"]:
            raise usage.UsageError("--web needs a strports description such as tcp:8080:interface=127.0.0.1")
        _strports("web", self["web"])
        self["max-event-streams"] = _positive("max-event-streams", self["max-event-streams"])
        self._web_password()
        if not self["db"]:
            raise usage.UsageError("--db needs a file name or :memory:")
        self._store()
        self._workers()
        self._security_options()
        self["tcp-message-timeout"] = _positive("tcp-message-timeout", self["tcp-message-timeout"])
        self["max-connections"] = _positive("max-connections", self["max-connections"])
        self._recent_calls()
        self._history_options()
        self._hep_options()
        self._tls_options()
        self._websocket_options()

    def _store(self) -> None:
        """``--store``: a Redis URL, read here; whether Redis answers is ``startup.redis_secret``'s business."""
        from sipproxy.location.redis_url import parse_redis_url

        url, ca = self["store"], self["store-ca"]
        if url is None:
            if ca is not None:
                raise usage.UsageError("--store-ca is for a rediss:// --store")
            return
        try:
            address = parse_redis_url(url)
        except ValueError as error:
            shown = url.split("@")[-1]  # never the password
            raise usage.UsageError(
                f"--store ...{shown}: {error}; give redis://[:password@]host:port/db or rediss://..."
            ) from None
        if ca is not None:
            if not address.tls:
                raise usage.UsageError("--store-ca is for a rediss:// --store (Redis over TLS)")
            from sipproxy.transport.certificates import CertificateError, trust_root

            try:
                trust_root("--store-ca", ca)
            except CertificateError as error:
                raise usage.UsageError(str(error)) from None
            address = dataclasses.replace(address, ca=ca)
        self["store-address"] = address
        if self["node-id"] is not None and not self["node-id"].strip():
            raise usage.UsageError("--node-id must not be empty")

    def _workers(self) -> None:
        """``--workers N``: a positive number; above 1 only with the shared store (see ``sipproxy.workers``)."""
        self["workers"] = _positive("workers", self["workers"])
        if self["workers"] > 1 and self["store"] is None:
            raise usage.UsageError(
                "--workers above 1 needs --store redis://...: each worker keeps its own view of the bindings, "
                "and only Redis's change feed keeps them in step (see README, Several workers)"
            )
        if not str(self["worker"]).isdigit():
            raise usage.UsageError("--worker is set by sipproxy itself")
        self["worker"] = int(self["worker"])
        ports = self["worker-ports"]
        if ports is not None:
            try:
                self["worker-ports"] = [int(p) for p in ports.split(",")]
            except ValueError:
                raise usage.UsageError("--worker-ports is set by sipproxy itself") from None

    def _recent_calls(self) -> None:
        """``--recent-calls`` and ``--recent-calls-bytes``: whole numbers, 0 allowed (off)."""
        count = self["recent-calls"]
        if not str(count).isdigit():
            raise usage.UsageError(f"--recent-calls must be a whole number of calls (0: none), not {count!r}")
        self["recent-calls"] = int(count)
        text = str(self["recent-calls-bytes"]).strip()
        digits, unit = (text[:-1], text[-1].upper()) if text[-1:].upper() in ("K", "M") else (text, "")
        if not digits.isdigit():
            raise usage.UsageError(
                f"--recent-calls-bytes must be a number of bytes such as 4M or 500K (0: no ladders), not {text!r}"
            )
        self["recent-calls-bytes"] = int(digits) << {"": 0, "K": 10, "M": 20}[unit]

    def _history_options(self) -> None:
        """``--history-age`` (a duration, above 0) and ``--history-events`` (a whole number, 0: off)."""
        text = str(self["history-age"]).strip().lower()
        digits, unit = (text[:-1], text[-1]) if text[-1:] in ("s", "m", "h", "d") else (text, "s")
        if not digits.isdigit() or int(digits) == 0:
            raise usage.UsageError(
                f"--history-age must be a duration such as 7d, 12h or 3600 (seconds), above 0, not {text!r}"
            )
        self["history-age"] = float(int(digits) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])
        count = str(self["history-events"]).strip()
        if not count.isdigit():
            raise usage.UsageError(f"--history-events must be a whole number of events (0: no history), not {count!r}")
        self["history-events"] = int(count)

    def _hep_options(self) -> None:
        """``--hep udp:HOST:PORT`` (a host name is resolved now), ``--hep-capture-id`` a 32-bit number."""
        from sipproxy.transport.hep import parse_capture_server

        capture_id = str(self["hep-capture-id"]).strip()
        if not capture_id.isdigit() or int(capture_id) > 0xFFFFFFFF:
            raise usage.UsageError(f"--hep-capture-id must be a whole number 0-4294967295, not {capture_id!r}")
        self["hep-capture-id"] = int(capture_id)
        if self["hep"] is None:
            if self["hep-password"] is not None:
                raise usage.UsageError("--hep-password needs --hep udp:HOST:PORT")
            return
        try:
            self["hep-server"] = parse_capture_server(self["hep"])
        except ValueError as error:
            raise usage.UsageError(f"--hep {self['hep']!r}: {error}") from None

    def _tls_options(self) -> None:
        """Which TLS files go together; whether they can be read is ``startup.load_certificates``' business."""
        self["tls-port"] = _port("tls-port", self["tls-port"])
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together: the certificate chain and its private key")
        if bool(self["tls-client-cert"]) != bool(self["tls-client-key"]):
            raise usage.UsageError("--tls-client-cert and --tls-client-key go together")
        if not self["tls-cert"]:
            given = [name for name in ("tls-ca", "tls-client-cert") if self[name]]
            if given:
                raise usage.UsageError(f"--{given[0]} needs --tls-cert and --tls-key: TLS is off without them")
        if self["tls-cert"] and self["tls-port"] == self["sip-port"]:
            raise usage.UsageError(f"--tls-port {self['tls-port']}: is --sip-port's too (TCP there); pick another")

    def _websocket_options(self) -> None:
        """``--ws``/``--wss``: plain TCP descriptions (WSS gets its TLS from --tls-cert, so SIGHUP renews it)."""
        for name in ("ws", "wss"):
            description = self[name]
            if description is None:
                continue
            self[f"{name}-port"] = _tcp_port(name, description)
            _strports(name, description)
        if self["wss"] and not self["tls-cert"]:
            raise usage.UsageError("--wss needs --tls-cert and --tls-key: its certificate is the TLS listener's")
        origins = self["ws-origin"]
        if origins is not None:
            listed = [o.strip().rstrip("/") for o in origins.split(",") if o.strip()]
            bad = [o for o in listed if "://" not in o]
            if not listed or bad:
                raise usage.UsageError(f"--ws-origin takes origins such as https://phone.example.com, not {origins!r}")
            self["ws-origin"] = frozenset(listed)

    def _web_password(self) -> None:
        """A page beyond loopback shows every binding's address, User-Agent and Call-ID: only with a password."""
        from sipproxy.web import is_loopback_description

        if self["web-password"] is not None and not self["web-password"]:
            raise usage.UsageError("--web-password must not be empty")
        if self["web-password"] is None and not is_loopback_description(self["web"]):
            raise usage.UsageError(
                f"--web {self['web']} listens beyond loopback, where the page shows every binding's address, "
                "User-Agent and Call-ID: give --web-password (and put TLS in front, see the README) "
                "or listen on interface=127.0.0.1"
            )

    def _security_options(self) -> None:
        from sipproxy.auth.digest import canonical_algorithm
        from sipproxy.security.settings import load_users

        for name in ("max-failures", "block-time", "max-message-size", "max-transactions", "nonce-lifetime"):
            self[name] = _positive(name, self[name])
        self["overload-lag"] = _non_negative("overload-lag", self["overload-lag"], "a number of seconds (0: off)")
        self["overload-wait"] = _non_negative("overload-wait", self["overload-wait"], "a number of seconds (0: off)")
        self["expires-jitter"] = _fraction("expires-jitter", self["expires-jitter"])
        if self["rate-limit"] is not None:
            self["rate-limit"] = _non_negative(
                "rate-limit", self["rate-limit"], "a number of requests per second (0: none)"
            )
        algorithms = [a.strip() for a in self["digest-algorithms"].split(",") if a.strip()]
        if not algorithms or any(canonical_algorithm(a) not in ("SHA-256", "MD5") for a in algorithms):
            raise usage.UsageError(f"--digest-algorithms takes SHA-256 and/or MD5, not {self['digest-algorithms']!r}")
        self["digest-algorithms"] = tuple(canonical_algorithm(a) for a in algorithms)
        if self["realm"] is not None and not self["realm"].strip():
            raise usage.UsageError("--realm must not be empty")
        if self["users"]:
            try:
                self["users-db"] = load_users(self["users"])  # read once: build_security takes it from here
            except OSError as error:
                raise usage.UsageError(f"--users {self['users']}: cannot read it: {error.strerror}") from None
            except (UnicodeDecodeError, ValueError) as error:
                raise usage.UsageError(f"--users {self['users']}: {error}") from None


def makeService(options: Options) -> IService:
    """The server with its database open and every port bound; a check that fails exits with its one line."""
    from twisted.internet import reactor

    from sipproxy.service import StartupError, build_service

    reactor_: Any = reactor
    if options["workers"] > 1 and options["worker-ports"] is None:  # worker 0: the others' ports, then the others
        import sys

        from sipproxy.workers import Workers, free_ports

        options["worker-ports"] = free_ports(options["workers"], options["sip-interface"])
        argv = sys.argv[sys.argv.index("sipproxy") + 1 :] if "sipproxy" in sys.argv else []
        workers: Any = Workers(reactor_, argv, options["workers"], options["worker-ports"])
    else:
        workers = None
    try:
        service = build_service(options, reactor_)
        service.listen()
    except StartupError as error:
        raise SystemExit(f"sipproxy: {error}") from None
    if workers is not None:
        workers.setServiceParent(service)
    return service
