"""The registrar driven by real sipp UACs through the real ``twistd -n sipproxy``; bindings survive restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from harness import Server, register_query, sipp, users_file

USERS = [f"u{i:04d}" for i in range(1, 1001)]


def register_all(
    server: Server, users: list[str], transport: str, scenario: str = "reg_contact.xml", port: str = "5999"
) -> None:
    inf = users_file(server.workdir, users, f"users-{transport}-{scenario}.csv")
    result = sipp(
        scenario,
        server.sip_port,
        workdir=server.workdir,
        calls=len(users),
        rate=500,
        transport=transport,
        inf=inf,
        keys={"domain": "example.test", "contact_port": port, "expires": "3600", "tp": transport},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def stored_aors(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute("SELECT aor FROM bindings")}


def test_thousand_users_over_udp_then_tcp_refresh_unregister_and_restart(server) -> None:  # type: ignore[no-untyped-def]
    register_all(server, USERS, "udp")
    register_all(server, USERS, "tcp", port="5998")
    contacts = register_query(server.sip_port, "u0500")
    assert len(contacts) == 2
    assert any("transport=udp" in c for c in contacts) and any("transport=tcp" in c for c in contacts)
    assert all(";expires=" in c for c in contacts)

    register_all(server, USERS[:10], "udp", scenario="reg_refresh.xml")
    assert len(register_query(server.sip_port, "u0001")) == 2

    one = "<sip:u0001@127.0.0.1:5999;transport=udp>"
    result = sipp(
        "unreg.xml",
        server.sip_port,
        workdir=server.workdir,
        calls=1,
        inf=users_file(server.workdir, ["u0001"], "one.csv"),
        keys={"domain": "example.test", "contact": one},
    )
    assert result.returncode == 0, result.stdout[-2000:]
    remaining = register_query(server.sip_port, "u0001")
    assert len(remaining) == 1 and "transport=tcp" in remaining[0]

    result = sipp(
        "unreg.xml",
        server.sip_port,
        workdir=server.workdir,
        calls=1,
        inf=users_file(server.workdir, ["u0002"], "two.csv"),
        keys={"domain": "example.test", "contact": "*"},
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert register_query(server.sip_port, "u0002") == []

    server.stop()
    server.start()
    assert "Restored 1997 bindings" in server.log_text()
    for user in ("u0003", "u0500", "u1000"):
        assert len(register_query(server.sip_port, user)) == 2
    assert register_query(server.sip_port, "u0002") == []
    assert len(register_query(server.sip_port, "u0001")) == 1


def test_kill_9_right_after_a_burst_loses_no_acknowledged_binding(server) -> None:  # type: ignore[no-untyped-def]
    register_all(server, USERS, "udp")
    server.kill9()
    assert len(stored_aors(server.db)) == len(USERS)
    server.start()
    assert f"Restored {len(USERS)} bindings" in server.log_text()
    for user in ("u0001", "u0777", "u1000"):
        assert len(register_query(server.sip_port, user)) == 1
