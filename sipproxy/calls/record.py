# -*- test-case-name: tests.test_calls_record -*-
"""What the proxy tells the operator about one finished request: a pure value, and its one log line.

The proxy (RFC 3261 §16) builds a :class:`CallRecord` when a response
context sends its final response (§16.7 step 6 or a forwarded 2xx/6xx),
or when it answers a request itself (§16.3 validation, the §16.3 step 6
``authorize`` hook, an empty target set in §16.5), and hands it to the
:data:`CallObserver` it was given.  Nothing here knows about the proxy,
the log or the web: whoever observes decides what to do with the value.

The log line (:func:`call_line`), for example (one line each)::

    Call sip:alice@example.test -> sip:bob@example.test: 200 after 2.1 s, 2 branches,
        answered by sip:bob@192.0.2.7:5062 (UDP)
    Call sip:alice@example.test -> sip:carol@example.test: 480 Temporarily Unavailable after 0.0 s,
        no branches: no binding for sip:carol@example.test
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CALL_FORMAT",
    "BranchRecord",
    "CallObserver",
    "CallRecord",
    "call_fields",
    "call_line",
]


@dataclass(frozen=True, slots=True)
class BranchRecord:
    """One branch of the response context (§16.6): where it went and how it ended."""

    target: str
    """The branch's Request-URI (a registered contact, or the Request-URI as received)."""
    aor: str | None = None
    """The address-of-record the target was registered under, if it came from the location service."""
    transport: str = ""
    host: str = ""
    port: int = 0
    """The address the last attempt was sent to (blank when none was: DNS, a flow gone before sending)."""
    status: int | None = None
    """Its final response, received or synthesized (408 timeout, 503 transport error, §16.8/§16.9); None: none."""
    reason: str = ""
    why: str = ""
    """Why it failed when no response came from the far end (``no answer``, ``DNS: ...``, ``flow gone ...``)."""
    cancelled: bool = False
    """The proxy cancelled it (a 2xx or 6xx elsewhere, or the caller's CANCEL, §16.10)."""

    @property
    def outcome(self) -> str:
        if self.status is not None and 200 <= self.status < 300:
            return "answered"
        if self.cancelled and (self.status is None or self.status == 487):
            return "cancelled"
        if self.status is None:
            return "pending"
        return "failed"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One finished request as the proxy saw it: who, when, the outcome, how long it took, and its branches."""

    method: str
    call_id: str
    caller: str
    """The From URI."""
    callee: str
    """The Request-URI as received."""
    source: str
    """Where the request came from: ``UDP 192.0.2.7:5060``."""
    started: float
    """When the request reached the proxy (clock seconds, Unix time in production)."""
    finished: float
    """When the final response went back."""
    status: int
    reason: str
    why: str = ""
    """Empty for a 2xx; otherwise what went wrong in the operator's words."""
    branches: tuple[BranchRecord, ...] = ()
    answered_by: int | None = None
    """The index in ``branches`` of the branch whose 2xx was sent to the caller."""
    in_dialog: bool = False
    """The request carried a To tag (a re-INVITE)."""

    @property
    def setup(self) -> float:
        """Seconds from the request to its final response."""
        return max(0.0, self.finished - self.started)

    @property
    def answered(self) -> BranchRecord | None:
        return self.branches[self.answered_by] if self.answered_by is not None else None

    @property
    def aors(self) -> frozenset[str]:
        """Every address this call is about (for filtering): caller, callee, the branches' AORs and targets."""
        names = {self.caller, self.callee}
        for branch in self.branches:
            names.add(branch.target)
            if branch.aor:
                names.add(branch.aor)
        return frozenset(names)


CallObserver = Callable[[CallRecord], None]
"""What the proxy calls with every finished call (``Proxy(on_call=...)``); it must not raise."""

CALL_FORMAT = "{kind} {caller} -> {callee}: {status}{reason} after {setup} s, {branch_count}{answered}{why}"
"""The call log line, as a ``twisted.logger`` format over :func:`call_fields`."""


def call_fields(record: CallRecord) -> dict[str, object]:
    """The fields of :data:`CALL_FORMAT` for ``record`` (besides ``call_id``, for whoever filters the log)."""
    if record.method == "INVITE":
        kind = "Re-INVITE" if record.in_dialog else "Call"
    else:
        kind = record.method
    count = len(record.branches)
    answered = record.answered
    success = 200 <= record.status < 300
    return {
        "kind": kind,
        "caller": record.caller,
        "callee": record.callee,
        "status": record.status,
        "reason": "" if success or not record.reason else f" {record.reason}",
        "setup": round(record.setup, 1),
        "branch_count": "no branches" if count == 0 else "1 branch" if count == 1 else f"{count} branches",
        "answered": f", answered by {answered.target} ({answered.transport})" if answered is not None else "",
        "why": f": {record.why}" if record.why else "",
        "call_id": record.call_id,
    }


def call_line(record: CallRecord) -> str:
    """The call log line of ``record`` as text (the page shows the same words)."""
    return CALL_FORMAT.format(**call_fields(record))
