"""``twistd sipproxy`` options and wiring, without sockets."""

from __future__ import annotations

import pytest
from twisted.python.usage import UsageError

from sipproxy.tap import Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults_serve_on_5060_with_web_on_loopback_8080_and_sqlite() -> None:
    options = parse()
    assert options["sip-port"] == 5060
    assert options["sip-interface"] == ""
    assert options["web"] == "tcp:8080:interface=127.0.0.1"
    assert options["db"] == "sipproxy.sqlite"
    assert options["domains"] == []
    assert options["min-expires"] == 60 and options["max-expires"] == 7200 and options["max-contacts"] == 10


def test_domain_is_repeatable_and_lower_cased() -> None:
    assert parse("--domain", "Example.TEST", "--domain", "b.example")["domains"] == ["example.test", "b.example"]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--sip-port", "70000"], "port"),
        (["--sip-port", "five"], "port"),
        (["--sip-interface", "not-an-ip"], "--sip-interface"),
        (["--min-expires", "0"], "--min-expires"),
        (["--min-expires", "600", "--max-expires", "60"], "--min-expires"),
        (["--domain", "bad domain"], "domain"),
        (["--web", ""], "--web"),
        (["--overload-lag", "soon"], "--overload-lag"),
        (["--overload-lag", "-1"], "--overload-lag"),
        (["--web", "tcp:abc"], "^--web 'tcp:abc': not a strports description"),
        (["--web", "tcp:8080:bogus=1"], "^--web 'tcp:8080:bogus=1'"),
        (["--web", "8080"], "^--web '8080'"),
        (["--sip-port", "0"], "^--sip-port '0': not a port number"),
    ],
)
def test_bad_values_say_what_is_wrong(args: list[str], complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint):
        parse(*args)


