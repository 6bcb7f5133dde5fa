"""Wiring: the SIP layers, the location store, the web page and the services around them, through constructors.

``build_core`` puts the SIP layers together (tests build their servers with
it); ``build_service`` adds what ``twistd sipproxy`` runs around them.  The
jobs themselves live elsewhere: sockets in ``transport/`` (``listen``,
``hosts``), start-up checks in ``startup``, the collector in ``gctune``, log
levels in ``loglevel``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twisted.application.internet import UDPServer
from twisted.application.service import MultiService, Service
from twisted.logger import Logger, LogLevel

from sipproxy.calls import CallObserver
from sipproxy.calls.capture import Capture
from sipproxy.calls.log import CallLog
from sipproxy.calls.ring import RecentCalls
from sipproxy.flowtoken import FLOW_TOKEN_PARAM, Flow, FlowTokens
from sipproxy.gctune import GarbageCollection
from sipproxy.locality import LocalAddress
from sipproxy.location import Binding, LocationBackend, MemoryLocation, SQLiteLocation
from sipproxy.location.history import BindingHistory, HistoryService, HistoryStore, MemoryHistory
from sipproxy.location.historydb import SQLiteHistory
from sipproxy.location.log import BindingLog
from sipproxy.location.redis_secret import RedisReplyError, server_secret
from sipproxy.location.redis_store import RedisLocation, RedisStoreService
from sipproxy.location.redis_url import RedisAddress
from sipproxy.location.services import StoreService, WalCheckpointer
from sipproxy.loglevel import LogLevels
from sipproxy.message import Request, Response, _accel
from sipproxy.message.uri import is_ip_address
from sipproxy.metrics import Metrics
from sipproxy.net import NextHop, is_reliable
from sipproxy.proxy import Proxy, ProxySettings
from sipproxy.proxy.targets import TargetURI
from sipproxy.randomness import set_tag_key
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.security import OverloadFeedback, Security, build_security
from sipproxy.stack import Domains, SipStack
from sipproxy.startup import StartupError, WebListener, bind_sip, load_certificates, open_database
from sipproxy.transaction import Target, TransactionLayer, TransactionSink
from sipproxy.transport import (
    DatagramSender,
    Resolver,
    SipListeners,
    StreamSender,
    TransportLayer,
    TransportLimits,
    WireLog,
    tcp_connector,
)
from sipproxy.transport.certificates import ReloadOnHangup, TLSCertificates, TLSFiles
from sipproxy.transport.flows import RegisteredFlows, flow_state
from sipproxy.transport.hep import HepSender
from sipproxy.transport.hosts import advertised_host, default_domains, listens_everywhere
from sipproxy.transport.sink import MessageSink, MessageTap, Tapped
from sipproxy.transport.tls import TLSConnect, TLSSender, tls_connector, tls_server_factory, tls_wrap
from sipproxy.transport.websocket import SipWebSocketFactory, WebSocketSender, WebSocketSettings
from sipproxy.web import QuietSite, is_loopback_description, make_web_resource

__all__ = [
    "build_core",
    "build_service",
    "SipCore",
    "SipProxyService",
    "StartupError",
    "StoreService",
]

log = Logger(namespace="sipproxy")


class SipProxyService(MultiService):
    """The running server: the SIP core and the services around it, started in the order given.

    ``twistd`` gets it from ``makeService`` after :meth:`listen` has bound
    every port, so that a port in use stops start-up before anything runs.
    """

    def __init__(
        self,
        core: SipCore,
        listeners: SipListeners,
        web: WebListener,
        services: Sequence[Service],
        websockets: Sequence[WebListener] = (),
    ) -> None:
        """``services`` start in order and stop in reverse; ``listeners``, ``web`` and ``websockets`` among them."""
        super().__init__()
        self.core = core
        self.listeners = listeners
        self.web = web
        self.websockets = list(websockets)
        for child in services:
            child.setServiceParent(self)

    def listen(self) -> None:
        """Bind the SIP sockets, then the web page's port, now; :class:`StartupError` names what failed."""
        bind_sip(self.listeners)
        try:
            for websocket in self.websockets:  # --ws, --wss
                websocket.listen()
            self.web.listen()
        except StartupError:
            self.listeners.close()
            for websocket in self.websockets:
                websocket.stopService()
            raise

    def startService(self) -> None:
        super().startService()
        log.info("sipproxy ready")


