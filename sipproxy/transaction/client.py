# -*- test-case-name: tests.test_transaction_client -*-
"""Client transactions: INVITE (RFC 3261 §17.1.1 with RFC 6026 §8.4) and non-INVITE (§17.1.2).

The layer creates one per :meth:`TransactionLayer.send_request` and feeds it
the responses that match it (§17.1.3).  Its owner hears about provisional
and final responses, Timer B/F and transport failures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from sipproxy.message import Request, Response
from sipproxy.transaction.builders import build_ack
from sipproxy.transaction.interfaces import ClientTransactionUser, Target, is_reliable
from sipproxy.transaction.keys import ClientKey
from sipproxy.transaction.machine import Environment, Input, Machine, State, Transition

__all__ = ["ClientTransaction", "InviteClientTransaction", "NonInviteClientTransaction"]

S = State
I = Input  # noqa: E741 - reads like the RFC's tables


class _NoUser:
    """A client transaction user that hears and does nothing (see :data:`NO_USER`)."""

    def response_received(self, ctx: object, response: object) -> None:
        pass

    def timed_out(self, ctx: object) -> None:
        pass

    def transport_failed(self, ctx: object, reason: str) -> None:
        pass

    def terminated(self, ctx: object) -> None:
        pass


NO_USER: ClientTransactionUser = _NoUser()  # type: ignore[assignment]
"""The owner of a request whose answer tells its sender nothing it needs (a CANCEL, §9.1), and what every client
transaction's ``owner`` becomes once it ended (``ClientTransactionUser.terminated``)."""


