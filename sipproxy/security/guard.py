# -*- test-case-name: tests.test_security_guard -*-
"""The admission guard: a filter in front of the message sink, before any transaction state.

RFC 3261 §26.1.5 and §26.4.4 leave defence against flooding to the
implementation; the guard answers for it with the responses the RFC has
for it: ``403 Forbidden`` (§21.4.4) for a blocked source, ``503 Service
Unavailable`` with ``Retry-After`` (§21.5.4, §20.33) over the rate or under
overload, ``513 Message Too Large`` (§21.5.14).  It is stateless (§8.2.6,
the response goes straight back to the packet's source) and never answers
an ACK.  Checked in this order for each message as it arrives:

1. blocked source address (a scanner, see :mod:`sipproxy.security.blocks`):
   requests get ``403`` (a few, then a few per ``block_for``) or are
   dropped; responses pass.  A source that itself holds a binding and did
   not fail is not blocked for what others at its address did.
2. request rate per source address (token bucket: ``rate`` per second, a
   burst of ``burst``; both times ``bound_factor`` for an address holding an
   authenticated binding): over it, ``503`` with ``Retry-After`` (seconds
   until the bucket is full again) for at most ``reply_burst`` requests and
   then ``reply_rate`` per second, the rest dropped.  Unparseable messages
   count against the rate too and are dropped (no 400) when over it.
3. message size: a request larger than ``max_message_size`` bytes gets
   ``513``; a larger response is dropped.
4. transactions in flight: a new request (not ACK or CANCEL) while
   ``max_transactions`` proxied requests await their final response gets
   ``503`` with ``Retry-After``, unless it retransmits a request already
   taken; so does one while the reactor lags (``--overload-lag``), unless it
   belongs to a dialog we record-routed (:mod:`sipproxy.security.dialog`).
5. the wait (:mod:`sipproxy.security.congestion`, ``--overload-wait``, on
   by default): while messages wait too long before they are read, a
   share of the new out-of-dialog requests (no To tag; not ACK, CANCEL or
   BYE) gets ``503`` with a jittered ``Retry-After`` -- the share the
   server cannot get through -- unless it retransmits a request already
   taken.  Before that, for UDP, :meth:`Guard.datagram_waited` drops a
   datagram too stale to answer, unparsed.

Where the cost is: the guard runs after the parse and before the
transaction layer, and the retransmission test (one dictionary lookup) only
runs when a request would be refused.  A UDP datagram byte for byte the
same as one refused for the wait in the last 32 s (a retransmission,
§17.1.1.2) gets the same ``503`` again before it is parsed -- the bytes as
sent, as a server transaction resends its response (§17.2.1), also once
the overload is over, twice at most, later copies dropped -- for the price
of a dictionary lookup on the bytes:
no parse, no new response, no serialization (``bench/shed_cost.py``:
parse 3 µs, building the 503 3 µs, sending it again 1 µs, with the C
accelerator).  Nothing else is read before the parse: a second reading of
SIP would save only the parse.

Every response the guard sends has a To tag starting ``sg.``: the ACK for
such a non-2xx final response (§17.1.1.3) belongs to no transaction, so the
guard absorbs it instead of letting the proxy forward it (§16.11 would send
it on along the Request-URI); any other request with such a tag (sipp's BYE
for a call it gave up on after the 503) gets ``481`` (§12.2.2): a refusal
made no dialog.

The guard has the shape of the transport's ``MessageSink``
(``message_received`` and ``unparseable``) and passes what it admits on to
the next sink; :meth:`Guard.admit` is the decision alone.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from sipproxy.auth import RateLimiter
from sipproxy.message import ParseError, Request, Response, make_response, response_bytes
from sipproxy.metrics import Metrics
from sipproxy.net import Clock, Source
from sipproxy.randomness import random_hex
from sipproxy.security.congestion import Congestion
from sipproxy.security.settings import SecuritySettings
from sipproxy.security.sources import Throttle, source_key
from sipproxy.transport.sink import MessageSink, Reply, Resend

__all__ = ["Guard", "MessageSink", "Reply"]


class Guard:
    """The early check: every message from the network, before any transaction state (see the module docstring)."""

    log = Logger(namespace="sipproxy.security")

    def __init__(
        self,
        settings: SecuritySettings,
        clock: Clock,
        metrics: Metrics,
        *,
        sink: MessageSink | None = None,
        reply: Reply | None = None,
        is_blocked: Callable[[Source, float], bool] = lambda source, now: False,
        holds_binding: Callable[[str], bool] = lambda key: False,
        in_flight: Callable[[], int] = lambda: 0,
        is_retransmission: Callable[[Request], bool] = lambda request: False,
        lagging: Callable[[], float | None] = lambda: None,
        in_dialog: Callable[[Request], bool] = lambda request: False,
        congestion: Congestion | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.sink = sink
        """The next sink: what the guard admits goes there."""
        self.reply = reply
        """How the guard answers a refused request (straight back to the packet's source)."""
        self.is_blocked = is_blocked
        self.holds_binding = holds_binding
        self.in_flight = in_flight
        self.is_retransmission = is_retransmission
        """Retransmissions of requests already taken are never refused for overload."""
        self.lagging = lagging
        """How far behind the reactor runs, in seconds, when it is overloaded (``ReactorLag``); else ``None``."""
        self.in_dialog = in_dialog
        """Does the request belong to a dialog we record-routed (``DialogRoutes.follows_our_record_route``)?"""
        self.congestion = congestion
        """The admission by wait time (``--overload-wait``); ``None``: off."""
        self.rate: RateLimiter | None = None
        if settings.rate is not None:
            self.rate = RateLimiter(settings.rate, settings.effective_burst)
        self.replies = RateLimiter(settings.reply_rate, settings.reply_burst)
        self.blocked_replies = RateLimiter(settings.reply_burst / settings.block_for, settings.reply_burst)
        self._log_once = Throttle(settings.log_every)
        self.resend: Resend | None = None
        """Sends a refusal again from what :attr:`reply` returned (``TransportLayer.resend_refusal``)."""
        self.reply_data: Callable[[bytes, int, Source], object] | None = None
        """Sends a refusal already serialized straight back, as :attr:`reply` does
        (``TransportLayer.send_data_to_source``); ``None``: every refusal goes through :attr:`reply`."""
        self._refused: OrderedDict[bytes, list[Any]] = OrderedDict()
        """The datagrams refused for the wait: [when to forget them, their 503 as sent, how many copies got it
        again, the method] (oldest first)."""

    # -- the MessageSink shape -------------------------------------------------

    def message_received(self, message: Request | Response, source: Source, data: bytes) -> None:
        """Pass ``message`` on to the next sink if it is admitted; what is refused was answered or dropped."""
        if self.admit(message, source, len(data), data=data) and self.sink is not None:
            self.sink.message_received(message, source, data)

    def datagram_waited(self, datagram: bytes, wait: float) -> bool:
        """A UDP datagram waited ``wait`` seconds unread; ``False``: too stale, drop it unparsed.

        What the UDP transport asks of its sink before it parses (the
        kernel's receive time stamp).  A dropped request is counted by its
        method (read from the first bytes), a response as ``response``.
        """
        congestion = self.congestion
        if congestion is None:
            return True
        if not congestion.datagram_waited(wait):
            self._dropped(datagram, "stale")
            return False
        refusals = self._refused
        if refusals:
            now = self.clock.seconds()
            while refusals and next(iter(refusals.values()))[0] <= now:
                refusals.popitem(last=False)  # oldest first: its sender's transaction is over
            refused = refusals.get(datagram)
            if refused is not None and self.resend is not None:
                _, sent, answered, method = refused
                self._shed(method, "retransmission")
                if answered < REPEATS_ANSWERED:
                    refused[2] = answered + 1
                    self.resend(sent)
                return False
        return True

    def _dropped(self, datagram: bytes, reason: str) -> None:
        self._shed(_method_of(datagram), reason)

    def _shed(self, method: str, reason: str) -> None:
        """One request refused or dropped for the wait: to the metrics and to the overload's episode."""
        self.metrics.shed_request(method, reason)
        assert self.congestion is not None
        self.congestion.shed(method, reason)

    def unparseable(self, error: ParseError, source: Source, size: int) -> bool:
        """``False`` (drop silently) for a blocked source or over the rate; else what the next sink says."""
        if not self.admit(None, source, size):
            return False
        return self.sink.unparseable(error, source, size) if self.sink is not None else True

    # -- the decision ------------------------------------------------------------

    def admit(
        self,
        message: Request | Response | None,
        source: Source,
        size: int,
        reply: Reply | None = None,
        *,
        data: bytes = b"",
    ) -> bool:
        """May ``message`` (``size`` bytes from ``source``) go on to the transaction layer?

        ``message`` is ``None`` for what did not parse: then only the block
        and the rate apply (both drop silently), and ``True`` lets the
        transport send its 400.  Refusals are answered through ``reply``
        (default: the guard's own).  ``data``, the bytes it came as: a UDP
        datagram refused for the wait is remembered by them for its
        retransmissions.  Never raises.
        """
        try:
            return self._admit(message, source, size, reply or self.reply or _no_reply, data)
        except Exception:
            self.log.failure("Bug in the security guard for {host}:{port}", host=source.host, port=source.port)
            return True

    def _admit(self, message: Request | Response | None, source: Source, size: int, reply: Reply, data: bytes) -> bool:
        if isinstance(message, Response):
            if size > self.settings.max_message_size:
                self._note("size", source, "Dropped a {size}-byte response from {host}:{port}", size=size)
                return False
            return True
        now = self.clock.seconds()
        key = source_key(source.host)
        request = message if isinstance(message, Request) else None
        method = request.method if request is not None else None

        if self.is_blocked(source, now):
            self.metrics.inc(self.metrics.blocked, "auth")
            if request is not None and method != "ACK" and self.blocked_replies.allow(key, now):
                reply(_response(request, 403, "Forbidden (blocked)"), source)
            return False
        if self.rate is not None and not self._within_rate(request, source, key, now, reply):
            return False
        if request is None:
            return True
        if size > self.settings.max_message_size:
            self.metrics.inc(self.metrics.blocked, "size")
            self._note(
                "size",
                source,
                "Refused a {size}-byte {method} from {host}:{port} (limit {limit}): 513",
                size=size,
                method=method,
                limit=self.settings.max_message_size,
            )
            if method != "ACK":
                reply(_response(request, 513, None), source)
            return False
        if method == "ACK":
            # the ACK for one of our stateless refusals ends there (§17.1.1.3): no transaction, nowhere to go
            return not _is_ours(request)
        if method == "CANCEL":
            return True
        if _is_ours(request):
            # "in" a dialog of one of our stateless refusals, which made none: sipp sends a BYE for each call it
            # gives up on; forwarded, each waited 32 s on a phone that drops it (§12.2.2: 481)
            self.metrics.inc(self.metrics.blocked, "dialog")
            self._refuse(request, source, reply, 481)
            return False
        return self._not_overloaded(request, source, now, reply, data)

    def _within_rate(self, request: Request | None, source: Source, key: str, now: float, reply: Reply) -> bool:
        assert self.rate is not None
        bound = self.holds_binding(key)
        factor = self.settings.bound_factor if bound else 1.0
        if self.rate.allow(key, now, rate_multiplier=factor):
            return True
        self.metrics.inc(self.metrics.blocked, "rate")
        if self._log_once(f"rate:{key}", now):
            self.log.warn(
                "Rate limit: {key} sends more than {rate:g} requests/s (burst {burst:g}); "
                "answering 503 and dropping the rest",
                key=key,
                rate=self.rate.rate * factor,
                burst=self.rate.burst * factor,
                host=source.host,
                port=source.port,
                bound=bound,
            )
        if request is not None and request.method != "ACK" and self.replies.allow(key, now):
            retry = max(1, math.ceil(self.rate.burst / self.rate.rate))
            reply(_response(request, 503, None, retry), source)
        return False

    def _not_overloaded(self, request: Request, source: Source, now: float, reply: Reply, data: bytes) -> bool:
        in_flight = self.in_flight()
        if in_flight >= self.settings.max_transactions and not self.is_retransmission(request):
            self._overloaded(
                "transactions",
                request,
                source,
                now,
                reply,
                "Overloaded: {count} proxied requests in flight (limit {limit}); answering 503",
                count=in_flight,
                limit=self.settings.max_transactions,
            )
            return False
        lag = self.lagging()
        if lag is not None and not self.in_dialog(request) and not self.is_retransmission(request):
            # Shed new work; requests of dialogs already up (BYE, re-INVITE) still end their calls.
            self._overloaded(
                "lag",
                request,
                source,
                now,
                reply,
                "Overloaded: the reactor runs {lag:.0f} ms behind; answering 503 to new requests",
                lag=lag * 1000,
            )
            return False
        congestion, method = self.congestion, request.method
        if (
            congestion is not None
            and congestion.shedding
            and method not in _ENDING
            and _out_of_dialog(request)
            and not self.is_retransmission(request)
            and not congestion.admits()
        ):
            self._shed(method, "wait")
            self.metrics.inc(self.metrics.blocked, "wait")
            sent = self._refuse(request, source, reply, 503, congestion.retry_after())
            if sent is not None and data and source.transport == "UDP":
                self._refused[data] = [self.clock.seconds() + REFUSED_FOR, sent, 0, method]
                if len(self._refused) > REFUSED_KEPT:
                    self._refused.popitem(last=False)
            return False
        return True

    def _refuse(
        self, request: Request, source: Source, reply: Reply, status: int, retry_after: int | None = None
    ) -> object:
        """Answer ``request`` with ``status`` (and ``Retry-After``), statelessly; what :attr:`reply` returns.

        The refusals that come by the thousand under overload (the wait's
        503, the 481 for the BYE of a refused call) are serialized in one
        pass (``response_bytes``: the same bytes, no :class:`Response`
        built), unless the Via asks for RFC 7339 feedback, which the
        transport writes into a built response's Via.
        """
        if self.reply_data is not None and reply is self.reply and "oc" not in request.top_via.params:
            extra = (("Retry-After", str(retry_after)),) if retry_after is not None else ()
            data = response_bytes(request, status, None, to_tag=_TAG_PREFIX + random_hex(4), extra=extra)
            return self.reply_data(data, status, source)
        return reply(_response(request, status, None, retry_after), source)

    def _overloaded(
        self, kind: str, request: Request, source: Source, now: float, reply: Reply, fmt: str, **fields: object
    ) -> None:
        """Refuse ``request`` for overload: counted by ``kind``, logged once a while, 503 with Retry-After."""
        self.metrics.inc(self.metrics.blocked, kind)
        self.metrics.shed_request(request.method, kind)
        if self._log_once(kind, now):
            self.log.warn(fmt, **fields)
        reply(_response(request, 503, None, self.settings.overload_retry_after), source)

    def _note(self, kind: str, source: Source, fmt: str, **fields: object) -> None:
        if self._log_once(f"{kind}:{source_key(source.host)}", self.clock.seconds()):
            self.log.warn(fmt, host=source.host, port=source.port, **fields)


REFUSED_KEPT = 20000
"""Refused datagrams remembered for their retransmissions (a few seconds' worth at thousands a second)."""
REFUSED_FOR = 32.0
"""Seconds a refused datagram's copies get the same 503: 64 x T1, the life of the client transaction that sends
them (Timer B/F, §17.1.1.2, §17.1.2.2), also after the overload is over -- as a server transaction would answer
them (§17.2.1).  A phone that honours the 503 sends a new request (a new branch, other bytes) after its
Retry-After, and that one is a new chance."""
REPEATS_ANSWERED = 2
"""Copies of a refused datagram that get its 503 again; later ones are dropped unanswered.  A phone stops at
the first 503 it reads (§17.1.1.2: a final response ends the client transaction), so a copy means that one was
lost; two lost in a row is already rare, and a sender still retransmitting after that is not reading them
(sipp's uac.xml ignores a 503 and retransmits until its timeout).  Each answer is a ``sendto``: at 4x the
capacity, answering every copy took 12 % of the server's time (``bench/README.md``)."""

_ENDING = frozenset({"ACK", "CANCEL", "BYE"})
"""Requests that end or finish work already taken: never shed for the wait."""

_TAG_PREFIX = "sg."
"""The To tag of every refusal the guard sends (stateless): the ACK for one is recognised and absorbed, any
other request with it gets 481 (no dialog was ever made by a refusal)."""


def _out_of_dialog(request: Request) -> bool:
    """No To tag: the request starts new work (§12.2: a request within a dialog has one)."""
    try:
        return request.to.tag is None
    except ParseError:
        return True


def _is_ours(request: Request) -> bool:
    """Is the To tag one of our stateless refusals' (``sg.``)?"""
    try:
        tag = request.to.tag
    except ParseError:
        return False
    return tag is not None and tag.startswith(_TAG_PREFIX)


def _method_of(datagram: bytes) -> str:
    """The method of a raw request (``response`` for a response), for the metrics; no parse."""
    first = datagram[:16].split(b" ", 1)[0].lstrip(b"\r\n")
    if first.startswith(b"SIP/"):
        return "response"
    return first.decode("ascii", "replace")


def _response(request: Request, status: int, reason: str | None, retry_after: int | None = None) -> Response:
    response = make_response(request, status, reason, to_tag=_TAG_PREFIX + random_hex(4))
    if retry_after is not None:
        response.add("Retry-After", str(retry_after))
    return response


def _no_reply(response: Response, source: Source) -> None:
    """No way to answer was given: refusals are dropped."""