class AfterRestore(Service):
    """A child of the :class:`StoreService`: the flow-bound bindings' lifecycle around the store's (RFC 5626).

    Once the bindings are restored it drops those whose connection cannot
    have survived the restart (:meth:`Registrar.drop_lost_flows`) and says
    how many.  When it stops (before the store closes) a connection closing
    no longer drops its bindings: the reactor closes every connection at
    shutdown, and the restart's restore drops them anyway.
    """

    def __init__(self, core: SipCore, drop: Callable[[], int]) -> None:
        self.core = core
        self.drop = drop
        self.when: Callable[[Callable[[], None]], None] | None = None
        """When the restore finishes later than the store service starts (Redis's first load): call back then."""

    def stopService(self) -> None:
        self.core.transport.flow_closed = None
        super().stopService()

    def startService(self) -> None:
        super().startService()
        if self.when is not None:
            self.when(self._drop)
        else:
            self._drop()

    def _drop(self) -> None:
        dropped = self.drop()
        if dropped:
            log.info(
                "Dropped {count} restored {bindings} on connections closed by the restart (RFC 5626 flows); "
                "the phones register again",
                count=dropped,
                bindings="binding" if dropped == 1 else "bindings",
            )


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
    store: LocationBackend
    security: Security
    registrar: Registrar
    transport: TransportLayer
    stack: SipStack
    transactions: TransactionLayer
    proxy: Proxy
    history: BindingHistory | None = None
    """The binding history (``--history-events``), ``None`` when off."""


