"""The RFC 3261 §16 stateful proxy core: no Twisted, time and DNS injected.

- :mod:`~sipproxy.proxy.validate`: §16.3 request validation and loop detection
- :mod:`~sipproxy.proxy.routing`: §16.4 Route preprocessing, Record-Route
- :mod:`~sipproxy.proxy.targets`: §16.5 targets and next hops
- :mod:`~sipproxy.proxy.forward`: §16.6 the forwarded copy
- :mod:`~sipproxy.proxy.branch`: §16.6 steps 8-11, §16.8, §16.9 one branch, failover between
  its next hop's addresses (RFC 3263 §4.3), and the narrow ``Environment`` it sees the proxy through
- :mod:`~sipproxy.proxy.responses`: §16.7-§16.10 response context, best response, CANCEL
- :mod:`~sipproxy.proxy.core`: :class:`Proxy`, tying the steps together
"""

from sipproxy.proxy.core import Proxy, ProxyLog, ProxySettings
from sipproxy.proxy.forward import RECORD_ROUTE_METHODS
from sipproxy.proxy.responses import ResponseContext, choose_best
from sipproxy.proxy.routing import LocalAddress, Locality
from sipproxy.proxy.targets import TargetURI
from sipproxy.proxy.validate import ALLOW

__all__ = [
    "ALLOW",
    "LocalAddress",
    "Locality",
    "Proxy",
    "ProxyLog",
    "ProxySettings",
    "RECORD_ROUTE_METHODS",
    "ResponseContext",
    "TargetURI",
    "choose_best",
]
