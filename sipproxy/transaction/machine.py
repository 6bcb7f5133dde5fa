# -*- test-case-name: tests.test_transaction_client,tests.test_transaction_server -*-
"""What the four transaction state machines share: states, inputs, the table walker and the timers.

Each machine (``client.py``, ``server.py``) is a table
``TRANSITIONS[(state, input)] = (action, next_state)`` plus
``TIMERS[state]``, the timers that run in a state.  :meth:`Machine._dispatch`
is the only place that changes ``state``; it does so in this order:

1. look the pair up; a miss is a :class:`TransactionError` for an input from
   the TU (``SEND_*``) and is ignored for anything from the wire, the
   transport or a timer (a late or duplicate event: absorbed);
2. enter the next state when it differs: cancel the timers that do not run
   there, start those that do and are not running yet.  A timer whose value
   is zero (D, I, J, K on a reliable transport) fires at once, so the machine
   may pass straight through to Terminated; Terminated removes the
   transaction from the layer's table;
3. run the action (send, retransmit, tell the owner).  Callbacks into the
   owner or TU come last in an action, so the machine is consistent whatever
   the callback does: re-enter the layer, or raise (the exception propagates
   to whoever fed the input: ``receive_*`` or the clock).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from sipproxy.transaction.interfaces import TransactionError, Transport
from sipproxy.transaction.timers import Clock, DelayedCall, LingerQueues, TimerSettings

__all__ = ["Environment", "Input", "Machine", "State", "Transition"]


class State(StrEnum):
    """Transaction states (RFC 3261 Figures 5-8; Accepted from RFC 6026)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(StrEnum):
    """Everything that can happen to a transaction."""

    # from the wire (server side)
    REQUEST = "request retransmission"
    ACK = "ACK"
    # from the TU (server side): a miss in the table is a TransactionError
    SEND_1XX = "TU sends 1xx"
    SEND_2XX = "TU sends 2xx"
    SEND_FINAL = "TU sends final"
    """300-699 for INVITE, 200-699 for the others."""
    # from the wire (client side)
    RECV_1XX = "1xx received"
    RECV_2XX = "2xx received"
    RECV_FINAL = "final received"
    """300-699 for INVITE, 200-699 for the others."""
    # from the transport
    TRANSPORT_ERROR = "transport error"
    # timers, named after RFC 3261 Table 4 and RFC 6026
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"
    TIMER_TRYING = "Timer 100 Trying"
    """§17.2.1: the 200 ms after which an INVITE server transaction sends 100 Trying itself."""


#: Inputs that come from the TU; the others come from the wire, the transport or the clock.
LOCAL_INPUTS = frozenset({Input.SEND_1XX, Input.SEND_2XX, Input.SEND_FINAL})

#: Timers A, E and G: the current retransmit interval, on unreliable transports only.
_RETRANSMIT_TIMERS = frozenset({Input.TIMER_A, Input.TIMER_E, Input.TIMER_G})

#: The timers that only hold a finished transaction until it ends (fixed durations, see LingerQueues).
LINGER_TIMERS = frozenset({Input.TIMER_D, Input.TIMER_I, Input.TIMER_J, Input.TIMER_K, Input.TIMER_L, Input.TIMER_M})

#: Every other timer's value, from the settings and whether the transport is reliable.
_TIMER_VALUES: Mapping[Input, Callable[[TimerSettings, bool], float]] = {
    Input.TIMER_B: lambda s, reliable: s.b(),
    Input.TIMER_D: TimerSettings.d,
    Input.TIMER_F: lambda s, reliable: s.f(),
    Input.TIMER_H: lambda s, reliable: s.h(),
    Input.TIMER_I: TimerSettings.i,
    Input.TIMER_J: TimerSettings.j,
    Input.TIMER_K: TimerSettings.k,
    Input.TIMER_L: lambda s, reliable: s.l(),
    Input.TIMER_M: lambda s, reliable: s.m(),
    Input.TIMER_TRYING: lambda s, reliable: s.trying_delay,
}

Action = Callable[[Any, Any], object]
Transition = tuple[Action | None, State]


