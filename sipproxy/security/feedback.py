# -*- test-case-name: tests.test_security_feedback -*-
"""RFC 7339 for the clients that ask: the share refused, in the ``oc`` parameter of their Via.

A 503 tells one client about one request; an upstream proxy, an SBC or a
trunk that sends us much of the load can do better if it knows how much to
hold back, and drop that share itself before it costs us a parse.  RFC 7339
carries that in Via parameters (syntax: RFC 7339 §9):

- a client that supports it puts ``oc`` (no value) in its Via and may list
  the algorithms it knows in ``oc-algo="loss,A"``;
- the server answers in that Via of each response: ``oc`` = the share of
  requests the client should not send (0 to 100, the "loss" algorithm,
  which every implementation has), ``oc-algo`` = the one chosen,
  ``oc-validity`` = for how many milliseconds the value holds (0: no
  control any more), ``oc-seq`` = when the value was set, so that a
  response overtaken on the way does not undo a newer one.

What sipproxy sends is :attr:`Congestion.refusing` -- the share its own
admission control refuses at that moment (``0`` when not overloaded), the
value set every control step -- in every response to such a client, 503s
included, valid for :data:`VALIDITY` seconds while shedding.  A client
whose ``oc-algo`` does not list ``loss`` gets nothing (we know no other).
The client side (putting ``oc`` in our own Via and holding back what we
send to a next hop by its value) is not done: sipproxy is the edge that
phones reach, and phones do not speak RFC 7339.
"""

from __future__ import annotations

from sipproxy.message import Via
from sipproxy.security.congestion import Congestion

__all__ = ["OverloadFeedback", "VALIDITY"]

VALIDITY = 1.0
"""Seconds an ``oc`` value holds while shedding: ten control steps, long enough to reach a client waiting on its
next response, short enough that a client we stop answering does not hold back for long."""

LOSS = "loss"


class OverloadFeedback:
    """Stamp the client's Via of a response with the overload state (``TransportLayer.feedback``)."""

    def __init__(self, congestion: Congestion) -> None:
        self.congestion = congestion

    def __call__(self, via: Via) -> Via | None:
        """A copy of ``via`` with ``oc``, ``oc-algo``, ``oc-validity`` and ``oc-seq``; ``None``: leave it."""
        params = via.params
        if "oc" not in params:
            return None  # the client does not do overload control
        algorithms = params.get("oc-algo")
        if algorithms is not None and LOSS not in algorithms.strip('"').replace(" ", "").lower().split(","):
            return None
        congestion = self.congestion
        stamped = via.clone()
        shedding = congestion.shedding
        stamped.params["oc"] = str(round(congestion.refusing * 100))
        stamped.params["oc-algo"] = f'"{LOSS}"'
        stamped.params["oc-validity"] = str(round(VALIDITY * 1000)) if shedding else "0"
        stamped.params["oc-seq"] = f"{congestion.changed_at:.3f}"
        return stamped
