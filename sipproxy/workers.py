# -*- test-case-name: tests.test_workers -*-
"""``--workers N``: N processes serving one SIP port, each the whole server, sharing the Redis store.

The process ``twistd`` starts is worker 0; it starts workers 1 to N-1 as
``twistd -n sipproxy`` processes with the same options, restarts one that
exits, and stops them when it stops. The design, and why:

- **The port**: every worker binds the SIP port itself with SO_REUSEPORT
  (``transport/listen.py``); the kernel hands each datagram or connection
  to one of them by the sender's address and port, so a phone's requests,
  retransmissions, CANCEL and the ACK of a non-2xx reach the worker holding
  its server transaction. (Sockets adopted from one parent would share one
  queue instead, and every worker would wake for every datagram.)
- **Responses**: each worker also binds a port of its own and puts it in
  its Via (``LocalAddress.via_port``), so a downstream response reaches the
  worker holding the client transaction (RFC 3261 §18.2.2 sends responses
  to the Via's sent-by); every worker's port counts as ours
  (``worker_ports``) for loop detection (§16.3 step 4).
- **Dialogs**: a worker's Record-Route names its own port too, so the
  in-dialog requests of a call come back to the worker that forwarded its
  INVITE, and through it to the worker holding a phone's connection: the
  RFC 5626 flow token in that worker's Record-Route is usable only there.
  A Route naming another worker's port is that worker's (§16.4: not us),
  and the request is forwarded to it.
- **The store**: ``--workers`` needs ``--store redis://``: each worker keeps
  its view from Redis's change feed like a node does (its node id is the
  node's with ``/wN``), and a TCP binding held by one worker is reached
  from the others through a Path to that worker's own port. SQLite would
  give each worker its own view of a file the others write: a binding
  registered at one worker would be invisible to the rest until a restart.
- **The web page** is worker 0's only: the other workers listen on an
  ephemeral loopback web port. **The WebSocket ports** (``--ws``,
  ``--wss``, ``tcp:`` descriptions) are every worker's, with SO_REUSEPORT
  like the SIP port (``startup.SharedPortEndpoint``): a browser phone's
  connection stays with the worker that accepted it, and the dialogs
  reach it as a TCP phone's do (above).
- **Per process**, and so per worker: the transaction tables (reached by
  the routing above), the rate limits, the authentication failure and
  lockout counters and the nonce-count tables. A phone always reaches the
  same worker (its address and port), but a source spreading over many
  ports gets up to N times ``--rate-limit`` and ``--max-failures``; a
  nonce is valid at every worker (signed under the shared secret) and its
  nonce-count is checked by the worker that sees it. ``stable_tag`` is
  keyed by the shared secret, not by the per-process hash seed.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

__all__ = ["Workers", "free_ports", "worker_arguments"]

log = Logger(namespace="sipproxy")

RESTART_DELAY = 1.0

_DROPPED_IN_WORKERS = {"--web": 1, "--web-password": 1, "--workers": 1}
"""Options worker 0 keeps for itself (``--opt VALUE``, the value's count)."""


def free_ports(count: int, interface: str) -> list[int]:
    """``count`` ports free for UDP and TCP alike on ``interface`` (the workers' own ports)."""
    host = interface or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                tcp.bind((host, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            held += [udp, tcp]
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def worker_arguments(argv: Sequence[str], index: int, ports: Sequence[int]) -> list[str]:
    """The ``sipproxy`` options of worker ``index``: worker 0's, without its web page, plus who it is."""
    out: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name, equals, _ = arg.partition("=")
        if name in _DROPPED_IN_WORKERS:
            skip = 0 if equals else _DROPPED_IN_WORKERS[name]
            continue
        out.append(arg)
    return [
        *out,
        "--web",
        "tcp:0:interface=127.0.0.1",
        "--worker",
        str(index),
        "--worker-ports",
        ",".join(str(p) for p in ports),
    ]


class _Worker(protocol.ProcessProtocol):
    def __init__(self, owner: Workers, index: int) -> None:
        self.owner = owner
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.owner._ended(self, reason)


class Workers(Service):
    """Worker 0's children: started with it, restarted when one exits, stopped (SIGTERM) with it."""

    def __init__(self, reactor: Any, options: Sequence[str], count: int, ports: Sequence[int]) -> None:
        self.reactor = reactor
        self.options = list(options)
        self.count = count
        self.ports = list(ports)
        self._running: dict[int, tuple[_Worker, Any]] = {}

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        run = "from twisted.scripts.twistd import run; run()"
        argv = [sys.executable, "-c", run, "--nodaemon", "--pidfile=", "--logfile=-", "sipproxy"]
        argv += worker_arguments(self.options, index, self.ports)
        worker = _Worker(self, index)
        process = self.reactor.spawnProcess(
            worker, sys.executable, argv, env=dict(os.environ), childFDs={0: "w", 1: 1, 2: 2}
        )
        self._running[index] = (worker, process)
        log.info(
            "Started worker {index} (pid {pid}, its own port {port})",
            index=index,
            pid=process.pid,
            port=self.ports[index],
        )

    def _ended(self, worker: _Worker, reason: Any) -> None:
        if self._running.get(worker.index, (None,))[0] is worker:
            del self._running[worker.index]
        if not self.running:
            return
        log.error(
            "Worker {index} exited ({why}); starting it again in {delay} s",
            index=worker.index,
            why=reason.getErrorMessage(),
            delay=RESTART_DELAY,
        )
        self.reactor.callLater(RESTART_DELAY, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if self.running and index not in self._running:
            self._spawn(index)

    def stopService(self) -> Deferred[object]:
        super().stopService()
        waits = []
        for worker, process in self._running.values():
            try:
                process.signalProcess("TERM")
            except Exception:  # already gone
                continue
            waits.append(worker.ended)
        return gatherResults(waits) if waits else succeed(None)
