# -*- test-case-name: tests.test_flowtoken -*-
"""RFC 5626 §5.2 flow tokens: which flow a phone registered on, written into our Record-Route, signed.

An edge proxy (we are edge proxy and registrar in one) identifies the flow
a phone's REGISTER arrived on, and later requests towards the phone must
leave on that flow, whatever the phone's Contact says: a WebSocket phone
registers ``sip:x@y.invalid;transport=ws``, which resolves nowhere, and a
phone behind a NAT names an address nobody outside can reach.  RFC 5626
§5.2 lets the edge put a *flow token* into the URI it records (Path, or
Record-Route for a dialog); an in-dialog request brings that URI back as
its top Route, and §5.3 forwards it "over the flow that received the
REGISTER".

A token here is ``base64url(HMAC-SHA256(secret, label || flow)[:12] ||
flow)``, the flow being its transport, our listener (``host:port`` as we
advertise it for that transport) and the peer's address.  The secret is
the server's, kept in the ``--db`` file (``SQLitePersistence.server_secret``,
the one nonces and dialog tokens use, under another label), so a token
written before a restart still names its flow after it.  Tokens need no
state: any token whose HMAC checks out was made by us.

:meth:`FlowTokens.decode` returns ``None`` for a token that is not ours
(tampered with, made under another secret, or not a token at all); §5.3:
"if the flow token has been tampered with, the proxy SHOULD send a 403
(Forbidden)", which the proxy does for a Route to us carrying one.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import NamedTuple

__all__ = ["FLOW_TOKEN_PARAM", "Flow", "FlowTokens"]

FLOW_TOKEN_PARAM = "ft"
"""The URI parameter of our Record-Route carrying the flow token (beside ``dt``, the dialog token)."""

_LABEL = b"flow\x00"
_MAC_BYTES = 12
"""96 bits of HMAC: forging one takes 2**96 tries against a server that answers each with a 403."""
_MAX_TOKEN = 200
_SEPARATOR = "|"
_TRANSPORTS = frozenset({"UDP", "TCP", "TLS", "WS", "WSS", "SCTP"})


class Flow(NamedTuple):
    """A flow (RFC 5626 §3.1): the transport, our listener, and the phone's address as we see it."""

    transport: str
    """``"UDP"``, ``"TCP"``, ``"TLS"``, ``"WS"`` or ``"WSS"``."""
    local: str
    """Our listener, ``host:port`` as advertised for ``transport``."""
    host: str
    """The peer's address (a bare IP address)."""
    port: int


class FlowTokens:
    """Writes and reads flow tokens under the server's secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a flow token secret needs at least 16 bytes")
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _LABEL + payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, flow: Flow) -> str:
        """The token of ``flow``: URL-safe base64 without padding (a legal URI parameter value, RFC 3261 §25.1)."""
        transport = flow.transport.upper()
        if transport not in _TRANSPORTS:
            raise ValueError(f"unknown transport {flow.transport!r}")
        payload = _SEPARATOR.join((transport, flow.local, flow.host, str(flow.port))).encode("utf-8")
        return base64.urlsafe_b64encode(self._mac(payload) + payload).rstrip(b"=").decode("ascii")

    def decode(self, token: str) -> Flow | None:
        """The flow ``token`` names, or ``None`` when it is not one we made (tampered, other secret, garbage)."""
        if not token or len(token) > _MAX_TOKEN or not token.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if len(mac) < _MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            transport, local, host, port = payload.decode("utf-8").split(_SEPARATOR)
            return Flow(transport, local, host, int(port))
        except ValueError:  # signed by us, so never; but a bad token must not raise
            return None
