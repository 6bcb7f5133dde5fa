# -*- test-case-name: tests.test_location_redis -*-
"""The Redis store's two connections, kept up with backoff: one for commands, one for the change feed.

txredisapi speaks the protocol (RESP, ``EVALSHA`` with its fall-back to
``EVAL``, ``SUBSCRIBE``); Twisted's ``ClientService`` keeps each connection
up, reconnecting after 0.5 s, 1 s, 2 s ... at most every 5 s. The link is
*up* once both connections are authenticated, the command one has selected
the database and the feed one is subscribed to the change channel; it says
so to ``on_up`` (the store then loads everything, to catch up with what it
missed), and the first loss of either to ``on_down`` with the reason.

txredisapi's own pool (``Connection()``) queues commands until a connection
comes back; a registrar must instead know at once that Redis is not there
(503), so the pool is not used, only the protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import protocol
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import BaseRedisProtocol, SubscriberProtocol
from txredisapi import ConnectionError as ConnectionError

from sipproxy.location.redis_url import RedisAddress

__all__ = ["ConnectionError", "RedisLink"]

log = Logger(namespace="sipproxy.location")

CONNECT_TIMEOUT = 3.0
REPLY_TIMEOUT = 5.0
"""Seconds the link's ``PING`` may wait for its reply before the connection is taken as lost (a hung Redis)."""
PING_INTERVAL = 1.0


def _command(*args: object) -> bytes:
    """One command in RESP, as txredisapi's ``_build_command`` writes it, in one join (the REGISTER path's)."""
    parts = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"*%d\r\n" % len(args) + b"".join(parts)


class _Fast:
    """What both connections share: no Nagle (a REGISTER waits for its reply), one join per command."""

    link: RedisLink
    transport: Any

    def connectionMade(self) -> Any:
        try:
            self.transport.setTcpNoDelay(True)
        except AttributeError:  # TLS: the wrapper has no socket option; the TCP below keeps Nagle
            pass
        return super().connectionMade()  # type: ignore[misc]

    def _build_command(self, *args: object, **kwargs: object) -> bytes:
        return _command(*args)

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)  # type: ignore[misc]
        self.link._lost(self, why)  # type: ignore[arg-type]


class _Commands(_Fast, BaseRedisProtocol):
    pass


class _Feed(_Fast, SubscriberProtocol):
    def messageReceived(self, pattern: object, channel: object, message: bytes) -> None:
        self.link._message(message)


class _Factory(protocol.Factory):
    """Builds one kind of connection; the attributes are those txredisapi's protocol calls on its factory."""

    noisy = False
    isLazy = True

    def __init__(self, link: RedisLink, kind: type[BaseRedisProtocol], dbid: int | None) -> None:
        self.link = link
        self.kind = kind
        self.dbid = dbid

    def buildProtocol(self, addr: object) -> BaseRedisProtocol:
        address = self.link.address
        built = self.kind(
            None,  # no charset: replies stay bytes
            replyTimeout=None,  # a timer per command costs more than the REGISTER's own work: the link PINGs instead
            password=address.password,
            dbid=self.dbid,
            convertNumbers=False,
            username=address.username,
        )
        built.factory = self
        built.link = self.link
        return built

    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        self.link._refused(why)


