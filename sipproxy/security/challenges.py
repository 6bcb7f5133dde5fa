# -*- test-case-name: tests.test_security_challenges -*-
"""Which digest challenges a phone gets, in which order: RFC 8760 §2.3 and §2.4 with the phones that exist.

RFC 8760 §2.3 lets a UAS send one challenge per algorithm "in the order in
which it would prefer to see them used", and §2.4 has the UAC "use the
topmost header field that it supports, unless a local policy dictates
otherwise" (RFC 7616 §3.7 says the same for HTTP).  Real phones bend both
ends of that:

- sipsak 0.9.8 and sipp 3.6 read only the first ``WWW-Authenticate`` and
  know only MD5: with SHA-256 on top they give up at once, and they are
  one-shot tools that never come back;
- baresip 1.0 (libre 1.1, Debian 12) fails ("Function not implemented") on
  *any* SHA-256 challenge in the response, wherever it stands, and tries
  again without credentials 30-60 s later;
- pjsua2 2.15 follows §2.4 to the letter: the topmost challenge it
  supports, SHA-256 included.

So the order is the server's preference *for this phone*, learnt from what
the phone did.  A phone is a source (address and port, as a phone keeps its
port and its NAT binding) with a user name (the To user of a REGISTER, the
From user of a proxied request); a one-shot tool starts each run from a new
port and is a new phone each time:

- a phone we know nothing about gets the weakest algorithm alone (``MD5``
  with the default ``--digest-algorithms``): every SIP UA can do MD5
  (RFC 3261 §22.4), and with nothing else in the response even baresip
  1.0 registers at once;
- a phone that answered MD5 is offered the preference order (SHA-256
  first, MD5 after it) at its next *REGISTER* challenge, once -- the
  probe: a §2.4 UA that can do SHA-256 takes it then (pjsua2, at its
  first registration after the nonce went stale); one that answers MD5
  again gets MD5 first from then on.  Only a REGISTER probes: a phone
  that fails the probe loses one refresh, which it retries while its
  binding still holds, where a probe in a 407 would fail a call;
- a phone that answered the strongest gets it first from then on;
- a phone that comes back without credentials it could use -- none for
  our realm, or for an algorithm we do not take -- while a challenge to it
  is pending did not understand it: it gets MD5 alone from then on
  (baresip 1.0 after a failed probe), and the log says so once at info
  level; so does a phone that leaves ``unanswered_challenges`` challenges
  in a row unanswered (no password configured, usually).

RFC 8760 §3 warns that offering MD5 beside SHA-256 invites a downgrade by
an on-path attacker; that is so for every order.  ``--digest-algorithms
SHA-256`` offers SHA-256 alone, for deployments without MD5-only phones.
The challenge never depends on whether the user exists: a phone moves
from the first state only by what it sends.  Memory is bounded (least
recently seen phones are forgotten first) and lost on restart.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["ChallengePolicy", "Phone", "Unanswered"]


class Phone(NamedTuple):
    """Who is challenged: the source address and port, and the user name ("" if none)."""

    host: str
    port: int
    user: str


class Unanswered(NamedTuple):
    """A phone left a challenge unanswered: what it was offered, how often in a row, and what it gets now."""

    offered: tuple[str, ...]
    times: int
    now_offered: tuple[str, ...]


@dataclass
class _State:
    answered: str | None = None
    probed: bool = False
    weakest_alone: bool = False
    pending: tuple[str, ...] | None = None
    pending_at: float = 0.0
    unanswered: int = 0
    seen: float = 0.0


class ChallengePolicy:
    """The per-phone order of challenges (see the module docstring).

    ``algorithms`` are the configured ones, strongest first; ``pending_for``
    is how long an unanswered challenge counts as pending (the nonce
    lifetime); phones not seen for ``forget_after`` seconds start afresh.
    """

    def __init__(
        self,
        algorithms: tuple[str, ...],
        pending_for: float,
        *,
        unanswered_limit: int = 3,
        forget_after: float = 86_400.0,
        max_phones: int = 100_000,
    ) -> None:
        if not algorithms:
            raise ValueError("at least one algorithm")
        self.algorithms = algorithms
        self.strongest, self.weakest = algorithms[0], algorithms[-1]
        self.pending_for = pending_for
        self.unanswered_limit = unanswered_limit
        self.forget_after = forget_after
        self.max_phones = max_phones
        self._phones: OrderedDict[Phone, _State] = OrderedDict()

    def __len__(self) -> int:
        return len(self._phones)

    def offer(self, phone: Phone, now: float, *, probe: bool = True) -> tuple[str, ...]:
        """The algorithms to challenge ``phone`` with, in order; the challenge is pending from now.

        ``probe`` is whether this challenge may be the probe (a 401 to a
        REGISTER; not a 407, see the module docstring).
        """
        state = self._state(phone, now)
        order = self._order(state, probe)
        if state.answered == self.weakest and not state.probed and order[0] == self.strongest:
            state.probed = True
        state.pending, state.pending_at = order, now
        return order

    def answered(self, phone: Phone, algorithm: str | None, now: float, *, authenticated: bool) -> None:
        """``phone`` sent credentials with a nonce of ours (right or wrong): nothing is pending any more."""
        state = self._state(phone, now)
        state.pending, state.unanswered = None, 0
        if authenticated and algorithm in self.algorithms:
            state.answered = algorithm
            if algorithm != self.weakest:
                state.weakest_alone = False

    def came_back(self, phone: Phone, now: float) -> Unanswered | None:
        """``phone`` sent a request without usable credentials: did it leave a challenge unanswered?

        Returns what to log (once per phone and kind), else ``None``.
        """
        state = self._state(phone, now)
        offered = state.pending
        if offered is None or now - state.pending_at > self.pending_for:
            return None
        state.pending = None
        state.unanswered += 1
        if not state.weakest_alone and offered != (self.weakest,) and len(self.algorithms) > 1:
            state.weakest_alone = True
            return Unanswered(offered, state.unanswered, self._order(state))
        if state.unanswered == self.unanswered_limit:
            return Unanswered(offered, state.unanswered, self._order(state))
        return None

    def _order(self, state: _State, probe: bool = False) -> tuple[str, ...]:
        if len(self.algorithms) == 1:
            return self.algorithms
        if state.weakest_alone or state.answered is None:
            return (self.weakest,)
        if state.answered == self.weakest and state.probed:
            return (self.weakest, *(a for a in self.algorithms if a != self.weakest))
        if state.answered == self.weakest:
            return self.algorithms if probe else (self.weakest,)  # the probe: the preference order, once
        return (state.answered, *(a for a in self.algorithms if a != state.answered))

    def _state(self, phone: Phone, now: float) -> _State:
        state = self._phones.pop(phone, None)
        if state is None or now - state.seen > self.forget_after:
            state = _State()
        state.seen = now
        self._phones[phone] = state
        while len(self._phones) > self.max_phones:
            self._phones.popitem(last=False)
        return state
