# -*- test-case-name: tests.test_proxy_failover -*-
"""Failing over between a next hop's targets (RFC 3263 §4.3): the grey-list, Retry-After, and the words for the log.

:class:`GreyList`: targets put aside after a 503 with Retry-After or a
timeout (RFC 3261 §21.5.4), reSIProcate's grey-list.

One :class:`GreyList` per proxy, shared by every branch.  A target is one
(transport, address, port), never a domain: a server that answered 503
with ``Retry-After: 30`` is put aside for 30 s, one that did not answer at
all (Timer B/F) for 32 s, and in that time the branches of other calls try
the other targets of the same next hop first.  A target put aside is moved
to the end of the list, not removed: when every target of a domain is
aside they are still tried in their DNS order, so one failure never makes
a whole domain unreachable, and nothing is kept past its time.
"""

from __future__ import annotations

from collections.abc import Iterable

from sipproxy.message import Response
from sipproxy.net import Clock, Target

__all__ = ["MAX_ASIDE", "TIMEOUT_ASIDE", "GreyList", "Trail", "retry_after"]

TIMEOUT_ASIDE = 32.0
"""Seconds a target that timed out (Timer B/F, 64*T1) stays aside."""
MAX_ASIDE = 3600.0
"""The longest a Retry-After puts a target aside."""


class GreyList:
    """``put_aside(target, seconds)``, ``is_aside(target)``, and ``order(targets)``: the ones not aside first."""

    def __init__(self, clock: Clock, max_entries: int = 10000) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self._until: dict[Target, float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def put_aside(self, target: Target, seconds: float) -> None:
        now = self.clock.seconds()
        if len(self._until) >= self.max_entries:
            self._until = {t: until for t, until in self._until.items() if until > now}
            if len(self._until) >= self.max_entries:
                return  # full of live entries: the next failure is not remembered, nothing worse
        seconds = min(max(seconds, 0.0), MAX_ASIDE)
        self._until[target] = max(self._until.get(target, 0.0), now + seconds)

    def is_aside(self, target: Target) -> bool:
        until = self._until.get(target)
        if until is None:
            return False
        if until <= self.clock.seconds():
            del self._until[target]
            return False
        return True

    def order(self, targets: Iterable[Target]) -> list[Target]:
        """The targets in their order, those put aside moved to the end (still in their order)."""
        targets = list(targets)
        aside = [t for t in targets if self.is_aside(t)]
        return [t for t in targets if t not in aside] + aside


def retry_after(response: Response) -> int | None:
    """RFC 3261 §20.33: the seconds of a Retry-After (its comment and parameters ignored); ``None`` if absent or bad."""
    value = response.get("retry-after")
    if value is None:
        return None
    digits = value.strip().split(";", 1)[0].split("(", 1)[0].strip()
    return int(digits) if digits.isdigit() else None


class Trail:
    """What one branch tried, in words: the info line of a request that failed over.

    "INVITE sip:bob@other.example: SRV _sip._udp.other.example ->
    sip1.other.example:5060 503 (Retry-After 30), sip2.other.example:5060 -> 200"
    """

    def __init__(self) -> None:
        self.how = ""
        """How DNS found the targets ("SRV _sip._udp.example.com"), from a :class:`~sipproxy.net.Resolved` list."""
        self.names: dict[Target, str] = {}
        self.failed: list[str] = []

    def found(self, targets: list[Target]) -> None:
        self.how, self.names = getattr(targets, "how", ""), getattr(targets, "names", {})

    def label(self, hop: Target) -> str:
        """The target as DNS named it ("sip1.example.com:5060"), with its address when the name has several."""
        name = self.names.get(hop)
        if name is None:
            return f"[{hop.host}]:{hop.port}" if ":" in hop.host else f"{hop.host}:{hop.port}"
        if sum(1 for other in self.names.values() if other == name) > 1:
            return f"{name} ({hop.host})"
        return name

    def failed_at(self, hop: Target, outcome: str) -> None:
        self.failed.append(f"{self.label(hop)} {outcome}")

    def ending(self, hop: Target | None, outcome: str, current: bool) -> dict[str, str] | None:
        """The log fields once the branch is over; ``None`` when it did not fail over.

        ``current``: ``outcome`` is the current target's (a final response);
        otherwise that target's failure is already among the failed ones.
        """
        if not self.failed:
            return None
        end = f", {self.label(hop)} -> {outcome}" if current and hop is not None else f" -> {outcome}"
        fields = {"how": f"{self.how} -> " if self.how else "", "tried": ", ".join(self.failed), "ending": end}
        self.failed = []
        return fields
