"""The Redis location store against a real ``redis-server`` (no fake): two nodes sharing one Redis, on the real reactor.

Each test starts its own ``redis-server`` on a free loopback port in a temp
dir (``redis_helpers``), and one or more :class:`RedisLocation` nodes on
it. Waiting is for a condition (the feed delivered, the link reconnected),
never for a time.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import trustme
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sipproxy.errors import SipError
from sipproxy.location import Binding, BindingEvent
from sipproxy.location.redis_codec import encode
from sipproxy.location.redis_secret import server_secret
from sipproxy.location.redis_store import RETRY_AFTER, RedisLocation
from sipproxy.location.redis_url import parse_redis_url
from sipproxy.service import build_service
from sipproxy.startup import StartupError
from sipproxy.tap import Options
from tests.redis_helpers import RedisServer

AOR = "sip:alice@example.test"


def binding(contact: str = "sip:alice@192.0.2.1:5062", *, aor: str = AOR, ttl: float = 3600, **kw: Any) -> Binding:
    now = reactor.seconds()  # type: ignore[attr-defined]
    fields: dict[str, Any] = {"call_id": "c1", "cseq": 1, "registered_at": now, "refreshed_at": now}
    fields.update(kw)
    return Binding(aor=aor, contact=contact, expires_at=now + ttl, **fields)


class RedisStoreTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.redis = RedisServer(Path(tempfile.mkdtemp(prefix="sipproxy-redis-")))
        self.redis.start()
        self.addCleanup(self.redis.stop)

    def node(self, name: str) -> RedisLocation:
        store = RedisLocation(reactor, parse_redis_url(self.redis.url), name)
        store.restore()
        self.addCleanup(store.close)
        return store

    def events(self, store: RedisLocation, *, local: bool = False) -> list[tuple[str, str, str]]:
        seen: list[tuple[str, str, str]] = []

        def keep(event: BindingEvent) -> None:
            seen.append((event.kind, event.reason, event.binding.contact))

        (store.subscribe_local if local else store.subscribe)(keep)
        return seen

    @defer.inlineCallbacks
    def until(self, condition: Callable[[], object]) -> Any:
        """Let the reactor run until ``condition()`` holds (the test's timeout bounds it)."""
        while not condition():
            yield task.deferLater(reactor, 0.01, lambda: None)

    def durable(self, store: RedisLocation) -> defer.Deferred[bool]:
        answer: defer.Deferred[bool] = defer.Deferred()
        store.when_durable(answer.callback)
        return answer

    @defer.inlineCallbacks
    def test_a_registration_at_one_node_is_in_redis_when_durable_and_in_the_other_nodes_view(self) -> Any:
        a, b = self.node("A"), self.node("B")
        yield self.until(lambda: a.ready and b.ready)
        at_b, logged_a, logged_b = self.events(b), self.events(a, local=True), self.events(b, local=True)
        a.update(AOR, put=[binding()])
        self.assertTrue((yield self.durable(a)))
        stored = self.redis.cli("HGET", f"sipproxy:aor:{AOR}", "sip:alice@192.0.2.1:5062")
        self.assertEqual(json.loads(stored)[2], "sip:alice@192.0.2.1:5062")
        yield self.until(lambda: b.lookup(AOR))
        self.assertEqual(b.lookup(AOR), a.lookup(AOR))
        self.assertEqual(b.holder(AOR, "sip:alice@192.0.2.1:5062"), "A")
        yield self.until(lambda: at_b and logged_a)
        self.assertEqual(at_b, [("added", "registered", "sip:alice@192.0.2.1:5062")])
        self.assertEqual(logged_a, [("added", "registered", "sip:alice@192.0.2.1:5062")])
        self.assertEqual(logged_b, [], "the node that handled the REGISTER logs it, not the others")

    @defer.inlineCallbacks
    def test_removals_and_refreshes_reach_the_other_node_with_their_reasons(self) -> Any:
        a, b = self.node("A"), self.node("B")
        yield self.until(lambda: a.ready and b.ready)
        a.update(AOR, put=[binding(), binding("sip:alice@192.0.2.2")])
        yield self.until(lambda: len(b.lookup(AOR)) == 2)
        at_a = self.events(a)
        b.update(AOR, put=[binding(cseq=2)], remove=["sip:alice@192.0.2.2"])
        self.assertTrue((yield self.durable(b)))
        yield self.until(lambda: len(at_a) == 2)
        self.assertEqual(
            at_a,
            [
                ("refreshed", "refreshed", "sip:alice@192.0.2.1:5062"),
                ("removed", "unregistered", "sip:alice@192.0.2.2"),
            ],
        )
        self.assertEqual([x.cseq for x in a.lookup(AOR)], [2])
        self.assertEqual(a.holder(AOR, "sip:alice@192.0.2.1:5062"), "B")

    @defer.inlineCallbacks
    def test_a_phone_refreshing_back_to_back_is_never_refused_by_its_own_nodes_feed(self) -> Any:
        # The feed brings this node's own earlier change after it applied a later one to its view:
        # that older state must not roll the view back, or the next refresh is planned on it, is
        # refused by the compare-and-set and the phone gets a 500 (a single node, nobody else writing).
        a = self.node("A")
        yield self.until(lambda: a.ready)
        told = self.events(a, local=True)
        for cseq in range(1, 80, 2):
            a.update(AOR, put=[binding(cseq=cseq)])
            a.update(AOR, put=[binding(cseq=cseq + 1)])  # the next REGISTER, before the feed brought the first
            self.assertTrue((yield self.durable(a)), f"refresh {cseq + 1} refused")
            self.assertEqual([x.cseq for x in a.lookup(AOR)], [cseq + 1])
            yield task.deferLater(reactor, 0, lambda: None)  # one turn: some of the feed arrives
        yield self.until(lambda: len(told) >= 80)
        self.assertEqual(
            told,
            [("added", "registered", binding().contact)] + [("refreshed", "refreshed", binding().contact)] * 79,
            "each change logged once",
        )

    @defer.inlineCallbacks
    def test_a_change_planned_on_a_stale_view_is_refused_and_the_view_takes_what_redis_holds(self) -> Any:
        a = self.node("A")
        yield self.until(lambda: a.ready)
        a.update(AOR, put=[binding()])
        self.assertTrue((yield self.durable(a)))
        # another node refreshed the contact, and its feed message has not reached A
        newer = binding(cseq=7, ttl=7200)
        self.redis.cli("HSET", f"sipproxy:aor:{AOR}", newer.contact, encode(newer, "B"))
        changes = self.events(a)
        a.update(AOR, put=[binding(cseq=2)])
        self.assertFalse((yield self.durable(a)), "a 200 would claim what Redis does not hold")
        self.assertEqual([x.cseq for x in a.lookup(AOR)], [7])
        self.assertEqual(changes[-1], ("refreshed", "reloaded", newer.contact))
        self.assertEqual(json.loads(self.redis.cli("HGET", f"sipproxy:aor:{AOR}", newer.contact))[4], 7)

    @defer.inlineCallbacks
    def test_an_expired_binding_is_reaped_once_and_a_fresh_contact_of_another_node_stays(self) -> Any:
        a, b = self.node("A"), self.node("B")
        yield self.until(lambda: a.ready and b.ready)
        logged_a, logged_b = self.events(a, local=True), self.events(b, local=True)
        a.update(AOR, put=[binding("sip:alice@192.0.2.9", ttl=0.3), binding(ttl=0.3)])
        self.assertTrue((yield self.durable(a)))
        yield self.until(lambda: len(b.lookup(AOR)) == 2)
        b.update(AOR, put=[binding(cseq=2)])  # B refreshes one of them just in time
        self.assertTrue((yield self.durable(b)))
        key = f"sipproxy:aor:{AOR}"
        yield self.until(lambda: self.redis.cli("HEXISTS", key, "sip:alice@192.0.2.9") == "0")
        self.assertEqual(self.redis.cli("HEXISTS", key, "sip:alice@192.0.2.1:5062"), "1")
        yield self.until(lambda: [e for e in logged_a + logged_b if e[0] == "expired"])
        expired = [e for e in logged_a + logged_b if e[0] == "expired"]
        self.assertEqual(expired, [("expired", "expired", "sip:alice@192.0.2.9")], "logged by one node, once")
        self.assertEqual([x.contact for x in a.lookup(AOR)], ["sip:alice@192.0.2.1:5062"])

    @defer.inlineCallbacks
    def test_while_redis_is_down_changes_get_503_lookups_go_on_and_the_node_catches_up_after(self) -> Any:
        a = self.node("A")
        yield self.until(lambda: a.ready)
        a.update(AOR, put=[binding()])
        self.assertTrue((yield self.durable(a)))
        self.redis.stop()
        yield self.until(lambda: not a.ready)
        self.assertIn("unreachable", a.storage_problem or "")
        with self.assertRaises(SipError) as refused:
            a.update("sip:bob@example.test", put=[binding(aor="sip:bob@example.test")])
        self.assertEqual(refused.exception.status, 503)
        self.assertIn(("Retry-After", str(RETRY_AFTER)), refused.exception.headers)
        self.assertEqual(len(a.lookup(AOR)), 1, "calls keep routing from the view")
        self.assertEqual(a.lookup("sip:bob@example.test"), [])
        self.redis.start()  # empty: no append-only file
        carol = binding(aor="sip:carol@example.test")
        self.redis.cli("HSET", "sipproxy:aor:sip:carol@example.test", carol.contact, encode(carol, "B"), "", "1")
        yield self.until(lambda: a.ready)
        self.assertIsNone(a.storage_problem)
        self.assertEqual(a.aors(), ["sip:carol@example.test"], "the view is what Redis holds after the reconnect")
        a.update("sip:bob@example.test", put=[binding(aor="sip:bob@example.test")])
        self.assertTrue((yield self.durable(a)))

    @defer.inlineCallbacks
    def test_a_node_started_later_loads_every_binding(self) -> Any:
        a = self.node("A")
        yield self.until(lambda: a.ready)
        for n in range(2500):
            aor = f"sip:u{n}@example.test"
            a.update(aor, put=[binding(f"sip:u{n}@192.0.2.1", aor=aor)])
        self.assertTrue((yield self.durable(a)))
        b = self.node("B")
        yield self.until(lambda: b.ready)
        self.assertEqual(b.count(), 2500)
        self.assertEqual(b.all_bindings(), a.all_bindings())

    @defer.inlineCallbacks
    def test_values_that_are_not_utf8_survive_the_round_trip(self) -> Any:
        a, b = self.node("A"), self.node("B")
        yield self.until(lambda: a.ready and b.ready)
        odd = binding("sip:alice@192.0.2.1;x=\udcff", user_agent="ph\udce9ne", call_id="c\udc80")
        a.update(AOR, put=[odd])
        self.assertTrue((yield self.durable(a)))
        yield self.until(lambda: b.lookup(AOR))
        self.assertEqual(b.lookup(AOR), [odd])
        c = self.node("C")
        yield self.until(lambda: c.ready)
        self.assertEqual(c.lookup(AOR), [odd])

    def test_the_server_secret_is_made_once_and_read_by_every_node(self) -> None:
        first = server_secret(parse_redis_url(self.redis.url), lambda: b"s" * 32)
        second = server_secret(parse_redis_url(self.redis.url), lambda: b"t" * 32)
        self.assertEqual(first, b"s" * 32)
        self.assertEqual(second, first)


class RedisPasswordTests(unittest.TestCase):
    timeout = 30

    def test_the_secret_needs_the_password_and_a_wrong_one_is_named(self) -> None:
        redis = RedisServer(Path(tempfile.mkdtemp(prefix="sipproxy-redis-")), password="pw")
        redis.start()
        self.addCleanup(redis.stop)
        self.assertEqual(len(server_secret(parse_redis_url(redis.url), lambda: b"x" * 32)), 32)
        wrong = parse_redis_url(f"redis://:nope@127.0.0.1:{redis.port}/0")
        with self.assertRaises(Exception) as failed:
            server_secret(wrong, lambda: b"x" * 32)
        self.assertIn("WRONGPASS", str(failed.exception))


class RedisOverTLSTests(unittest.TestCase):
    """``rediss://`` against a real ``redis-server`` listening on TLS only, with a test CA (``trustme``)."""

    timeout = 60

    def start(self, *names: str) -> tuple[RedisServer, str]:
        directory = Path(tempfile.mkdtemp(prefix="sipproxy-redis-tls-"))
        ca = trustme.CA()
        cert = ca.issue_cert(*names)
        cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
        cert.private_key_pem.write_to_path(str(directory / "key.pem"))
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        redis = RedisServer(directory, tls=(directory / "cert.pem", directory / "key.pem"))
        redis.start()
        self.addCleanup(redis.stop)
        return redis, str(directory / "ca.pem")

    @defer.inlineCallbacks
    def test_a_node_stores_bindings_in_a_redis_over_tls_whose_certificate_chains_to_store_ca(self) -> Any:
        redis, ca = self.start("127.0.0.1")
        address = replace(parse_redis_url(redis.url), ca=ca)
        self.assertEqual(len(server_secret(address, lambda: b"s" * 32)), 32)
        store = RedisLocation(reactor, address, "A")
        store.restore()
        self.addCleanup(store.close)
        while not store.ready:
            yield task.deferLater(reactor, 0.01, lambda: None)
        store.update(AOR, put=[binding()])
        answer: defer.Deferred[bool] = defer.Deferred()
        store.when_durable(answer.callback)
        self.assertTrue((yield answer))
        stored = redis.cli("HGET", f"sipproxy:aor:{AOR}", "sip:alice@192.0.2.1:5062")
        self.assertEqual(json.loads(stored)[2], "sip:alice@192.0.2.1:5062")

    def test_a_certificate_not_from_store_ca_or_not_for_the_host_is_refused_and_the_node_does_not_start(self) -> None:
        redis, ca = self.start("127.0.0.1")
        with self.assertRaisesRegex(OSError, "certificate verify failed"):
            server_secret(parse_redis_url(redis.url), lambda: b"s" * 32)  # the system's CAs do not know the test CA
        other, other_ca = self.start("redis.example.test")
        with self.assertRaisesRegex(OSError, "certificate verify failed.*(mismatch|match)"):
            server_secret(replace(parse_redis_url(other.url), ca=other_ca), lambda: b"s" * 32)
        options = Options()
        options.parseOptions(["--db", ":memory:", "--store", redis.url])
        with self.assertRaisesRegex(StartupError, r"^--store rediss://127\.0\.0\.1:\d+/0: .*certificate verify failed"):
            build_service(options, reactor)
