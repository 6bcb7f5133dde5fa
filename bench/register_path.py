"""In-process cost of one REGISTER through the whole stack (no sockets, no sipp).

    python bench/register_path.py [--profile] [--memory] [--batch N] [--history]

Feeds REGISTER datagrams for distinct AORs into the transport layer exactly
as the UDP protocol does, through the core ``twistd sipproxy`` runs
(``service.build_core``: parser, guard, transaction layer, registrar,
location store (SQLite in a temporary file unless --memory), and prints
microseconds per REGISTER.  ``--history`` adds the binding history as
``twistd sipproxy`` wires it (in the same SQLite file, or in memory with
--memory); its last write is inside the timed run.  The timers go to a real (not running) reactor's scheduler: ``task.Clock``
re-sorts its list on every ``callLater`` and would dominate the figure.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from twisted.internet.base import ReactorBase

from sipproxy.gctune import tune_garbage_collector
from sipproxy.location import LocationStore, SQLitePersistence
from sipproxy.metrics import Metrics
from sipproxy.proxy import LocalAddress
from sipproxy.security import build_security
from sipproxy.service import build_core
from sipproxy.stack import Domains
from sipproxy.transaction import Source


class Sink:
    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.count += 1


def register(i: int) -> bytes:
    user = f"u{i:06d}"
    return (
        "REGISTER sip:bench.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5091;rport;branch=z9hG4bK-{i}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@bench.test>;tag={i}r\r\n"
        f"To: <sip:{user}@bench.test>\r\n"
        f"Call-ID: {i}-reg@127.0.0.1\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:5090;transport=udp>\r\n"
        "Expires: 3600\r\n"
        "User-Agent: sipp-bench\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--history", action="store_true", help="with the binding history (issue 18)")
    parser.add_argument(
        "--batch", type=int, default=16, help="REGISTERs per reactor turn, i.e. per SQLite commit (default 16)"
    )
    args = parser.parse_args()
    from twisted.internet.selectreactor import SelectReactor

    clock: ReactorBase = SelectReactor()
    tmp = tempfile.mkdtemp()
    persistence = None if args.memory else SQLitePersistence(os.path.join(tmp, "bench.sqlite"))
    store = LocationStore(clock, persistence)
    metrics = Metrics()
    domains = Domains(["bench.test"])
    local = LocalAddress("127.0.0.1", 5080)
    security = build_security({"domains": ["bench.test"]}, clock, metrics, domains, local, store)
    history = None
    if args.history:
        from sipproxy.location.history import BindingHistory, HistoryStore, MemoryHistory
        from sipproxy.location.historydb import SQLiteHistory

        kept: HistoryStore = MemoryHistory(clock) if persistence is None else SQLiteHistory(clock, persistence.path)
        history = BindingHistory(kept, clock)
        store.subscribe(history.changed)
    core = build_core(
        clock,
        store,
        domains,
        local,
        security,
        metrics,
        connect_tcp=lambda *a: None,
        resolve=lambda host, callback: callback(None),
        history=history,
    )
    transport = core.transport
    sink = Sink()
    transport.udp[4] = sink
    source = Source("UDP", "127.0.0.1", 5091)
    messages = [register(i) for i in range(args.n)]

    batch = args.batch

    def run() -> None:
        # As the reactor does: a read event delivers the datagrams waiting on
        # the socket, then the turn's delayed calls run (the group commit).
        for start in range(0, len(messages), batch):
            for data in messages[start : start + batch]:
                transport.received(data, source)
            clock.runUntilCurrent()
        if history is not None:
            history.store.close()  # the writes still pending (about a second's worth in the server)

    tune_garbage_collector()  # as the server does at start-up
    start, cpu = time.perf_counter(), time.process_time()
    if args.profile:
        cProfile.runctx("run()", globals(), locals(), "/tmp/register_path.prof")
    else:
        run()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    assert sink.count == args.n, sink.count
    print(
        f"{elapsed / args.n * 1e6:.1f} us per REGISTER ({args.n / elapsed:.0f}/s on one core), "
        f"{'memory' if args.memory else 'SQLite'}, {batch} per reactor turn"
        f"{', with the binding history' if history is not None else ''}; {cpu / args.n * 1e6:.1f} us of CPU"
    )
    if args.profile:
        pstats.Stats("/tmp/register_path.prof").sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
