"""RFC 3261 §17 transactions (with the RFC 6026 Accepted states), free of I/O and of Twisted.

Time comes only through an injected clock (``seconds``, ``callLater``);
messages go out only through an injected :class:`Transport`.

- ``timers.py``: T1, T2, T4 and Timers A-M (:class:`TimerSettings`)
- ``keys.py``: matching rules §17.1.3, §17.2.3 (with the RFC 2543 fallback) and §9.2 as dict keys
- ``machine.py``: states, inputs and the table walker shared by the four machines
- ``server.py``, ``client.py``: the four state machines as tables
- ``builders.py``: CANCEL (§9.1) and ACK for a non-2xx (§17.1.1.3)
- ``layer.py``: :class:`TransactionLayer`, the tables of transactions
- ``sink.py``: :class:`TransactionSink`, the layer as the transport's message sink
- ``testing.py``: a recording Transport, TU and owner, and ``make_request``, for tests of code above the layer
"""

from sipproxy.transaction.builders import build_ack, build_cancel
from sipproxy.transaction.client import NO_USER, ClientTransaction, InviteClientTransaction, NonInviteClientTransaction
from sipproxy.transaction.interfaces import (
    RELIABLE_TRANSPORTS,
    ClientTransactionUser,
    Source,
    Target,
    TransactionError,
    TransactionUser,
    Transport,
    is_reliable,
)
from sipproxy.transaction.layer import TransactionLayer
from sipproxy.transaction.machine import Input, State
from sipproxy.transaction.server import InviteServerTransaction, NonInviteServerTransaction, ServerTransaction
from sipproxy.transaction.sink import TransactionSink
from sipproxy.transaction.timers import Clock, DelayedCall, TimerSettings

__all__ = [
    "NO_USER",
    "RELIABLE_TRANSPORTS",
    "ClientTransaction",
    "ClientTransactionUser",
    "Clock",
    "DelayedCall",
    "Input",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "ServerTransaction",
    "Source",
    "State",
    "Target",
    "TimerSettings",
    "TransactionError",
    "TransactionLayer",
    "TransactionSink",
    "TransactionUser",
    "Transport",
    "build_ack",
    "build_cancel",
    "is_reliable",
]
