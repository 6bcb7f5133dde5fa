# -*- test-case-name: tests.test_security_proxy -*-
"""Our Record-Route, signed: how a request shows it belongs to a dialog we record-routed.

RFC 3261 §16.6 step 4 has the proxy insert a Record-Route with a URI that
resolves to itself; §12.2.1.1 has the UAs send that URI back as the top
Route of every request in the dialog, and §16.4 has us find it there.  We
add a ``dt`` parameter (``sipproxy.proxy.routing.DIALOG_TOKEN_PARAM``):
an HMAC-SHA256 of the Call-ID with the server's secret, so nobody can
write such a Route for a dialog we did not record-route.

"In dialog" means one thing here, :meth:`DialogRoutes.follows_our_record_route`:
the request has a To tag and its top Route is our own Record-Route for its
Call-ID.  The proxy does not challenge such requests (the request that
set the dialog up was authenticated), and the overload guard lets them
pass so that established calls can still end.  The secret is kept in the
database (``--db``), so dialogs survive a restart.
"""

from __future__ import annotations

import hashlib
import hmac

from sipproxy.locality import Locality
from sipproxy.message import ParseError, Request, SipURI
from sipproxy.proxy.routing import DIALOG_TOKEN_PARAM

__all__ = ["DialogRoutes"]

_LABEL = b"dialog\x00"
_TOKEN_CHARS = 20


class DialogRoutes:
    """Signs our Record-Route for a Call-ID and recognises it in the Route of later requests."""

    def __init__(self, secret: bytes, locality: Locality) -> None:
        self._secret = secret
        self._locality = locality

    def token(self, call_id: str) -> str:
        """What our Record-Route carries for the dialog ``call_id``: HMAC-SHA256 with the server secret."""
        mac = hmac.new(self._secret, _LABEL + call_id.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return mac.hexdigest()[:_TOKEN_CHARS]

    def follows_our_record_route(self, request: Request) -> bool:
        """A To tag and a top Route that is our own signed Record-Route for this Call-ID.  Never raises."""
        try:
            if request.to.tag is None:
                return False
            routes = request.addresses("route")
            if not routes:
                return False
            uri = routes[0].uri
            if not (isinstance(uri, SipURI) and uri.user is None and self._locality.is_us(uri)):
                return False
            token = uri.params.get(DIALOG_TOKEN_PARAM)
            return token is not None and hmac.compare_digest(token, self.token(request.call_id))
        except ParseError:
            return False