def build_core(
    clock: Any,
    store: LocationBackend,
    domains: Domains,
    local: LocalAddress,
    security: Security,
    metrics: Metrics,
    *,
    connect_tcp: Callable[[str, int, Any, float], Any],
    resolve: Callable[[NextHop | Target, Callable[[list[Target]], None]], None],
    registrar_settings: RegistrarSettings | None = None,
    proxy_settings: ProxySettings = ProxySettings(),
    wirelog: WireLog | None = None,
    transport_limits: TransportLimits = TransportLimits(),
    on_call: CallObserver | None = None,
    tap: MessageTap | None = None,
    connect_tls: TLSConnect | None = None,
    websockets: Sequence[str] = (),
    history: BindingHistory | None = None,
) -> SipCore:
    """The layers bottom-up: transport (§18), transactions (§17), stack, registrar (§10) and proxy (§16).

    Each layer gets what it calls through its constructor.  Messages also
    travel up through the layers that send them down, and those two loops
    are closed in one place, once both ends exist (see the end).
    """
    registrar = Registrar(
        store,
        clock,
        registrar_settings or RegistrarSettings(domains=frozenset(domains.names)),
        authenticate=security.registrar_hook,
        log=Logger(namespace="sipproxy.registrar"),
        local=local,
        on_refused=history.refused if history is not None else None,
    )
    # A stream buffers no more than the guard would accept (513 above it).
    limits = replace(transport_limits, max_message=security.settings.max_message_size)
    flows = RegisteredFlows()  # the connections that carry a binding: the limits keep them
    # A shared store (Redis) has bindings on other nodes' connections: only this node's count here.
    getattr(store, "subscribe_held", store.subscribe)(flows.changed)
    transport = TransportLayer(wirelog, metrics, limits, holds_flow=flows, clock=clock, tap=tap)
    transport.register(DatagramSender(transport))
    transport.register(StreamSender(transport, "TCP", connect_tcp))
    if connect_tls is not None:  # --tls-cert: TLS out (and in, by the listener)
        transport.register(TLSSender(transport, connect_tls))
    for name in websockets:  # "WS", "WSS": only the connections phones opened (RFC 7118)
        transport.register(WebSocketSender(transport, name))
    stack = SipStack(
        domains,
        metrics,
        registrar=registrar,
        is_registered=lambda aor: bool(store.lookup(aor)),
        challenged=security.proxy_challenges,
        local=local,
    )
    transactions = TransactionLayer(clock, transport, stack)

    def send_stateless(message: Request | Response, target: Target | None) -> None:
        if isinstance(message, Response):
            transport.send_response(message, None)
        elif target is not None:
            transactions.send_stateless(message, target)

    # RFC 5626: the flow tokens of our Record-Route, under the server secret kept in --db (they survive a restart).
    flow_tokens = FlowTokens(security.secret)
    if isinstance(store, RedisLocation):  # other nodes reach a phone on our connection through us (Path)
        store.reach_here = lambda binding: _path_through_here(local, flow_tokens, binding)

    def flow_failed(target: TargetURI) -> None:
        if target.aor is not None:
            registrar.flow_lost([(target.aor, target.contact)])

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
        flow_open=transport.has_flow,
        # Our Record-Route is signed where something reads the signature: the
        # 407 hook (in-dialog requests of authenticated dialogs pass) and the
        # overload guard (requests of dialogs already up are never shed).
        dialog_token=(security.dialog_token if security.users is not None or security.settings.overload_lag else None),
        on_call=on_call,
        flow_tokens=flow_tokens,
        flow_failed=flow_failed,
    )

    def flow_closed(name: str, host: str, port: int) -> None:
        # The flow-bound bindings the connection carried go (RFC 5626 §5.3; --keep-flow-bindings keeps them).
        registrar.flow_lost(flows.bindings_on(name, host, port))

    transport.flow_closed = flow_closed
    metrics.watch(metrics.bindings, store.count)
    metrics.watch(metrics.aors, store.aor_count)
    metrics.watch(metrics.server_transactions, transactions.server_transaction_count)
    metrics.watch(metrics.client_transactions, transactions.client_transaction_count)

    # The late bindings, all of them.  What arrives goes up through the
    # layers that send down: the transport hands messages, through the guard,
    # to the transaction layer, which sends through the transport (§18 <-> §17); the stack hands
    # new requests to the proxy, which sends through the transaction layer
    # (§17 <-> §16).  Each loop is closed once both its ends exist.  The
    # guard, below the transactions, reads the load above them: requests
    # still waiting for their final response (finished transactions that only
    # absorb retransmissions, Timer J's 32 s, are no load).
    guard = security.guard
    # the recent calls' capture sees what the guard admitted, on its way to the transactions
    admitted: MessageSink = TransactionSink(transactions, metrics)
    guard.sink = Tapped(tap, admitted) if tap is not None else admitted
    guard.reply = transport.send_to_source
    guard.resend = transport.resend_refusal
    guard.reply_data = transport.send_data_to_source
    transport.sink = guard
    stack.proxy = proxy
    guard.in_flight = proxy.active_contexts
    guard.is_retransmission = transactions.is_retransmission
    if security.congestion is not None:  # RFC 7339: the share refused, to the clients that ask for it
        transport.feedback = OverloadFeedback(security.congestion)
    if history is not None and security.authentication is not None:  # its 401/403 refusals, to the history
        security.authentication.on_refused = history.refused
    return SipCore(
        clock, metrics, domains, local, store, security, registrar, transport, stack, transactions, proxy, history
    )


