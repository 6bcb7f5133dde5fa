"""The next-hop resolver against a real twisted.names DNS server on loopback, on the real reactor.

Issue 13 item 4: a failed lookup used to write six lines of twisted.names
chatter (a UDP port opened and closed per query, a ``noisy`` protocol
started and stopped, the resolver configuration) and a raw DNS ``Message``
repr.  Now it is one readable warning, and nothing else, at any level,
comes from the query itself.  Only loopback traffic: the client asks the
server below, never ``/etc/resolv.conf``'s.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import LogLevel, globalLogPublisher
from twisted.names import dns, error, server
from twisted.trial import unittest

from sipproxy.net import Target
from sipproxy.transport.resolve import Resolver, quiet_resolver


class Zone:
    """What the test server knows: two addresses for ok.example, nothing else (NXDOMAIN)."""

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
        name = query.name.name
        if name == b"ok.example" and query.type == dns.A:
            return defer.succeed(([dns.RRHeader(name, dns.A, payload=dns.Record_A("192.0.2.5"))], [], []))
        if name == b"ok.example" and query.type == dns.AAAA:
            return defer.succeed(([dns.RRHeader(name, dns.AAAA, payload=dns.Record_AAAA("2001:db8::5"))], [], []))
        return defer.fail(error.DomainError(name))


class ResolverAgainstRealServer(unittest.TestCase):
    def setUp(self) -> None:
        factory = server.DNSServerFactory(clients=[Zone()])
        factory.noisy = False
        protocol = dns.DNSDatagramProtocol(factory)
        protocol.noisy = False
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        handle, hosts = tempfile.mkstemp(suffix=".hosts")
        os.close(handle)  # an empty hosts file: every name goes to the server
        self.addCleanup(os.remove, hosts)
        names = quiet_resolver(
            reactor, servers=[("127.0.0.1", port.getHost().port)], resolv_conf=None, hosts_file=hosts.encode()
        )
        self.resolver = Resolver(reactor, names=names, timeout=(2,))
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def resolve(self, host: str) -> defer.Deferred[list[Target]]:
        found: defer.Deferred[list[Target]] = defer.Deferred()
        self.resolver(Target("UDP", host, 5060), found.callback)
        # let the query ports close (their connectionLost runs a turn later) before looking at the log
        return found.addCallback(lambda targets: _later(targets))

    @defer.inlineCallbacks
    def test_a_failed_lookup_is_one_readable_warning_and_nothing_else(self) -> Any:
        targets = yield self.resolve("other.example")
        self.assertEqual(targets, [])
        texts = [(e["log_level"], e.get("log_format"), e.get("log_text")) for e in self.events]
        [warning] = self.events
        self.assertEqual(warning["log_level"], LogLevel.warn, texts)
        self.assertEqual(
            warning["log_format"].format(**warning), "Could not resolve other.example: no such domain (NXDOMAIN)"
        )

    @defer.inlineCallbacks
    def test_a_lookup_gives_ipv4_then_ipv6_silently(self) -> Any:
        targets = yield self.resolve("ok.example")
        self.assertEqual(targets, [Target("UDP", "192.0.2.5", 5060), Target("UDP", "2001:db8::5", 5060)])
        self.assertEqual([(e["log_level"], e.get("log_format"), e.get("log_text")) for e in self.events], [])


def _later(value: Any) -> defer.Deferred[Any]:
    d: defer.Deferred[Any] = defer.Deferred()
    reactor.callLater(0.05, d.callback, value)  # type: ignore[attr-defined]
    return d
