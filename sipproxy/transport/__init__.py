"""Sockets: SIP over UDP and TCP (RFC 3261 §18, RFC 3581). The only package that touches the network."""

from sipproxy.transport.address import normalize_host
from sipproxy.transport.layer import TransportLayer, TransportLimits
from sipproxy.transport.listen import BindError, SipListeners
from sipproxy.transport.stream import SipClientFactory, SipStreamFactory, SipStreamProtocol, tcp_connector
from sipproxy.transport.udp import SipDatagramProtocol
from sipproxy.transport.wirelog import WireLog

__all__ = [
    "BindError",
    "SipClientFactory",
    "SipDatagramProtocol",
    "SipListeners",
    "SipStreamFactory",
    "SipStreamProtocol",
    "TransportLayer",
    "TransportLimits",
    "WireLog",
    "normalize_host",
    "tcp_connector",
]