def build_service(options: Mapping[str, Any], reactor: Any) -> SipProxyService:
    """Everything ``twistd sipproxy`` runs, from parsed :class:`sipproxy.tap.Options`; binds no socket yet.

    Raises :class:`StartupError` for a ``--db`` that cannot be used.
    """
    metrics = Metrics()
    interface = options["sip-interface"]
    advertised = options.get("advertised-host") or advertised_host(interface)
    domains = Domains(options["domains"] or default_domains(interface, advertised))
    tls_files = _tls_files(options)
    worker, worker_ports = options.get("worker", 0), options.get("worker-ports") or []  # --workers
    local = LocalAddress(
        advertised,
        options["sip-port"],
        options.get("tls-port", 5061) if tls_files else None,
        ws_port=options.get("ws-port") if options.get("ws") else None,
        wss_port=options.get("wss-port") if options.get("wss") else None,
        via_port=worker_ports[worker] if worker_ports else None,
        worker_ports=frozenset(worker_ports),
    )
    services: list[Service] = [LogLevels(reactor, debug=bool(options.get("debug")))]

    store, secret, store_service = _location(options, reactor, advertised)
    services.append(store_service)
    history = _binding_history(options, reactor, store)
    if history is not None:  # closed (pending events written) before the store closes
        HistoryService(history.store).setServiceParent(store_service)
    security = build_security(options, reactor, metrics, domains, local, store, secret)
    set_tag_key(security.secret)  # the same To tags in every worker and node sharing the secret
    recent = _recent_calls(options)
    certificates: TLSCertificates | None = load_certificates(tls_files) if tls_files is not None else None
    level = LogLevel.info if options.get("log-sip") else LogLevel.debug if options.get("debug") else None
    hep = _hep_sender(options, reactor, local, interface)
    if hep is not None:  # its socket, opened before the SIP listeners start so that nothing goes uncopied
        services.append(UDPServer(0, hep, interface="::" if ":" in hep.server[0] else "0.0.0.0"))
    core = build_core(
        reactor,
        store,
        domains,
        local,
        security,
        metrics,
        connect_tcp=tcp_connector(reactor, reactor),
        # RFC 3263 over the transports registered below; --dns: these servers, not /etc/resolv.conf's
        # (not WS/WSS: we never open a WebSocket, so a NAPTR record offering one is of no use to us)
        resolve=Resolver(
            reactor,
            servers=options.get("dns"),
            transports=lambda: [t for t in core.transport.senders if t not in ("WS", "WSS")],
        ),
        registrar_settings=RegistrarSettings(
            domains=frozenset(domains.names),
            min_expires=options["min-expires"],
            max_expires=options["max-expires"],
            max_contacts=options["max-contacts"],
            flow_timer=options.get("flow-timer", 120),
            keep_flow_bindings=bool(options.get("keep-flow-bindings")),
            expires_jitter=options.get("expires-jitter", 0.0),
        ),
        proxy_settings=ProxySettings(timer_c=float(options.get("timer-c", 180))),
        wirelog=WireLog(level, copy=hep.copy if hep is not None else None),
        transport_limits=TransportLimits(
            message_timeout=options.get("tcp-message-timeout", 30.0),
            max_connections=options.get("max-connections", 1024),
        ),
        on_call=_observers(CallLog(), recent),
        tap=Capture(recent, reactor) if recent is not None and recent.max_bytes > 0 else None,
        connect_tls=tls_connector(reactor, reactor, certificates) if certificates is not None else None,
        websockets=[name for name in ("WS", "WSS") if options.get(name.lower())],
        history=history,
    )
    # After the restore: bindings on connections that died with the last process are not reachable (RFC 5626 §5.3).
    if isinstance(store, RedisLocation):  # only this node's own, once loaded: the others' connections are alive
        redis = store
        after = AfterRestore(core, lambda: core.registrar.flow_lost(_on_connections(redis.own_bindings())))
        after.when = redis.when_loaded
    else:
        after = AfterRestore(core, core.registrar.drop_lost_flows)
    after.setServiceParent(store_service)
    listeners = SipListeners(
        reactor,
        core.transport,
        options["sip-port"],
        interface,
        tls_port=local.tls_port or 5061,
        tls_factory=tls_server_factory(core.transport, reactor, certificates) if certificates is not None else None,
        reuse_port=bool(worker_ports),
        own_port=local.via_port,
    )
    services.append(listeners)
    if certificates is not None:
        services.append(ReloadOnHangup(reactor, certificates))
    else:
        log.info("TLS is off: no --tls-cert given (see README, TLS)")
    websockets = _websocket_listeners(options, reactor, core.transport, certificates)
    services += websockets
    lag_watch = security.overload_service()  # --overload-lag
    if lag_watch is not None:
        services.append(lag_watch)

    def healthy() -> bool | str:
        """True, or why not (``/healthz`` says it)."""
        if listeners.listening == 0:
            return "no SIP listener"
        problem = store.storage_problem
        if problem is not None:
            return problem
        if core.transport.full:  # every TCP slot taken by registered phones: new ones are refused
            return "every TCP connection slot is taken"
        return True

    description = options["web"]
    resource = make_web_resource(
        store,
        reactor,
        metrics,
        healthy=healthy,
        password=options.get("web-password"),
        public=not is_loopback_description(description),
        debug=bool(options.get("debug")),
        hosts=[*domains, advertised],
        max_streams=options.get("max-event-streams", 100),
        calls=recent,
        explain=lambda uri, from_, method: core.proxy.explain(uri, from_, method, security.users is not None),
        flow=flow_state(core.transport.has_flow),
        history=history,
    )
    web = WebListener(reactor, description, QuietSite(resource))
    services += [web, GarbageCollection()]
    _announce(domains, advertised, interface)
    security.announce()
    return SipProxyService(core, listeners, web, services, websockets)