class RedisLink:
    """Commands and the change feed of one Redis server, with ``on_up``/``on_down`` as they come and go."""

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        channel: bytes,
        on_message: Callable[[bytes], None],
        on_up: Callable[[], None],
        on_down: Callable[[str], None],
    ) -> None:
        self.address = address
        self.channel = channel
        self._on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self.commands: _Commands | None = None
        """The command connection while the link is up."""
        self._feed: _Feed | None = None
        self._ready: dict[str, BaseRedisProtocol] = {}
        self.up = False
        self.problem: str | None = f"connecting to {address.display()}"
        """Why the link is not up, one line; ``None`` while it is."""
        self._clock = reactor
        self._ping_sent: float | None = None
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = reactor
        retry = backoffPolicy(initialDelay=0.5, factor=2.0, maxDelay=5.0)
        self._services = [
            ClientService(
                self._endpoint(reactor),
                _Factory(self, kind, dbid),
                retryPolicy=retry,
                clock=reactor,
                prepareConnection=prepare,
            )
            for kind, dbid, prepare in (
                (_Commands, address.db, self._prepare_commands),
                (_Feed, None, self._prepare_feed),
            )
        ]

    def _endpoint(self, reactor: Any) -> Any:
        address = self.address
        endpoint: Any = HostnameEndpoint(reactor, address.host, address.port, timeout=CONNECT_TIMEOUT)
        if address.tls:  # the certificate is verified against the host name (service_identity), as for SIP over TLS
            from twisted.internet.ssl import optionsForClientTLS

            from sipproxy.transport.certificates import trust_root

            trust = trust_root("--store-ca", address.ca) if address.ca is not None else None
            endpoint = wrapClientTLS(optionsForClientTLS(address.host, trustRoot=trust), endpoint)
        return endpoint

    def start(self) -> None:
        for service in self._services:
            service.startService()
        self._pinger.start(PING_INTERVAL, now=False)

    def stop(self) -> Deferred[object]:
        """Stop reconnecting and close both connections."""
        self.up = False
        if self._pinger.running:
            self._pinger.stop()
        return gatherResults([service.stopService() for service in self._services], consumeErrors=True)

    def _ping(self) -> None:
        """A ``PING`` a second; one unanswered for :data:`REPLY_TIMEOUT` seconds drops the link (a hung Redis)."""
        commands = self.commands
        if commands is None:
            self._ping_sent = None
            return
        now = self._clock.seconds()
        if self._ping_sent is not None:
            if now - self._ping_sent >= REPLY_TIMEOUT:
                self._ping_sent = None
                commands.transport.abortConnection()
            return
        self._ping_sent = now
        try:
            answered = commands.execute_command("PING")
        except ConnectionError:
            return
        answered.addBoth(self._pong, commands)

    def _pong(self, _result: object, commands: _Commands) -> None:
        if commands is self.commands:
            self._ping_sent = None

    # -- the connections coming and going ------------------------------------------

    # ClientService hands prepareConnection a proxy of the protocol; whenConnected() fires with the protocol itself.

    def _prepare_commands(self, commands: Any) -> Deferred[object]:
        ready: Deferred[Any] = commands.whenConnected()
        return ready.addCallback(lambda connection: self._joined("commands", connection))

    def _prepare_feed(self, feed: Any) -> Deferred[object]:
        ready: Deferred[Any] = feed.whenConnected()
        ready.addCallback(self._subscribe)
        return ready

    def _subscribe(self, feed: _Feed) -> Deferred[object]:
        subscribed: Deferred[object] = feed.subscribe([self.channel])
        subscribed.addCallback(lambda _: self._joined("feed", feed))
        subscribed.addErrback(self._subscribe_failed, feed)
        return subscribed

    def _subscribe_failed(self, failure: Failure, feed: _Feed) -> None:
        self._refused(f"subscribing to the change feed failed: {failure.getErrorMessage()}")
        feed.transport.abortConnection()

    def _joined(self, kind: str, connection: BaseRedisProtocol) -> None:
        if not connection.connected:
            return
        self._ready[kind] = connection
        if len(self._ready) == 2 and not self.up:
            self.commands = self._ready["commands"]  # type: ignore[assignment]
            self._feed = self._ready["feed"]  # type: ignore[assignment]
            self.up = True
            self.problem = None
            self._on_up()

    def _lost(self, connection: BaseRedisProtocol, why: Failure) -> None:
        for kind, held in list(self._ready.items()):
            if held is connection:
                del self._ready[kind]
        if not self.up:
            return
        self.up = False
        self.commands = self._feed = None
        self._ping_sent = None
        for other in list(self._ready.values()):  # one connection lost: start over with both
            other.transport.loseConnection()
        reason = why.getErrorMessage() if why is not None else "closed"
        self.problem = f"Redis at {self.address.display()} unreachable ({reason}); reconnecting"
        self._on_down(self.problem)

    def _refused(self, why: str) -> None:
        self.problem = f"Redis at {self.address.display()}: {why}"
        log.error("Location service: {problem}", problem=self.problem)

    def _message(self, message: bytes) -> None:
        if self.up:
            self._on_message(message)
