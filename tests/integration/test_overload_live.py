"""Overload control in the real ``twistd -n sipproxy`` (issue 17): the kernel's receive stamps and RFC 7339.

The decisions are unit-tested on a fake clock (``tests/test_security_congestion.py``); here the real server
reads real stamps: sipp registers phones while the server is stopped (SIGSTOP) for three seconds, so the
datagrams queued then have waited longer than 2 s when it reads them.  They are dropped unread (their senders
have retransmitted them twice by then) and every phone still ends registered from its later copies.  The phones
honour a 503 + Retry-After as phones do (bench/scenarios/register_retry.xml): catching up on the backlog the
server may refuse some new REGISTERs for a moment, which is the control doing its job, not a failure.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from harness import LOOPBACK, ROOT, metrics, sip_options, sipp, udp_final, users_file

PHONES = 300
REGISTER_RETRY = str(ROOT / "bench" / "scenarios" / "register_retry.xml")


def test_datagrams_queued_through_a_pause_are_dropped_as_stale_and_every_phone_registers(
    server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    inf = users_file(tmp_path, [f"pause{n:03d};sipp" for n in range(PHONES)])
    result: dict[str, object] = {}

    def register() -> None:
        keys = {"domain": "example.test", "contact_host": LOOPBACK, "contact_port": "5999", "expires": "600"}
        result["sipp"] = sipp(
            REGISTER_RETRY, server.sip_port, workdir=tmp_path, calls=PHONES, rate=100, inf=inf, keys=keys
        )

    phones = threading.Thread(target=register)
    phones.start()
    time.sleep(0.5)  # some registered, the rest come while the server is stopped
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    time.sleep(3)
    server.proc.send_signal(signal.SIGCONT)
    phones.join(120)
    done = result["sipp"]
    assert done.returncode == 0, done.stdout[-3000:]  # type: ignore[attr-defined]
    counts = metrics(server)
    assert counts.get('sip_shed_requests_total{method="REGISTER",reason="stale"}', 0) > 0, server.log_text()[-3000:]
    assert counts["sip_bindings"] == PHONES
    assert "Overload: messages wait" in server.log_text()  # the episode's one line, with the stale drops


def test_an_upstream_that_asks_learns_the_share_refused_in_its_via(server) -> None:  # type: ignore[no-untyped-def]
    asking = sip_options(server.sip_port, call_id="oc-1").replace(b";rport", b';rport;oc;oc-algo="loss"', 1)
    params = udp_final(server.sip_port, asking).top_via.params
    assert params["oc"] == "0" and params["oc-algo"] == '"loss"' and params["oc-validity"] == "0"
    assert params["oc-seq"] is not None and float(params["oc-seq"]) > 0
    plain = udp_final(server.sip_port, sip_options(server.sip_port, call_id="oc-2"))
    assert "oc" not in plain.top_via.params