def _location(
    options: Mapping[str, Any], reactor: Any, advertised: str
) -> tuple[LocationBackend, bytes | None, Service]:
    """The location service ``--store``/``--db`` name, the server secret it keeps, the services that run it.

    With ``--store redis://...`` the bindings and the secret are in Redis
    (shared by every node); the secret is read now, so a node that cannot
    reach Redis does not start. Only this node's changes are logged
    (``subscribe_local``): each change is logged once, by the node that made it.
    """
    log_changes = BindingLog(reactor, refreshes=bool(options.get("debug")))
    address: RedisAddress | None = options.get("store-address")
    if address is not None:
        node = options.get("node-id") or f"{advertised}:{options['sip-port']}"
        if options.get("worker-ports"):  # --workers: each worker is a node of its own in the feed
            node = f"{node}/w{options.get('worker', 0)}"
        try:
            secret = server_secret(address, lambda: os.urandom(32))
        except (OSError, RedisReplyError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise StartupError(f"--store {address.display()}: {reason}") from None
        redis = RedisLocation(reactor, address, node)
        redis.subscribe_local(log_changes)
        return redis, secret, RedisStoreService(redis)
    db = options["db"]
    if db == ":memory:":
        store: MemoryLocation | SQLiteLocation = MemoryLocation(reactor)
    else:
        store = SQLiteLocation(reactor, open_database(db))
    persistence = store.persistence if isinstance(store, SQLiteLocation) else None
    store.subscribe(log_changes)
    store_service = StoreService(store, store.where)
    if persistence is not None:
        WalCheckpointer(persistence).setServiceParent(store_service)
    secret = persistence.server_secret(lambda: os.urandom(32)) if persistence is not None else None
    return store, secret, store_service


def _on_connections(bindings: Sequence[Binding]) -> list[tuple[str, str]]:
    """The ``(aor, contact)`` of the flow-bound bindings on connections (TCP, TLS, WS), which a restart closed."""
    return [(b.aor, b.contact) for b in bindings if b.flow_bound and is_reliable(b.transport)]


def _path_through_here(local: LocalAddress, tokens: FlowTokens, binding: Binding) -> str:
    """RFC 3327 Path to this node for a binding on one of its connections, with the flow's RFC 5626 token.

    Another node sends the request to us (over TCP) with this as its Route;
    we pop it and forward over the flow the token names (RFC 5626 §5.3).
    """
    flow = Flow(
        binding.transport.upper(), local.hostport_for(binding.transport), binding.source_host, binding.source_port
    )
    return f"<sip:{local.via_hostport_for('TCP')};transport=tcp;lr;{FLOW_TOKEN_PARAM}={tokens.encode(flow)}>"


def _websocket_listeners(
    options: Mapping[str, Any], reactor: Any, transport: TransportLayer, certificates: TLSCertificates | None
) -> list[WebListener]:
    """``--ws`` and ``--wss`` (RFC 7118): each a strports port; WSS over TLS with the TLS listener's certificate."""
    settings = WebSocketSettings(origins=options.get("ws-origin"))
    out = []
    for name in ("WS", "WSS"):
        description = options.get(name.lower())
        if not description:
            continue
        factory: Any = SipWebSocketFactory(transport, reactor, name, settings)
        if name == "WSS":
            assert certificates is not None  # tap refuses --wss without --tls-cert
            factory = tls_wrap(factory, certificates, reactor)
        if name == "WS":
            lines = {"listening": "SIP over WS on {web}", "failed": "No WS listener: --ws {web}: {reason}"}
        else:
            lines = {"listening": "SIP over WSS on {web}", "failed": "No WSS listener: --wss {web}: {reason}"}
        shared = bool(options.get("worker-ports"))  # --workers: every worker listens on the port
        out.append(WebListener(reactor, description, factory, option=f"--{name.lower()}", reuse_port=shared, **lines))
    return out


def _hep_sender(options: Mapping[str, Any], reactor: Any, local: LocalAddress, interface: str) -> HepSender | None:
    """``--hep``: the sender, with our side of each message (see :mod:`sipproxy.transport.hep`)."""
    server = options.get("hep-server")
    if server is None:
        return None
    ours = interface or (local.host if is_ip_address(local.host) else "")
    ports = {"UDP": local.port, "TCP": local.port, "TLS": local.tls_port, "WS": local.ws_port, "WSS": local.wss_port}

    def local_side(transport: str, peer: str) -> tuple[str, int]:
        host = ours or ("::" if ":" in peer else "0.0.0.0")
        return host, ports.get(transport.upper()) or local.port

    log.info(
        "HEP3 copies of every SIP message to {host}:{port} (capture ID {id})",
        host=server[0],
        port=server[1],
        id=options.get("hep-capture-id", 2001),
    )
    return HepSender(
        reactor,
        server,
        local_side,
        capture_id=options.get("hep-capture-id", 2001),
        auth_key=options.get("hep-password"),
    )


def _binding_history(options: Mapping[str, Any], reactor: Any, store: LocationBackend) -> BindingHistory | None:
    """``--history-events`` (0: none) and ``--history-age``: in ``--db``'s file, or in memory with ``:memory:``.

    A file whose history table cannot be opened leaves the history in memory, with an error line:
    the bindings do not depend on it.
    """
    count = options.get("history-events", 50)
    if not count:
        return None
    age = float(options.get("history-age", 7 * 86400))
    kept: HistoryStore = MemoryHistory(reactor, age, count)
    if isinstance(store, SQLiteLocation):
        try:
            kept = SQLiteHistory(reactor, store.persistence.path, age, count)
        except sqlite3.Error as error:
            log.error(
                "Binding history: cannot use {path} ({error}); keeping it in memory until restarted",
                path=store.persistence.path,
                error=error,
            )

    history = BindingHistory(kept, reactor)
    store.subscribe(history.changed)
    return history


def _recent_calls(options: Mapping[str, Any]) -> RecentCalls | None:
    """``--recent-calls`` (0: none) and ``--recent-calls-bytes`` (0: records only, no call-flow capture)."""
    count = options.get("recent-calls", 200)
    if not count:
        return None
    return RecentCalls(max_calls=count, max_bytes=options.get("recent-calls-bytes", 4 << 20))


def _observers(*observers: CallObserver | None) -> CallObserver:
    """One observer calling each of ``observers`` that is not None, in order."""
    chosen = [observer for observer in observers if observer is not None]

    def observe(record: Any) -> None:
        for observer in chosen:
            observer(record)

    return observe


def _tls_files(options: Mapping[str, Any]) -> TLSFiles | None:
    """The TLS files named by ``--tls-cert`` and the rest; ``None``: TLS off."""
    if not options.get("tls-cert"):
        return None
    return TLSFiles(
        options["tls-cert"],
        options["tls-key"],
        options.get("tls-ca"),
        options.get("tls-client-cert"),
        options.get("tls-client-key"),
    )


def _announce(domains: Domains, advertised: str, interface: str) -> None:
    """The start-up lines about who we are and which parser runs."""
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
    if advertised.startswith("127.") and listens_everywhere(interface):
        log.warn(
            "Advertising {advertised} in Via and Record-Route while listening on every address: "
            "phones on other machines cannot reach it; set --advertised-host",
            advertised=advertised,
        )
