# -*- test-case-name: tests.test_transaction_server -*-
"""Server transactions: INVITE (RFC 3261 §17.2.1 with RFC 6026 §7.1) and non-INVITE (§17.2.2).

The TU answers through :meth:`ServerTransaction.respond`; the layer feeds
request retransmissions and ACKs.  Responses go out through
``Transport.send_response(response, source)``, ``source`` being where the
request came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from sipproxy.message import Request, Response, make_response
from sipproxy.randomness import random_hex
from sipproxy.transaction.interfaces import Source, TransactionError, is_reliable
from sipproxy.transaction.keys import ServerKey, expected_ack_key
from sipproxy.transaction.machine import Environment, Input, Machine, State, Transition

__all__ = ["InviteServerTransaction", "NonInviteServerTransaction", "ServerTransaction"]

S = State
I = Input  # noqa: E741 - reads like the RFC's tables


class ServerTransaction(Machine):
    """A server transaction (§17.2): what the TU answers a request through.

    ``state`` is a :class:`State` (a ``str``: ``stx.state == "Completed"``
    works); ``last_response`` is the response most recently sent, which is
    what a request retransmission gets again, and ``final_status`` the
    status of the final response once one is sent.  A finished non-INVITE
    transaction keeps only the bytes it sent (``request`` and
    ``last_response`` become ``None``): Timer J holds it for 32 s.
    """

    def __init__(self, request: Request, source: Source, env: Environment, key: ServerKey) -> None:
        super().__init__(env, is_reliable(source.transport))
        self.request: Request | None = request
        self.source = source
        self.method = request.method
        self.key = key
        self.ack_keys: tuple[ServerKey, ...] = ()
        """RFC 2543 only: the keys ACKs for the final responses sent will carry (§17.2.3)."""
        self.last_response: Response | None = None
        self.final_status: int | None = None
        self._sent: object = None
        """The transport's token for resending the last response."""
        self.timed_out = False
        """True once Timer H fired without an ACK (INVITE only, §17.2.1)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state} from {self.source.host}:{self.source.port}>"

    # -- the TU's side ------------------------------------------------------

    def respond(self, response: Response) -> None:
        """Send ``response`` through the transaction (§17.2.1, §17.2.2).

        Raises :class:`TransactionError`, and sends nothing, when the state
        does not allow it: a second final response, a provisional after the
        final, anything after Terminated.  In Accepted (RFC 6026) further 2xx
        responses are allowed and sent.
        """
        if not 100 <= response.status <= 699:
            raise TransactionError(f"bad status {response.status}")
        self._dispatch(self._classify(response.status), response)

    def _classify(self, status: int) -> Input:
        raise NotImplementedError

    @property
    def final_sent(self) -> bool:
        return self.final_status is not None

    # -- the layer's side ---------------------------------------------------

    def start(self) -> None:
        """Enter the initial state (starts the 100 Trying timer for INVITE)."""
        self._enter(self.INITIAL)

    def receive_retransmission(self, request: Request) -> None:
        """A retransmission of the request: resend the last response, or absorb it (§17.2.1, §17.2.2)."""
        self._dispatch(Input.REQUEST, request)

    def receive_ack(self, ack: Request) -> bool:
        """An ACK that matched this transaction; True when the TU must see it (RFC 6026 Accepted)."""
        return bool(self._dispatch(Input.ACK, ack))

    def abandon(self) -> None:
        """The TU failed while handling the request: answer 500 unless a final was sent, so the
        transaction ends (and the client stops retransmitting) instead of lingering."""
        if self.state in (S.TRYING, S.PROCEEDING) and self.request is not None:
            self.respond(make_response(self.request, 500, to_tag=random_hex(4)))

    # -- actions --------------------------------------------------------------

    def _send(self, response: Response) -> None:
        self.last_response = response
        if response.status >= 200:
            self.final_status = response.status
        self._sent = self.env.transport.send_response(response, self.source)

    def _resend_last(self, _request: object) -> None:
        if self._sent is not None:
            self.env.transport.resend_response(self._sent)


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 §17.2.1 (Figure 7) with RFC 6026 §7.1 (Figure 5), over a reliable or an unreliable transport.

    ::

        Proceeding --1xx from TU--> Proceeding    (100 Trying sent by us after 200 ms if the TU is silent)
        Proceeding --2xx from TU--> Accepted      (Timer L; INVITE retransmissions absorbed, ACKs to the TU)
        Proceeding --300-699 from TU--> Completed (Timer G retransmits on UDP, Timer H waits for the ACK)
        Completed --ACK--> Confirmed              (Timer I absorbs ACK retransmissions)
        Completed --Timer H--> Terminated         (the ACK never came: reported to the layer)
        Confirmed --Timer I--> Terminated;  Accepted --Timer L--> Terminated
    """

    INITIAL = S.PROCEEDING
    CAPPED = True  # Timer G doubles up to T2

    def _classify(self, status: int) -> Input:
        if status < 200:
            return I.SEND_1XX
        if status < 300:
            return I.SEND_2XX
        return I.SEND_FINAL

    def _send_provisional(self, response: Response) -> None:
        self._cancel_timer(I.TIMER_TRYING)
        self._send(response)

    def _send_trying(self, _arg: object) -> None:
        """§17.2.1: the TU did not answer within 200 ms; send 100 Trying (Timestamp copied, §8.2.6.1)."""
        if self.last_response is not None or self.request is None:
            return
        trying = make_response(self.request, 100)
        timestamp = self.request.get("timestamp")
        if timestamp is not None:
            trying.add("Timestamp", timestamp)
        self._send(trying)

    def _send_final(self, response: Response) -> None:
        assert self.request is not None
        key = expected_ack_key(self.request, response)
        if key is not None and not self.terminated:
            self.ack_keys += (key,)
            self.env.add_ack_key(self, key)
        self._send(response)

    def _retransmit_g(self, _arg: object) -> None:
        """Timer G: resend the final response, double the interval up to T2 (§17.2.1)."""
        self._resend_last(None)
        self._restart_retransmit_timer(I.TIMER_G)

    def _timer_h(self, _arg: object) -> None:
        """Timer H: no ACK within 64*T1; the transaction failed (§17.2.1)."""
        self.timed_out = True
        self.env.server_timed_out(self)

    def _ack_to_tu(self, _ack: Request) -> bool:
        """RFC 6026 §7.1: an ACK received in Accepted is passed to the TU."""
        return True

    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], Transition]] = {
        (S.PROCEEDING, I.REQUEST): (ServerTransaction._resend_last, S.PROCEEDING),
        (S.PROCEEDING, I.TIMER_TRYING): (_send_trying, S.PROCEEDING),
        (S.PROCEEDING, I.SEND_1XX): (_send_provisional, S.PROCEEDING),
        (S.PROCEEDING, I.SEND_2XX): (_send_final, S.ACCEPTED),
        (S.PROCEEDING, I.SEND_FINAL): (_send_final, S.COMPLETED),
        (S.PROCEEDING, I.ACK): (None, S.PROCEEDING),  # no final sent yet: nothing to acknowledge, absorbed
        (S.COMPLETED, I.REQUEST): (ServerTransaction._resend_last, S.COMPLETED),
        (S.COMPLETED, I.TIMER_G): (_retransmit_g, S.COMPLETED),
        (S.COMPLETED, I.TIMER_H): (_timer_h, S.TERMINATED),
        (S.COMPLETED, I.ACK): (None, S.CONFIRMED),
        (S.CONFIRMED, I.REQUEST): (None, S.CONFIRMED),
        (S.CONFIRMED, I.ACK): (None, S.CONFIRMED),
        (S.CONFIRMED, I.TIMER_I): (None, S.TERMINATED),
        (S.ACCEPTED, I.REQUEST): (None, S.ACCEPTED),  # RFC 6026: absorbed, the TU retransmits its 2xx
        (S.ACCEPTED, I.ACK): (_ack_to_tu, S.ACCEPTED),
        (S.ACCEPTED, I.SEND_2XX): (_send_final, S.ACCEPTED),  # RFC 6026: further 2xx (retransmitted or forked)
        (S.ACCEPTED, I.TIMER_L): (None, S.TERMINATED),
    }

    TIMERS: ClassVar[Mapping[State, tuple[Input, ...]]] = {
        S.PROCEEDING: (I.TIMER_TRYING,),
        S.COMPLETED: (I.TIMER_G, I.TIMER_H),
        S.CONFIRMED: (I.TIMER_I,),
        S.ACCEPTED: (I.TIMER_L,),
    }


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 §17.2.2 (Figure 8).

    ::

        Trying --1xx from TU--> Proceeding --1xx from TU--> Proceeding
        Trying | Proceeding --200-699 from TU--> Completed (Timer J absorbs request retransmissions)
        Completed --Timer J--> Terminated
    """

    INITIAL = S.TRYING

    def _classify(self, status: int) -> Input:
        return I.SEND_1XX if status < 200 else I.SEND_FINAL

    def _send_final(self, response: Response) -> None:
        """Send the final response; for Timer J's 32 s keep only the bytes a retransmission gets.

        A REGISTER server handling 1 000 requests a second holds 32 000 of
        these: without the messages each one is a handful of objects instead
        of forty, for the memory and for the garbage collector's full passes.
        """
        self._send(response)
        if self._sent is not None:
            self.request = None
            self.last_response = None

    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], Transition]] = {
        (S.TRYING, I.REQUEST): (None, S.TRYING),  # nothing to resend yet: absorbed
        (S.TRYING, I.SEND_1XX): (ServerTransaction._send, S.PROCEEDING),
        (S.TRYING, I.SEND_FINAL): (_send_final, S.COMPLETED),
        (S.PROCEEDING, I.REQUEST): (ServerTransaction._resend_last, S.PROCEEDING),
        (S.PROCEEDING, I.SEND_1XX): (ServerTransaction._send, S.PROCEEDING),
        (S.PROCEEDING, I.SEND_FINAL): (_send_final, S.COMPLETED),
        (S.COMPLETED, I.REQUEST): (ServerTransaction._resend_last, S.COMPLETED),
        (S.COMPLETED, I.TIMER_J): (None, S.TERMINATED),
    }

    TIMERS: ClassVar[Mapping[State, tuple[Input, ...]]] = {
        S.COMPLETED: (I.TIMER_J,),
    }
