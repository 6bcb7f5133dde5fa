"""Sockets: SIP over UDP and TCP (RFC 3261 §18, RFC 3581, RFC 3263 §4). The only package that touches the network.

A leaf above ``sipproxy.message`` and ``sipproxy.net``: it knows nothing of
transactions, the proxy or security.  What it receives goes to a
:class:`MessageSink`; what it sends goes out through the :class:`Sender`
registered under the transport's name.

- ``layer.py``: :class:`TransportLayer`, §18 in and out, the senders and the connection table
- ``sink.py``: :class:`MessageSink`, what received messages are handed to; :class:`Tapped`, the capture's view
- ``udp.py``, ``stream.py``: UDP and the stream transports (TCP), each a protocol and a sender
- ``resolve.py``: :class:`Resolver`, next hops to ordered targets (RFC 3263 §4: NAPTR, SRV, A/AAAA);
  ``rfc3263.py`` the NAPTR choice and the RFC 2782 SRV order, ``dnscache.py`` the TTL cache
- ``listen.py``: :class:`SipListeners`, the sockets bound before the reactor runs
- ``wirelog.py``: the SIP trace
"""

from sipproxy.transport.address import normalize_host
from sipproxy.transport.layer import Sender, TransportLayer, TransportLimits
from sipproxy.transport.listen import BindError, SipListeners
from sipproxy.transport.resolve import Resolver
from sipproxy.transport.sink import MessageSink, Reply
from sipproxy.transport.stream import (
    SipClientFactory,
    SipStreamFactory,
    SipStreamProtocol,
    StreamSender,
    tcp_connector,
)
from sipproxy.transport.udp import DatagramSender, SipDatagramProtocol
from sipproxy.transport.wirelog import WireLog

__all__ = [
    "BindError",
    "DatagramSender",
    "MessageSink",
    "Reply",
    "Resolver",
    "Sender",
    "SipClientFactory",
    "SipDatagramProtocol",
    "SipListeners",
    "SipStreamFactory",
    "SipStreamProtocol",
    "StreamSender",
    "TransportLayer",
    "TransportLimits",
    "WireLog",
    "normalize_host",
    "tcp_connector",
]
