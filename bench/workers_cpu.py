"""CPU seconds per REGISTER with 1 and 2 workers on one Redis store (issue 16, Figures).

    python3 bench/workers_cpu.py [--tree DIR] [--seconds 10] [--phones 50] [--workers 1,2]

For each worker count, a fresh ``twistd -n sipproxy --store redis://...
--workers N`` on a fresh ``redis-server`` (a free loopback port, no
persistence: the figure is sipproxy's, Redis's own CPU is printed apart),
then ``phones`` UDP phones, each on its own socket so that SO_REUSEPORT
spreads them over the workers by source port, each refreshing its
registration back to back for ``seconds`` seconds (the client of
``bench/transports.py``).  The CPU time (utime + stime from ``/proc``) of
every sipproxy process (worker 0 and the workers it started) and of
redis-server, divided by the REGISTERs answered 200.  A run on the default
SQLite store with one worker is the reference.

The client shares the machine's cores with the server, so REGISTER/s says
as much about the client as about the server; CPU per REGISTER does not.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import tempfile
import time
from pathlib import Path

from transports import cpu_seconds, load


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from ``/proc``'s parent links."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def run(tree: str, workdir: Path, workers: int, redis: bool, phones: int, seconds: float) -> str:
    from harness import Server

    from tests.redis_helpers import RedisServer

    workdir.mkdir(parents=True)
    server_args: list[str] = []
    redis_server, redis_pid = None, None
    if redis:
        redis_server = RedisServer(workdir)  # no persistence: the figure is sipproxy's
        redis_server.start()
        assert redis_server.proc is not None
        redis_pid = redis_server.proc.pid
        server_args = ["--store", redis_server.url, "--workers", str(workers)]
    server = Server(workdir, server_args)
    server.start()
    try:
        deadline = time.monotonic() + 30
        while server.log_text().count("sipproxy ready") < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(server.log_text()[-3000:])
            time.sleep(0.1)
        time.sleep(1)
        pids = descendants(server.proc.pid)  # type: ignore[attr-defined]
        ports = {"UDP": server.sip_port}
        before = total_cpu(pids)
        redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
        start = time.monotonic()
        done = asyncio.run(load("UDP", phones, seconds, ports, ssl.create_default_context()))
        wall = time.monotonic() - start
        cpu = total_cpu(pids) - before
        redis_cpu = (cpu_seconds(redis_pid) - redis_before) if redis_pid else 0.0
        store = "Redis" if redis else "SQLite"
        per = [f"{cpu_seconds(pid):.1f}" for pid in pids]
        return (
            f"{store:6} workers={workers}  processes={len(pids)}  REGISTER/s={done / wall:6.0f}  "
            f"sipproxy CPU per REGISTER={cpu / done * 1e6:5.0f} us  redis-server={redis_cpu / done * 1e6:4.0f} us  "
            f"(CPU s per process since start: {', '.join(per)})"
        )
    finally:
        server.stop()  # type: ignore[attr-defined]
        if redis_server is not None:
            redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--phones", type=int, default=50)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    sys.path[:0] = [args.tree, str(Path(args.tree) / "tests" / "integration")]
    print(f"{args.tree}: {args.phones} UDP phones, {args.seconds:g} s per run")
    with tempfile.TemporaryDirectory() as tmp:
        print(run(args.tree, Path(tmp) / "sqlite", 1, False, args.phones, args.seconds), flush=True)
        for workers in (int(n) for n in args.workers.split(",")):
            print(run(args.tree, Path(tmp) / f"w{workers}", workers, True, args.phones, args.seconds), flush=True)


if __name__ == "__main__":
    main()