def test_build_service_wires_listeners_store_and_registrar(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from twisted.internet.task import Clock

    from sipproxy.service import build_service

    options = parse("--db", str(tmp_path / "b.sqlite"), "--sip-port", "5070", "--domain", "example.test")
    service = build_service(options, Clock())
    assert service.listeners.requested_port == 5070
    assert "example.test" in service.core.domains
    assert service.core.stack.registrar is not None and service.core.stack.proxy is not None
    service.core.store.close()


def test_start_up_errors_exit_with_one_line_and_no_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What only the machine can tell is checked in makeService, before anything listens (issue 13)."""
    from sipproxy.tap import makeService

    db = tmp_path / "missing" / "b.sqlite"
    with pytest.raises(SystemExit) as exit:
        makeService(parse("--db", str(db), "--sip-interface", "127.0.0.1", "--web", "tcp:0:interface=127.0.0.1"))
    assert exit.value.code == f"sipproxy: --db {db}: the directory {tmp_path / 'missing'} does not exist"
    assert exit.value.__cause__ is None and exit.value.__suppress_context__


# -- --dns (RFC 3263 lookups against given servers) ------------------------------


def test_dns_is_repeatable_and_takes_ipv4_ipv6_and_a_default_port() -> None:
    options = parse("--dns", "127.0.0.1:5353", "--dns", "[::1]:5300", "--dns", "192.0.2.53")
    assert options["dns"] == [("127.0.0.1", 5353), ("::1", 5300), ("192.0.2.53", 53)]


@pytest.mark.parametrize("value", ["dns.example:53", "127.0.0.1:0", "127.0.0.1:x", "[::1]x", ""])
def test_a_bad_dns_server_is_one_line(value: str) -> None:
    with pytest.raises(UsageError, match=r"^--dns .*: not IP\[:PORT\] or \[IPv6\]:PORT"):
        parse("--dns", value)


def test_dns_servers_replace_resolv_conf(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from twisted.internet.task import Clock

    from sipproxy.service import build_service

    options = parse("--db", ":memory:", "--dns", "127.0.0.1:5353")
    service = build_service(options, Clock())
    _hosts, dns_client = service.core.proxy.resolve.names.resolvers  # type: ignore[attr-defined]
    assert dns_client.servers == [("127.0.0.1", 5353)]
    assert dns_client.resolv is None  # /etc/resolv.conf is not read
    service.core.store.close()


def test_the_resolver_uses_the_transports_we_send_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from twisted.internet.task import Clock

    from sipproxy.service import build_service

    service = build_service(parse("--db", ":memory:"), Clock())
    assert set(service.core.proxy.resolve.transports) == set(service.core.transport.senders)  # type: ignore[attr-defined]
    assert {"UDP", "TCP"} <= set(service.core.proxy.resolve.transports)  # type: ignore[attr-defined]
    service.core.store.close()


# -- TLS (issue 14) --


def test_tls_is_off_by_default_and_its_port_is_5061() -> None:
    options = parse()
    assert options["tls-cert"] is None and options["tls-port"] == 5061


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "k.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-port", "99999"], "--tls-port"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-port", "5060"], "--tls-port 5060: is --sip-port's"),
        (["--tls-ca", "ca.pem"], "--tls-ca needs --tls-cert"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-cert", "cc.pem"], "--tls-client-key go together"),
    ],
)
def test_tls_option_mistakes_are_one_line(args: list[str], complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint):
        parse(*args)


# -- WebSocket (issue 14) --


def test_ws_and_wss_take_tcp_descriptions_and_origins_a_list() -> None:
    options = parse(
        "--tls-cert", "c.pem", "--tls-key", "k.pem", "--ws", "tcp:8088", "--wss", "tcp:port=8089:interface=127.0.0.1",
        "--ws-origin", "https://phone.example.test, https://other.example.test/",
    )  # fmt: skip
    assert (options["ws-port"], options["wss-port"]) == (8088, 8089)
    assert options["ws-origin"] == frozenset({"https://phone.example.test", "https://other.example.test"})


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--ws", "ssl:8089"], "give a tcp: description"),
        (["--ws", "tcp:abc"], "--ws"),
        (["--wss", "tcp:8089"], "--wss needs --tls-cert"),
        (["--ws", "tcp:8088", "--ws-origin", "phone.example.test"], "--ws-origin takes origins"),
    ],
)
def test_websocket_option_mistakes_are_one_line(args: list[str], complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint):
        parse(*args)


def test_the_resolver_offers_tls_once_it_is_on_and_never_websocket(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import trustme
    from twisted.internet.task import Clock

    from sipproxy.service import build_service

    cert = trustme.CA().issue_cert("sip.example.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    tls = ("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"))
    service = build_service(parse("--db", ":memory:", *tls, "--ws", "tcp:8088", "--wss", "tcp:8089"), Clock())
    assert {"TLS", "WS", "WSS"} <= set(service.core.transport.senders)
    assert set(service.core.proxy.resolve.transports) == {"UDP", "TCP", "TLS"}  # type: ignore[attr-defined]
    service.core.store.close()


def test_flow_options_reach_the_registrar(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from twisted.internet.task import Clock

    from sipproxy.service import build_service

    assert parse()["flow-timer"] == 120 and not parse()["keep-flow-bindings"]
    options = parse("--db", ":memory:", "--flow-timer", "90", "--keep-flow-bindings")
    service = build_service(options, Clock())
    settings = service.core.registrar._settings
    assert (settings.flow_timer, settings.keep_flow_bindings) == (90, True)
    with pytest.raises(UsageError, match="--flow-timer"):
        parse("--flow-timer", "0")


def test_max_connections_reaches_the_transport(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from twisted.internet.task import Clock

    from sipproxy.service import build_service

    assert parse()["max-connections"] == 1024
    service = build_service(parse("--db", ":memory:", "--max-connections", "20000"), Clock())
    assert service.core.transport.limits.max_connections == 20000
    service.core.store.close()
    with pytest.raises(UsageError, match="--max-connections must be a positive whole number"):
        parse("--max-connections", "lots")
