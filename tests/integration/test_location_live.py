"""The location service in the real ``twistd -n sipproxy``: values that are not UTF-8, its file deleted.

Issue "Hardening" item 7: a REGISTER whose User-Agent, Call-ID or
``+sip.instance`` is Latin-1 (``T\\xe9l\\xe9phone``) got ``500 Location
service failure`` and a critical traceback every time, because SQLite text
must be UTF-8. Now it gets 200, the binding survives a restart byte for
byte, and the page's API shows it readably.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.error
import urllib.request

import pytest
from harness import LOOPBACK, Server, register_query, udp_final

from sipproxy.message import Response

LATIN_1 = b"T\xe9l\xe9phone"


def register(server: Server, header: bytes, *, expires: int = 3600) -> Response:
    """One REGISTER over UDP from a raw socket; the final response."""
    lines = {
        b"Call-ID": b"Call-ID: latin1-test@127.0.0.1",
        b"Contact": b"Contact: <sip:carol@127.0.0.1:5999>",
        b"User-Agent": b"User-Agent: Phone/1",
    }
    lines[header.split(b":")[0]] = header
    data = (
        (
            f"REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {LOOPBACK}:9;branch=z9hG4bK-l1-{expires};rport\r\n"
            "Max-Forwards: 70\r\nTo: <sip:carol@example.test>\r\nFrom: <sip:carol@example.test>;tag=l1\r\n"
            f"CSeq: {2 if expires == 0 else 1} REGISTER\r\nExpires: {expires}\r\n"
        ).encode()
        + b"\r\n".join(lines.values())
        + b"\r\nContent-Length: 0\r\n\r\n"
    )
    return udp_final(server.sip_port, data)


def api_bindings(server: Server) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{server.web_port}/api/bindings", timeout=5) as answer:
        return json.loads(answer.read())["bindings"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("header", "field", "shown"),
    [
        (b"User-Agent: " + LATIN_1, "user_agent", "Téléphone"),
        (b"Call-ID: " + LATIN_1 + b"@127.0.0.1", "call_id", "Téléphone@127.0.0.1"),
        (b'Contact: <sip:carol@127.0.0.1:5999>;+sip.instance="<urn:' + LATIN_1 + b'>"', "instance", "<urn:Téléphone>"),
    ],
    ids=["user-agent", "call-id", "instance"],
)
def test_latin_1_register_gets_200_and_survives_a_restart(
    server: Server, header: bytes, field: str, shown: str
) -> None:
    response = register(server, header)
    assert (response.status, response.reason) == (200, "OK")
    [binding] = api_bindings(server)
    assert binding[field] == shown

    server.stop()
    server.start()
    assert "Restored 1 binding from" in server.log_text()
    [contact] = register_query(server.sip_port, "carol")
    assert contact.startswith("<sip:carol@127.0.0.1:5999>;expires=")
    [binding] = api_bindings(server)
    assert binding[field] == shown
    assert "Location service failure" not in server.log_text()
    assert "Traceback" not in server.log_text()

    response = register(server, header, expires=0)  # the same Call-ID with a higher CSeq: matched byte for byte
    assert response.status == 200
    assert api_bindings(server) == []
    assert "(unregistered by the phone)" in server.log_text()


# -- Issue "Hardening" item 9: the database file deleted under the running server ------------------------------

WAIT = 10.0
"""Seconds to wait for the server's once-a-second check of its file."""


def healthz(server: Server) -> int:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{server.web_port}/healthz", timeout=5) as answer:
            return answer.status  # type: ignore[no-any-return]
    except urllib.error.HTTPError as error:
        return error.code


def server_secret(server: Server) -> bytes:
    """The secret in the database file, read as another process would."""
    connection = sqlite3.connect(f"file:{server.db}?mode=ro", uri=True)
    try:
        (secret,) = connection.execute("SELECT secret FROM server_secret").fetchone()
        return bytes(secret)
    finally:
        connection.close()


def wait_for_log(server: Server, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in server.log_text():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{server.log_text()[-3000:]}"
        time.sleep(0.05)


def test_a_deleted_database_file_is_written_back_and_survives_kill_9(server: Server) -> None:
    assert register(server, b"User-Agent: Phone/1").status == 200
    secret = server_secret(server)
    assert healthz(server) == 200

    server.db.unlink()
    wait_for_log(server, f"Wrote the database file {server.db}: 1 binding and the server secret")
    assert server.log_text().count(f"the database file {server.db} was deleted while in use") == 1
    assert healthz(server) == 200
    assert server_secret(server) == secret

    server.kill9()  # no orderly close to lean on
    server.start()
    assert "Restored 1 binding from" in server.log_text()
    [contact] = register_query(server.sip_port, "carol")
    assert contact.startswith("<sip:carol@127.0.0.1:5999>;expires=")
    assert server_secret(server) == secret


def test_a_database_file_replaced_by_another_fails_health_until_restart(server: Server) -> None:
    assert register(server, b"User-Agent: Phone/1").status == 200
    other = server.db.with_name("restored-backup.sqlite")
    sqlite3.connect(other).close()
    os.replace(other, server.db)

    deadline = time.monotonic() + WAIT
    while healthz(server) != 503:
        assert time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.05)
    assert f"the database file {server.db} was replaced by another file" in server.log_text()
    assert register(server, b"Call-ID: again@127.0.0.1", expires=1800).status == 200  # still serving, from its own file

    server.stop()
    server.start()
    assert healthz(server) == 200
    assert "Restored 0 bindings from" in server.log_text()  # the operator's file, as the log said
