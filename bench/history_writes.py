"""In-process cost of the binding history per REGISTER (issue 18): on the REGISTER's path and in its writes.

    python bench/history_writes.py [-n 20000] [--repeat 5]

For ``n`` registrations of distinct AORs, then ``n`` refreshes of them
(what a steady registrar mostly sees), measures, best of ``--repeat``:

- ``changed``: what the REGISTER pays, the location event turned into a
  history event and queued (the subscriber the store calls before the 200);
- ``write``: the SQLite transaction that takes a second's worth of them
  (insert or fold a refresh, trim the AOR, age and total trims), which
  runs on the reactor about once a second, never inside the bindings'
  commit;
- the memory store (``--db :memory:``) for comparison.

CPU time (``process_time``), so that other processes on the machine count
less.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from twisted.internet.task import Clock

from sipproxy.location import Binding, BindingEvent
from sipproxy.location.history import BindingHistory, HistoryStore, MemoryHistory
from sipproxy.location.historydb import SQLiteHistory


def events(n: int, kind: str, at: float) -> list[BindingEvent]:
    out = []
    for i in range(n):
        binding = Binding(
            aor=f"sip:u{i:06d}@bench.test",
            contact=f"sip:u{i:06d}@127.0.0.1:5090;transport=udp",
            call_id=f"{i}-reg@127.0.0.1",
            cseq=2 if kind == "refreshed" else 1,
            expires_at=at + 3600,
            transport="UDP",
            source_host="127.0.0.1",
            source_port=5090,
            user_agent="sipp-bench",
            registered_at=at,
            refreshed_at=at,
        )
        out.append(BindingEvent("added" if kind == "registered" else "refreshed", binding, kind))  # type: ignore[arg-type]
    return out


def cpu(work: Callable[[], None]) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def one(make: Callable[[Clock], HistoryStore], n: int) -> tuple[float, float, float, float]:
    """(changed, write) seconds per event, for registrations then refreshes."""
    clock = Clock()
    clock.advance(1_800_000_000)
    store = make(clock)
    history = BindingHistory(store, clock)
    figures = []
    for kind in ("registered", "refreshed"):
        batch = events(n, kind, clock.seconds())
        changed = cpu(lambda batch=batch: [history.changed(e) for e in batch] and None)
        flush = getattr(store, "flush", None)
        write = cpu(flush) if flush is not None else 0.0
        figures += [changed / n, write / n]
        clock.advance(60)
    store.close()
    return figures[0], figures[1], figures[2], figures[3]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()

    def sqlite(clock: Clock) -> HistoryStore:
        path = os.path.join(tmp, f"bench-{time.monotonic_ns()}.sqlite")
        open(path, "wb").close()
        return SQLiteHistory(clock, path)

    for name, make in (("SQLite", sqlite), ("memory", MemoryHistory)):
        runs = [one(make, args.n) for _ in range(args.repeat)]  # type: ignore[arg-type]
        best = [min(run[i] for run in runs) * 1e6 for i in range(4)]
        print(
            f"{name}: registration {best[0]:.2f} us on the REGISTER's path + {best[1]:.2f} us written; "
            f"refresh {best[2]:.2f} us + {best[3]:.2f} us written (best of {args.repeat}, n={args.n}, CPU)"
        )


if __name__ == "__main__":
    main()
