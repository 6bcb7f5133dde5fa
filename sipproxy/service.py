"""Wiring: one ``MultiService`` of SIP listeners, the location store and the web page."""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from sipproxy.location import BindingEvent, LocationStore, SQLitePersistence
from sipproxy.message import Request, Response, _accel
from sipproxy.metrics import Metrics
from sipproxy.proxy import LocalAddress, Proxy, ProxySettings
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.security import Security, build_security
from sipproxy.stack import Domains, SipStack
from sipproxy.transaction import Target, TransactionLayer
from sipproxy.transport import (
    SipDatagramProtocol,
    SipStreamFactory,
    TransportLayer,
    WireLog,
    normalize_host,
    tcp_connector,
)
from sipproxy.web import QuietSite, is_loopback_description, make_web_resource

__all__ = [
    "build_core",
    "build_service",
    "SipCore",
    "SipProxyService",
    "SipListeners",
    "StoreService",
    "default_domains",
    "advertised_host",
]

log = Logger(namespace="sipproxy")


def advertised_host(interface: str) -> str:
    """The address we put in Via and Record-Route when none was given.

    The listening address if there is one; else the address this host would
    send from (asked of the routing table: connecting a UDP socket sends
    nothing), else what the host name resolves to; loopback only as a last
    resort, since phones on other machines cannot route back to it.
    """
    if interface and interface not in ("0.0.0.0", "::"):
        return interface
    candidates = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 5060))  # TEST-NET-1: a route lookup, no packet leaves
            candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        candidates.append(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    for address in candidates:
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return "127.0.0.1"


def default_domains(interface: str, advertised: str) -> list[str]:
    """The host name, its FQDN, localhost and the addresses we listen on."""
    names = {"localhost", "127.0.0.1", "::1", advertised}
    hostname = socket.gethostname()
    names.update({hostname, socket.getfqdn()})
    if interface and interface not in ("0.0.0.0", "::"):
        names.add(interface)
    else:
        try:
            names.update(info[4][0] for info in socket.getaddrinfo(hostname, None))
        except OSError:
            pass
    return sorted(n.lower() for n in names if n)


UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
"""SO_RCVBUF asked for on the UDP sockets (the kernel caps it at ``net.core.rmem_max``).

The default (about 200 KB, a few hundred small datagrams) overflows when
the reactor pauses for a few tens of milliseconds under load (a commit
checkpointing the SQLite WAL, a garbage collection): every datagram lost
then costs its sender a 500 ms retransmission.
"""


def _bound_socket(family: int, kind: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if kind == socket.SOCK_DGRAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _report_receive_buffer(sock: socket.socket) -> None:
    """Warn when the kernel gave less UDP receive buffer than we asked for (``net.core.rmem_max``)."""
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports twice what it grants
    if granted < UDP_RECEIVE_BUFFER:
        log.warn(
            "UDP receive buffer is {granted} bytes, not the {wanted} asked for (net.core.rmem_max caps it): "
            "bursts may drop requests; raise it with sysctl -w net.core.rmem_max={wanted}",
            granted=granted,
            wanted=UDP_RECEIVE_BUFFER,
        )


class SipListeners(Service):
    """UDP and TCP on the same port, on IPv4 and IPv6 (each family its own sockets).

    The sockets are bound here and handed to the reactor with
    ``adoptDatagramPort``/``adoptStreamPort`` so that IPv6 ones can be
    IPv6-only and share the port number with the IPv4 ones.
    """

    def __init__(self, reactor: Any, transport: TransportLayer, port: int, interface: str) -> None:
        self.reactor = reactor
        self.transport = transport
        self.requested_port = port
        self.interface = interface
        self.port = port
        self.ports: list[Any] = []

    def _addresses(self) -> list[tuple[int, str]]:
        if not self.interface:
            return [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        return [(family, self.interface)]

    def startService(self) -> None:
        super().startService()
        port = self.requested_port
        for attempt in range(20):
            try:
                self._listen_all(port)
                break
            except OSError:
                self._close_ports()
                if self.requested_port != 0 or attempt == 19:
                    raise
        self.transport.listening = len(self.ports)

    def _listen_all(self, port: int) -> None:
        first = True
        for family, address in self._addresses():
            try:
                udp = _bound_socket(family, socket.SOCK_DGRAM, address, port)
            except OSError as exc:
                if family == socket.AF_INET6 and not self.interface:
                    log.warn("No IPv6 SIP listener: {error}", error=str(exc))
                    continue
                raise
            if first and port == 0:
                port = udp.getsockname()[1]
            first = False
            try:
                tcp = _bound_socket(family, socket.SOCK_STREAM, address, port)
            except OSError:
                udp.close()
                raise
            fam = 6 if family == socket.AF_INET6 else 4
            if not self.ports:
                _report_receive_buffer(udp)
            self.ports.append(
                self.reactor.adoptDatagramPort(udp.fileno(), family, SipDatagramProtocol(self.transport, fam))
            )
            udp.close()
            self.ports.append(
                self.reactor.adoptStreamPort(tcp.fileno(), family, SipStreamFactory(self.transport, self.reactor))
            )
            tcp.close()
            shown = f"[{address}]" if family == socket.AF_INET6 else address
            log.info("SIP listening on UDP and TCP {address}:{port}", address=shown, port=port)
        self.port = port

    def _close_ports(self) -> None:
        for p in self.ports:
            p.stopListening()
        self.ports = []

    def stopService(self) -> Any:
        super().stopService()
        self.transport.listening = 0
        for conn in list(self.transport.connections.values()):
            conn.transport.loseConnection()
        self._close_ports()


class Resolver:
    """A and AAAA lookups for the proxy's next hops (``twisted.names``; RFC 3263 NAPTR/SRV not yet)."""

    def __call__(self, host: str, callback: Callable[[str | None], None]) -> None:
        from twisted.names import client

        def found(address: str) -> None:
            callback(address)

        def failed(reason: Failure) -> None:
            log.warn("Could not resolve {host}: {error}", host=host, error=reason.getErrorMessage())
            callback(None)

        client.getHostByName(host).addCallbacks(found, failed)


class BindingLog:
    """Logs the location service's changes: registrations, removals and expiries at info.

    Refreshes (most REGISTERs) are logged at debug, and only with ``--debug``:
    emitting an event per refresh costs throughput even when it is filtered.
    """

    log = Logger(namespace="sipproxy.location")

    def __init__(self, clock: Any, refreshes: bool = False) -> None:
        self.clock = clock
        self.refreshes = refreshes

    def __call__(self, event: BindingEvent) -> None:
        b = event.binding
        if event.kind == "added":
            self.log.info(
                "Registered {aor} -> {contact} for {expires} s from {source}",
                aor=b.aor,
                contact=b.contact,
                expires=b.expires_in(self.clock.seconds()),
                source=b.source(),
            )
        elif event.kind == "refreshed":
            if self.refreshes:
                self.log.debug(
                    "Refreshed {aor} -> {contact} for {expires} s",
                    aor=b.aor,
                    contact=b.contact,
                    expires=b.expires_in(self.clock.seconds()),
                )
        else:
            self.log.info("Binding {kind}: {aor} -> {contact}", kind=event.kind, aor=b.aor, contact=b.contact)


class WalCheckpointer(TimerService):
    """Checkpoints the SQLite write-ahead log every ``interval`` seconds in a worker thread.

    Left to the commits (SQLite's default), a checkpoint copies a thousand
    pages and ``fsync``s in the middle of a reactor turn: p99 REGISTER
    latency 32 ms at 4 000/s instead of 8 ms.  ``run`` is how the call gets
    to a thread (``deferToThread``; tests pass their own).
    """

    def __init__(
        self,
        persistence: SQLitePersistence,
        interval: float = 1.0,
        run: Callable[[Callable[[], object]], Deferred[object]] = deferToThread,
    ) -> None:
        super().__init__(interval, self.checkpoint)
        self.persistence = persistence
        self._run = run
        self._running: Deferred[object] | None = None

    def checkpoint(self) -> None:
        """Start one checkpoint, unless the previous one is still running."""
        if self._running is not None:
            return
        running = self._run(self.persistence.checkpoint)
        self._running = running
        running.addErrback(lambda failure: log.failure("Checkpointing the SQLite log failed", failure))
        running.addBoth(self._finished)

    def _finished(self, _result: object) -> None:
        self._running = None

    def stopService(self) -> Deferred[object]:
        """Stop the timer; the Deferred fires once a checkpoint still running has finished."""
        stopped = maybeDeferred(super().stopService)
        running = self._running
        if running is None:
            return stopped
        done: Deferred[object] = Deferred()
        running.addBoth(lambda _: done.callback(None))
        return stopped.addCallback(lambda _: done)


class StoreService(MultiService):
    """Restores the bindings at start-up; closes the store at shutdown, once its children have stopped.

    The children are what use the store's database besides the reactor (the
    :class:`WalCheckpointer`).
    """

    def __init__(self, store: LocationStore, where: str) -> None:
        super().__init__()
        self.store = store
        self.where = where

    def startService(self) -> None:
        restored = self.store.restore()
        log.info("Restored {count} bindings from {where}", count=restored, where=self.where)
        super().startService()

    def stopService(self) -> Deferred[object]:
        def close(result: object) -> object:
            self.store.close()
            return result

        return maybeDeferred(super().stopService).addBoth(close)


def _tune_garbage_collector() -> None:
    """Keep the cyclic collector from stalling the reactor under load.

    Every transaction lives on for Timer J/K (32 s on UDP), so at a few
    thousand requests a second the heap holds millions of tracked objects,
    and CPython's full collections, triggered whenever the old generation
    grew by a quarter, stalled the reactor for hundreds of milliseconds
    every few seconds (p99 REGISTER latency 180 ms at 1000/s).  Reference
    counting frees transactions (their timers drop their references when
    they fire), so young collections stay as they are and full collections
    only run from :class:`FullCollection`, on a timer.  Objects alive after
    start-up are frozen out of the collector altogether.
    """
    gc.freeze()
    gc.set_threshold(700, 10, 1_000_000)


class FullCollection(TimerService):
    """A full ``gc.collect()`` every ``interval`` seconds, for the rare reference cycle."""

    def __init__(self, interval: float = 600.0) -> None:
        super().__init__(interval, self.collect)

    def collect(self) -> None:
        start = time.perf_counter()
        found = gc.collect()
        log.debug(
            "Full garbage collection: {found} unreachable objects in {ms:.1f} ms",
            found=found,
            ms=(time.perf_counter() - start) * 1000,
        )


class SipProxyService(MultiService):
    """The running server: the SIP core plus its listeners, store and web services."""

    core: SipCore
    listeners: SipListeners

    def startService(self) -> None:
        super().startService()
        _tune_garbage_collector()
        log.info("sipproxy ready")


@dataclass
class SipCore:
    """The SIP server without its sockets and services: what ``build_core`` wires.

    ``transport.udp`` and the TCP factories are filled in by whoever owns the
    sockets (:class:`SipListeners` in production, fakes in tests).
    """

    clock: Any
    metrics: Metrics
    domains: Domains
    local: LocalAddress
    store: LocationStore
    security: Security
    registrar: Registrar
    transport: TransportLayer
    stack: SipStack
    transactions: TransactionLayer
    proxy: Proxy


def build_core(
    clock: Any,
    store: LocationStore,
    domains: Domains,
    local: LocalAddress,
    security: Security,
    metrics: Metrics,
    *,
    connect_tcp: Callable[[str, int, Any, float], Any],
    resolve: Callable[[str, Callable[[str | None], None]], None],
    registrar_settings: RegistrarSettings | None = None,
    proxy_settings: ProxySettings = ProxySettings(),
    wirelog: WireLog | None = None,
) -> SipCore:
    """Transport -> transactions -> stack -> registrar / proxy -> location, with the security hooks."""
    registrar = Registrar(
        store,
        clock,
        registrar_settings or RegistrarSettings(domains=frozenset(domains.names)),
        authenticate=security.registrar_hook,
        log=Logger(namespace="sipproxy.registrar"),
    )
    transport = TransportLayer(connect_tcp, wirelog, metrics)
    stack = SipStack(domains, metrics, registrar=registrar, is_registered=lambda aor: bool(store.lookup(aor)))
    transactions = TransactionLayer(clock, transport, stack)
    transport.transactions = transactions
    transport.guard = security.guard

    def send_stateless(message: Request | Response, target: Target | None) -> None:
        if isinstance(message, Response):
            transport.send_response(message, None)
        elif target is not None:
            transactions.send_stateless(message, target)

    def flow_open(flow: Target) -> bool:
        conn = transport.connections.get((normalize_host(flow.host), flow.port))
        return conn is not None and conn.alive

    proxy = Proxy(
        clock,
        transactions,
        store,
        domains,
        local,
        send_stateless,
        resolve,
        proxy_settings,
        authorize=security.proxy_hook,
        log=Logger(namespace="sipproxy.proxy"),
        flow_open=flow_open,
        # Our Record-Route is signed where something reads the signature: the
        # 407 hook (in-dialog requests of authenticated dialogs pass) and the
        # overload guard (requests of dialogs already up are never shed).
        dialog_token=(
            security.dialog_token if security.users is not None or security.settings.overload_lag else None
        ),
    )
    stack.proxy = proxy
    # In flight: requests still waiting for their final response.  Finished
    # transactions that only absorb retransmissions (Timer J, 32 s) are no load.
    security.guard.in_flight = proxy.active_contexts
    security.guard.is_retransmission = transactions.is_retransmission
    metrics.watch(metrics.bindings, store.count)
    metrics.watch(metrics.aors, store.aor_count)
    metrics.watch(metrics.server_transactions, transactions.server_transaction_count)
    metrics.watch(metrics.client_transactions, transactions.client_transaction_count)
    return SipCore(clock, metrics, domains, local, store, security, registrar, transport, stack, transactions, proxy)


def build_service(options: Mapping[str, Any], reactor: Any) -> SipProxyService:
    """Everything ``twistd sipproxy`` runs, from parsed :class:`sipproxy.tap.Options`."""
    top = SipProxyService()
    metrics = Metrics()
    interface = options["sip-interface"]
    advertised = options.get("advertised-host") or advertised_host(interface)
    domains = Domains(options["domains"] or default_domains(interface, advertised))
    local = LocalAddress(advertised, options["sip-port"])

    db = options["db"]
    persistence = None if db == ":memory:" else SQLitePersistence(db, autocheckpoint=False)
    store = LocationStore(reactor, persistence)
    store.subscribe(BindingLog(reactor, refreshes=bool(options.get("debug"))))
    store_service = StoreService(store, "memory" if persistence is None else db)
    store_service.setServiceParent(top)
    if persistence is not None:
        WalCheckpointer(persistence).setServiceParent(store_service)
    FullCollection().setServiceParent(top)
    secret = persistence.server_secret(lambda: os.urandom(32)) if persistence is not None else None
    security = build_security(options, reactor, metrics, domains, local, store, secret)
    level = LogLevel.info if options.get("log-sip") else LogLevel.debug if options.get("debug") else None
    core = build_core(
        reactor,
        store,
        domains,
        local,
        security,
        metrics,
        connect_tcp=tcp_connector(reactor, reactor),
        resolve=Resolver(),
        registrar_settings=RegistrarSettings(
            domains=frozenset(domains.names),
            min_expires=options["min-expires"],
            max_expires=options["max-expires"],
            max_contacts=options["max-contacts"],
        ),
        proxy_settings=ProxySettings(timer_c=float(options.get("timer-c", 180))),
        wirelog=WireLog(level),
    )
    transport = core.transport
    listeners = SipListeners(reactor, transport, options["sip-port"], interface)
    listeners.setServiceParent(top)
    lag_watch = security.overload_service()  # --overload-lag
    if lag_watch is not None:
        lag_watch.setServiceParent(top)

    web = options["web"]
    resource = make_web_resource(
        store,
        reactor,
        metrics,
        healthy=lambda: bool(top.running) and transport.listening > 0 and not store.last_commit_failed,
        password=options.get("web-password"),
        public=not is_loopback_description(web),
    )
    site = QuietSite(resource)
    strports.service(web, site).setServiceParent(top)
    log.info("Bindings page on {web}", web=web)
    log.info(
        "sipproxy serving domains {domains}; advertised as {advertised}",
        domains=", ".join(domains),
        advertised=advertised,
    )
    if _accel.parse is not None:
        log.info("SIP parser: the C accelerator, with the Python parser for what it hands back")
    else:
        log.warn(
            "SIP parser: pure Python, several times slower: the C accelerator was not built (no C compiler or "
            "Python headers when pip installed sipproxy) or SIPPROXY_NO_EXTENSIONS is set"
        )
    if advertised.startswith("127.") and interface in ("", "0.0.0.0", "::"):
        log.warn(
            "Advertising {advertised} in Via and Record-Route while listening on every address: "
            "phones on other machines cannot reach it; set --advertised-host",
            advertised=advertised,
        )
    security.announce()
    top.core, top.listeners = core, listeners
    return top