@dataclass(frozen=True, slots=True)
class Environment:
    """What a transaction needs from its layer: time, the transport, and the layer's bookkeeping."""

    clock: Clock
    transport: Transport
    settings: TimerSettings
    terminated: Callable[[Machine], None]
    """Called once when the transaction enters Terminated: remove it from the table."""
    defer: Callable[..., None]
    """``defer(f, *args)``: call ``f`` soon, from the clock (keeps callbacks out of ``send_request``)."""
    add_ack_key: Callable[[Machine, tuple[Any, ...]], None] = lambda tx, key: None
    """Server side: index an RFC 2543 INVITE transaction by the key its ACK will have."""
    server_timed_out: Callable[[Machine], None] = lambda tx: None
    """Server side: Timer H fired, no ACK came (§17.2.1: inform the TU)."""
    lingering: LingerQueues | None = None
    """Where the timers of finished transactions (:data:`LINGER_TIMERS`) run; ``None``: on ``clock``."""


class Machine:
    """A transaction state machine driven by its ``TRANSITIONS`` table (see the module docstring)."""

    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], Transition]]
    TIMERS: ClassVar[Mapping[State, tuple[Input, ...]]]
    INITIAL: ClassVar[State]
    CAPPED: ClassVar[bool] = True
    """Whether the retransmit interval doubles up to T2 (E, G) or without cap (A)."""

    method: str
    reliable: bool

    def __init__(self, env: Environment, reliable: bool) -> None:
        self.env = env
        self.reliable = reliable
        self.state: State = self.INITIAL
        self._timers: dict[Input, DelayedCall] = {}
        self._interval = env.settings.t1
        """The current retransmit interval of Timer A, E or G."""

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    # -- the table walker ------------------------------------------------

    def _dispatch(self, event: Input, arg: object = None) -> object:
        transition = self.TRANSITIONS.get((self.state, event))
        if transition is None:
            if event in LOCAL_INPUTS:
                name = type(self).__name__
                raise TransactionError(f"{self.method} {name}: {event.value} not allowed in {self.state}")
            return None
        action, target = transition
        if target is not self.state:
            self._enter(target)
        if action is None:
            return None
        return action(self, arg)

    def _enter(self, target: State) -> None:
        self.state = target
        running = self.TIMERS.get(target, ())
        for timer in [t for t in self._timers if t not in running]:
            self._timers.pop(timer).cancel()
        if target is State.TERMINATED:
            self.env.terminated(self)
            return
        for timer in running:
            if self.state is not target:
                break
            self._start_timer(timer)

    def _shutdown(self) -> None:
        """Terminate without telling anyone and without touching the layer (``TransactionLayer.close``)."""
        self.state = State.TERMINATED
        for call in self._timers.values():
            call.cancel()
        self._timers.clear()

    # -- timers -----------------------------------------------------------

    def _timer_value(self, timer: Input) -> float | None:
        """The timer's duration now; ``None``: not used on this transport (RFC 3261 Table 4, RFC 6026)."""
        if timer in _RETRANSMIT_TIMERS:
            return None if self.reliable else self._interval
        return _TIMER_VALUES[timer](self.env.settings, self.reliable)

    def _start_timer(self, timer: Input) -> None:
        """Start ``timer`` if it runs in the current state and is not running; zero fires at once."""
        if timer not in self.TIMERS.get(self.state, ()) or timer in self._timers:
            return
        delay = self._timer_value(timer)
        if delay is None:
            return
        if delay <= 0:
            self._dispatch(timer)
            return
        lingering = self.env.lingering
        if lingering is not None and timer in LINGER_TIMERS:
            self._timers[timer] = lingering.call_later(delay, self._fire, timer)
        else:
            self._timers[timer] = self.env.clock.callLater(delay, self._fire, timer)

    def _cancel_timer(self, timer: Input) -> None:
        call = self._timers.pop(timer, None)
        if call is not None:
            call.cancel()

    def _fire(self, timer: Input) -> None:
        self._timers.pop(timer, None)
        self._dispatch(timer)

    def _restart_retransmit_timer(self, timer: Input, interval: float | None = None) -> None:
        """Set the next retransmit interval (doubled, capped at T2 for E and G) and re-arm ``timer``."""
        self._interval = (
            interval if interval is not None else self.env.settings.next_interval(self._interval, cap=self.CAPPED)
        )
        self._start_timer(timer)