class ClientTransaction(Machine):
    """A client transaction (§17.1): one request sent to one resolved ``target``.

    ``last_provisional`` is the latest 1xx received (a proxy needs it for
    Timer C and to know whether it may CANCEL, §16.8, §9.1);
    ``final_response`` is the first final response.

    Callbacks into ``owner`` never happen from inside ``send_request``: a
    transport error reported synchronously while sending the request is
    delivered from the clock (``callLater(0)``); the transaction is already
    Terminated by then.  Over a reliable transport a non-INVITE transaction
    (and an INVITE one after a 300-699) is already Terminated when the owner
    sees the final response, since Timers K and D are zero.
    """

    def __init__(
        self,
        request: Request,
        target: Target,
        owner: ClientTransactionUser,
        env: Environment,
        key: ClientKey,
    ) -> None:
        super().__init__(env, is_reliable(target.transport))
        self.request = request
        self.target = target
        self.owner = owner
        self.method = request.method
        self.key = key
        self.last_provisional: Response | None = None
        self.final_response: Response | None = None
        self.failure: str | None = None
        """Why the transaction ended without a final response: ``"timeout"`` or the transport's reason."""
        self._starting = False
        self._dispatching = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state} to {self.target.host}:{self.target.port}>"

    # -- the layer's side ---------------------------------------------------

    def start(self) -> None:
        """Enter the initial state (Timers A/B or E/F) and send the request."""
        self._starting = True
        try:
            self._enter(self.INITIAL)
            self._transmit()
        finally:
            self._starting = False

    def receive_response(self, response: Response) -> None:
        """A response that matched this transaction (§17.1.3)."""
        self._dispatch(self._classify(response.status), response)

    def _dispatch(self, event: Input, arg: object = None) -> object:
        """The table's step; once it ends in Terminated, let go of the owner and tell it (after any report).

        The owner holds the transaction (a branch its attempt) and the
        transaction its owner: without the cut, each finished call was a
        reference cycle left for the next full garbage collection, ten
        minutes away (``gctune``).
        """
        if self._dispatching:  # a zero timer (D, K on reliable transports) fired inside a step: the outer one cuts
            return super()._dispatch(event, arg)
        self._dispatching = True
        try:
            result = super()._dispatch(event, arg)
        finally:
            self._dispatching = False
        if self.state is State.TERMINATED and self.owner is not NO_USER:
            owner, self.owner = self.owner, NO_USER
            self._tell_owner(owner.terminated)
        return result

    def _classify(self, status: int) -> Input:
        raise NotImplementedError

    # -- actions --------------------------------------------------------------

    def _transmit(self) -> None:
        self.env.transport.send_request(self.request, self.target, self._on_transport_error)

    def _on_transport_error(self, reason: str) -> None:
        self._dispatch(I.TRANSPORT_ERROR, reason)

    def _tell_owner(self, callback: Callable[..., object], *args: object) -> None:
        if self._starting:
            self.env.defer(callback, self, *args)
        else:
            callback(self, *args)

    def _report_provisional(self, response: Response) -> None:
        self.last_provisional = response
        self._tell_owner(self.owner.response_received, response)

    def _report_final(self, response: Response) -> None:
        if self.final_response is None:
            self.final_response = response
        self._tell_owner(self.owner.response_received, response)

    def _report_timeout(self, _arg: object) -> None:
        self.failure = "timeout"
        self._tell_owner(self.owner.timed_out)

    def _report_transport_error(self, reason: str) -> None:
        self.failure = reason
        self._tell_owner(self.owner.transport_failed, reason)


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 §17.1.1 (Figure 5) with RFC 6026 §8.4 (Figure 4).

    ::

        Calling --Timer A--> Calling (retransmit, UDP only, interval doubles)
        Calling --Timer B--> Terminated (owner.timed_out)
        Calling | Proceeding --1xx--> Proceeding (to the owner; A and B stop)
        Calling | Proceeding --2xx--> Accepted (to the owner; Timer M; every further 2xx to the owner too)
        Calling | Proceeding --300-699--> Completed (ACK sent, to the owner; Timer D re-ACKs retransmissions)
        Completed --Timer D--> Terminated;  Accepted --Timer M--> Terminated
    """

    INITIAL = S.CALLING
    CAPPED = False  # Timer A doubles without cap; Timer B ends it

    def __init__(
        self,
        request: Request,
        target: Target,
        owner: ClientTransactionUser,
        env: Environment,
        key: ClientKey,
    ) -> None:
        super().__init__(request, target, owner, env, key)
        self.ack: Request | None = None
        """The ACK this transaction sent for a 300-699 final (§17.1.1.3)."""

    def _classify(self, status: int) -> Input:
        if status < 200:
            return I.RECV_1XX
        if status < 300:
            return I.RECV_2XX
        return I.RECV_FINAL

    def _retransmit_a(self, _arg: object) -> None:
        """Timer A: resend the INVITE, double the interval (§17.1.1.2)."""
        self._transmit()
        self._restart_retransmit_timer(I.TIMER_A)

    def _ack_and_report(self, response: Response) -> None:
        """A 300-699 final: ACK it to the same target (§17.1.1.3), then tell the owner."""
        self.final_response = response
        self.ack = build_ack(self.request, response)
        self._send_ack()
        self._tell_owner(self.owner.response_received, response)

    def _send_ack(self, _arg: object = None) -> None:
        if self.ack is not None:
            self.env.transport.send_request(self.ack, self.target, self._on_transport_error)

    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], Transition]] = {
        (S.CALLING, I.TIMER_A): (_retransmit_a, S.CALLING),
        (S.CALLING, I.TIMER_B): (ClientTransaction._report_timeout, S.TERMINATED),
        (S.CALLING, I.RECV_1XX): (ClientTransaction._report_provisional, S.PROCEEDING),
        (S.CALLING, I.RECV_2XX): (ClientTransaction._report_final, S.ACCEPTED),
        (S.CALLING, I.RECV_FINAL): (_ack_and_report, S.COMPLETED),
        (S.CALLING, I.TRANSPORT_ERROR): (ClientTransaction._report_transport_error, S.TERMINATED),
        (S.PROCEEDING, I.RECV_1XX): (ClientTransaction._report_provisional, S.PROCEEDING),
        (S.PROCEEDING, I.RECV_2XX): (ClientTransaction._report_final, S.ACCEPTED),
        (S.PROCEEDING, I.RECV_FINAL): (_ack_and_report, S.COMPLETED),
        (S.PROCEEDING, I.TRANSPORT_ERROR): (ClientTransaction._report_transport_error, S.TERMINATED),
        (S.COMPLETED, I.RECV_FINAL): (_send_ack, S.COMPLETED),  # a retransmitted final: ACK again
        (S.COMPLETED, I.RECV_1XX): (None, S.COMPLETED),
        (S.COMPLETED, I.RECV_2XX): (None, S.COMPLETED),
        (S.COMPLETED, I.TIMER_D): (None, S.TERMINATED),
        (S.COMPLETED, I.TRANSPORT_ERROR): (None, S.TERMINATED),  # the ACK failed; the owner has its final
        (S.ACCEPTED, I.RECV_2XX): (ClientTransaction._report_final, S.ACCEPTED),  # RFC 6026: every 2xx goes up
        (S.ACCEPTED, I.RECV_1XX): (None, S.ACCEPTED),
        (S.ACCEPTED, I.RECV_FINAL): (None, S.ACCEPTED),
        (S.ACCEPTED, I.TIMER_M): (None, S.TERMINATED),
    }

    TIMERS: ClassVar[Mapping[State, tuple[Input, ...]]] = {
        S.CALLING: (I.TIMER_A, I.TIMER_B),
        S.COMPLETED: (I.TIMER_D,),
        S.ACCEPTED: (I.TIMER_M,),
    }


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 §17.1.2 (Figure 6).

    ::

        Trying --Timer E--> Trying (retransmit, UDP only, interval doubles up to T2)
        Trying | Proceeding --Timer F--> Terminated (owner.timed_out)
        Trying | Proceeding --1xx--> Proceeding (to the owner; Timer E continues at T2)
        Trying | Proceeding --200-699--> Completed (to the owner; Timer K absorbs retransmissions)
        Completed --Timer K--> Terminated
    """

    INITIAL = S.TRYING
    CAPPED = True

    def _classify(self, status: int) -> Input:
        return I.RECV_1XX if status < 200 else I.RECV_FINAL

    def _retransmit_e(self, _arg: object) -> None:
        """Timer E: resend; the next interval is min(2*interval, T2) in Trying, T2 in Proceeding (§17.1.2.2)."""
        self._transmit()
        interval = self.env.settings.t2 if self.state is S.PROCEEDING else None
        self._restart_retransmit_timer(I.TIMER_E, interval)

    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], Transition]] = {
        (S.TRYING, I.TIMER_E): (_retransmit_e, S.TRYING),
        (S.TRYING, I.TIMER_F): (ClientTransaction._report_timeout, S.TERMINATED),
        (S.TRYING, I.RECV_1XX): (ClientTransaction._report_provisional, S.PROCEEDING),
        (S.TRYING, I.RECV_FINAL): (ClientTransaction._report_final, S.COMPLETED),
        (S.TRYING, I.TRANSPORT_ERROR): (ClientTransaction._report_transport_error, S.TERMINATED),
        (S.PROCEEDING, I.TIMER_E): (_retransmit_e, S.PROCEEDING),
        (S.PROCEEDING, I.TIMER_F): (ClientTransaction._report_timeout, S.TERMINATED),
        (S.PROCEEDING, I.RECV_1XX): (ClientTransaction._report_provisional, S.PROCEEDING),
        (S.PROCEEDING, I.RECV_FINAL): (ClientTransaction._report_final, S.COMPLETED),
        (S.PROCEEDING, I.TRANSPORT_ERROR): (ClientTransaction._report_transport_error, S.TERMINATED),
        (S.COMPLETED, I.RECV_1XX): (None, S.COMPLETED),
        (S.COMPLETED, I.RECV_FINAL): (None, S.COMPLETED),  # a retransmitted final: absorbed
        (S.COMPLETED, I.TIMER_K): (None, S.TERMINATED),
    }

    TIMERS: ClassVar[Mapping[State, tuple[Input, ...]]] = {
        S.TRYING: (I.TIMER_E, I.TIMER_F),
        S.PROCEEDING: (I.TIMER_E, I.TIMER_F),
        S.COMPLETED: (I.TIMER_K,),
    }
