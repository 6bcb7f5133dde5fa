# -*- test-case-name: tests.test_transport_hosts -*-
"""Who we are on the network when the operator did not say: the advertised host and the default domains.

Asked of this host's routing table and name service at start-up (no packet
leaves); ``--advertised-host`` and ``--domain`` override both.
"""

from __future__ import annotations

import socket

__all__ = ["advertised_host", "default_domains", "listens_everywhere"]


def listens_everywhere(interface: str) -> bool:
    """No ``--sip-interface`` (or the wildcard address): every IPv4 and IPv6 address of this host."""
    return interface in ("", "0.0.0.0", "::")


def advertised_host(interface: str) -> str:
    """The address we put in Via and Record-Route when none was given.

    The listening address if there is one; else the address this host would
    send from (asked of the routing table: connecting a UDP socket sends
    nothing), else what the host name resolves to; loopback only as a last
    resort, since phones on other machines cannot route back to it.
    """
    if not listens_everywhere(interface):
        return interface
    candidates = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 5060))  # TEST-NET-1: a route lookup, no packet leaves
            candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        candidates.append(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    for address in candidates:
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return "127.0.0.1"


def default_domains(interface: str, advertised: str) -> list[str]:
    """The host name, its FQDN, localhost and the addresses we listen on."""
    names = {"localhost", "127.0.0.1", "::1", advertised}
    hostname = socket.gethostname()
    names.update({hostname, socket.getfqdn()})
    if not listens_everywhere(interface):
        names.add(interface)
    else:
        try:
            names.update(info[4][0] for info in socket.getaddrinfo(hostname, None))
        except OSError:
            pass
    return sorted(n.lower() for n in names if n)
