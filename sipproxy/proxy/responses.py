# -*- test-case-name: tests.test_proxy_responses -*-
"""The response context (RFC 3261 §16.7): the target set, the best response, and CANCEL (§16.10).

One :class:`ResponseContext` per proxied request.  It owns the target set,
split into groups of equal q tried one after the other; the branches of a
group run in parallel.  Each :class:`~sipproxy.proxy.branch.Branch` is the
``ClientTransactionUser`` of the client transactions of one target
(§16.6 steps 8-11, §16.8, §16.9, RFC 3263 §4.3, in ``branch.py``).

Decisions made here, with their RFC basis:

- 100 is absorbed; every other provisional is forwarded while no final
  response has been sent (§16.7 step 5).
- Every 2xx is forwarded at once.  The first goes to the server transaction;
  later INVITE 2xx (other branches, RFC 6026 retransmissions, downstream
  forks) are sent statelessly (§16.7 step 10).  A 2xx closes the target set
  and cancels the other branches.
- A 3xx whose Contacts give new targets (within ``max_recursion``,
  ``max_branches``, never a URI twice) starts them at once as a new group
  and is then forgotten; otherwise it competes for the best response.
- A 6xx is forwarded at once and cancels the other branches.  (§16.7 step 5
  lets the proxy wait for the cancelled branches first; the result would be
  the same 6xx, only later.)
- When nothing is pending and no group is left, the best response goes out
  (§16.7 step 6): see :func:`choose_best`.
- A branch that got no provisional is never sent a CANCEL (§9.1): when the
  context cancels it, the context stops waiting for it, and the CANCEL goes
  out only if a provisional response turns up later.
- RFC 5393 §5.3: the request's ``Max-Breadth`` (60 when absent, at most
  ``max_breadth``) is shared among the branches running at the same time,
  each forwarded with its share; a group of parallel branches that does not
  fit in what is left is not started, and counts as a 440 (Max-Breadth
  Exceeded).  Sequential groups each get the whole of it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from sipproxy.message import Request, Response, SipURI, make_response
from sipproxy.net import Source
from sipproxy.proxy.branch import Branch, Environment
from sipproxy.proxy.targets import TargetURI, redirect_targets, unique
from sipproxy.transaction import TransactionError

__all__ = ["DEFAULT_BREADTH", "Branch", "ResponseContext", "choose_best", "incoming_breadth", "strip_our_via"]

DEFAULT_BREADTH = 60
"""RFC 5393 §5.3: the Max-Breadth of a request that has none."""


def incoming_breadth(request: Request, limit: int = DEFAULT_BREADTH) -> int:
    """RFC 5393 §5.3: the request's Max-Breadth, 60 when absent, at most ``limit`` (the proxy refused a bad one)."""
    value = (request.get("max-breadth") or "").strip()
    return min(int(value), limit) if value.isdigit() else min(DEFAULT_BREADTH, limit)


#: §16.7 step 6: within 4xx, responses that help the caller resubmit are preferred, in this order.
_PREFERRED_4XX = (415, 420, 484)


def strip_our_via(response: Response) -> Response:
    """§16.7 step 3: a copy of ``response`` without its topmost Via (ours); every other line untouched."""
    out = response.copy()
    out.pop_first("via")
    return out


def choose_best(responses: Sequence[Response], request: Request, to_tag: str, cancelled: bool = False) -> Response:
    """§16.7 step 6: the response to send when every branch is done and no 2xx was forwarded.

    - A 6xx if there is one.
    - After the caller's CANCEL (§16.10): a callee's 487 if one came back,
      else a 487 of our own.
    - No response at all: 408 (every branch timed out or was given up).
    - Otherwise the lowest class among 4xx and 5xx, a 3xx only when there is
      nothing else (a 3xx still here has contacts we already tried or were
      not allowed to follow, so the caller is better served by the failure).
    - 4xx: a 401/407 collects the WWW-Authenticate and Proxy-Authenticate
      values of every other 401/407; else 415, 420, 484; else the first.
    - 5xx: the first that is not 503; a 503 is turned into 500 (a 503 would
      tell the caller that *we* are unavailable).
    """
    for response in responses:
        if response.status >= 600:
            return response
    if cancelled:
        for response in responses:
            if response.status == 487:
                return response
        return make_response(request, 487, to_tag=to_tag)
    if not responses:
        return make_response(request, 408, to_tag=to_tag)
    classes = {r.status // 100 for r in responses}
    failures = classes - {3}
    chosen_class = min(failures) if failures else 3
    candidates = [r for r in responses if r.status // 100 == chosen_class]
    if chosen_class == 4:
        return _best_4xx(candidates)
    if chosen_class == 5:
        for response in candidates:
            if response.status != 503:
                return response
        return make_response(request, 500, to_tag=to_tag)
    return candidates[0]


def _best_4xx(candidates: list[Response]) -> Response:
    challenges = [r for r in candidates if r.status in (401, 407)]
    if challenges:
        chosen = challenges[0].copy()
        for other in challenges[1:]:
            for name in ("WWW-Authenticate", "Proxy-Authenticate"):
                for value in other.get_all(name):
                    chosen.add(name, value)
        return chosen
    for status in _PREFERRED_4XX:
        for response in candidates:
            if response.status == status:
                return response
    return candidates[0]


class ResponseContext:
    """§16.7: the target set, the branches, the responses collected, and the final response we send."""

    def __init__(
        self,
        env: Environment,
        request: Request,
        source: Source,
        stx: Any,
        loop: str,
        groups: Sequence[Sequence[TargetURI]],
        record_route: bool,
        to_tag: str,
    ) -> None:
        self.env = env
        self.request = request
        """The request after §16.4: what every branch copies."""
        self.source = source
        self.stx = stx
        self.loop = loop
        self.record_route = record_route
        self.to_tag = to_tag
        self.is_invite = request.method == "INVITE"
        self.groups: deque[list[TargetURI]] = deque(list(g) for g in groups)
        self.tried: list[SipURI] = []
        self.branches: list[Branch] = []
        self.responses: list[Response] = []
        """Final responses kept for §16.7 step 6, our Via already removed."""
        self.final: Response | None = None
        """What we sent on the server transaction."""
        self.closed = False
        """No new branches (a 2xx or 6xx arrived, a final was sent, or the caller cancelled)."""
        self.cancelled = False
        """The caller sent CANCEL (§16.10)."""
        self._advancing = False
        self._again = False
        self.breadth = incoming_breadth(request, env.settings.max_breadth)
        """RFC 5393 §5.3: the concurrent branches this request may have, all together."""
        self.started = env.clock.seconds()
        """When the request reached the proxy, for the call record."""

    def __repr__(self) -> str:
        return f"<ResponseContext {self.request.method} {self.request.uri_text} branches={len(self.branches)}>"

    def start(self) -> None:
        self._advance()

    # -- events from branches ------------------------------------------

    def on_provisional(self, branch: Branch, response: Response) -> None:
        """§16.7 step 5: forward any provisional but 100 while no final was sent."""
        if response.status == 100 or self.final is not None:
            return
        self._respond(strip_our_via(response))

    def on_final(self, branch: Branch, response: Response) -> None:
        """§16.7 steps 3-10 for a final response of ``branch``."""
        forwarded = strip_our_via(response)
        status = response.status
        if 200 <= status < 300:
            if self.final is None:
                self._send_final(forwarded)
            elif self.is_invite:
                self.env.send_stateless(forwarded, None)  # §16.7 step 10: every INVITE 2xx reaches the caller
            branch.settled = True
            self._close()
            self._advance()
            return
        if branch.settled:
            return  # a late answer from a branch we stopped waiting for
        branch.settled = True
        if 300 <= status < 400 and self._recurse(branch, forwarded):
            self._advance()
            return
        self.responses.append(forwarded)
        if status >= 600:
            if self.final is None:
                self._send_final(forwarded)
            self._close()
        self._advance()

    def on_failure(self, branch: Branch, status: int, reason: str) -> None:
        """§16.8/§16.9: a timeout (408) or transport error (503) of ``branch``, as if it had answered so."""
        if branch.settled:
            return
        branch.settled = True
        branch.failure = (status, reason)
        if not branch.why:
            branch.why = "no answer" if status == 408 else reason
        self.responses.append(make_response(self.request, status, reason, to_tag=self.to_tag))
        self._advance()

    # -- §16.10 CANCEL ---------------------------------------------------

    def cancel(self) -> None:
        """The caller cancelled: no new branches, every pending one is cancelled, 487 unless a 2xx/6xx beats it."""
        self.cancelled = True
        self._close()
        self._advance()

    # -- internals ---------------------------------------------------------

    def _close(self) -> None:
        """No new branches, and cancel the pending ones (§16.7 step 10, §16.10)."""
        self.closed = True
        self.groups.clear()
        for branch in list(self.branches):
            branch.cancel()

    def _recurse(self, branch: Branch, response: Response) -> bool:
        """§16.5/§16.7 step 4: add a 3xx's Contacts to the target set; True if any was started."""
        if self.closed or branch.target.depth >= self.env.settings.max_recursion:
            return False
        found = self.env.expand(redirect_targets(response, branch.target.depth + 1))
        return self._start_group(found) > 0

    def _start_group(self, targets: Sequence[TargetURI]) -> int:
        """Start one branch per new target, within ``max_branches``; return how many were started."""
        budget = self.env.settings.max_branches - len(self.branches)
        fresh = unique(targets, self.tried)[: max(budget, 0)]
        if not fresh:
            return 0
        available = self.breadth - sum(b.breadth for b in self.branches if not b.settled)
        share, extra = divmod(available, len(fresh))
        if share < 1:  # RFC 5393 §5.3: not enough breadth left to fork to all of them in parallel
            self.responses.append(make_response(self.request, 440, "Max-Breadth Exceeded", to_tag=self.to_tag))
            return 0
        new = []
        for index, target in enumerate(fresh):
            self.tried.append(target.uri)
            branch = Branch(self, target, share + (1 if index < extra else 0))
            self.branches.append(branch)
            new.append(branch)
        for branch in new:
            branch.start()
        return len(new)

    def _advance(self) -> None:
        """Start the next group when no branch is pending; send the best response when no group is left."""
        if self._advancing:
            self._again = True  # re-entered from a branch that settled while starting: loop once more
            return
        self._advancing = True
        try:
            while True:
                self._again = False
                self._step()
                if not self._again:
                    break
        finally:
            self._advancing = False

    def _step(self) -> None:
        if self.final is not None:
            return
        if any(not b.settled for b in self.branches):
            return
        if not self.closed and self.groups:
            if self._start_group(self.groups.popleft()) == 0:
                self._again = True  # nothing new in that group: try the next one
            elif all(b.settled for b in self.branches):
                self._again = True
            return
        self._send_final(choose_best(self.responses, self.request, self.to_tag, self.cancelled))

    def branch_over(self) -> None:
        """A branch's transaction ended: once the final is sent and every branch is over, let go of the branches.

        Each branch holds its context (for the late 2xx it forwards); the
        context letting go of them leaves no cycle, so reference counting
        frees the context, its branches and their transactions as soon as
        the last of them ends, not at the next full garbage collection.
        """
        if self.final is not None and all(branch.over for branch in self.branches):
            self.branches = []

    def _send_final(self, response: Response) -> None:
        """Send the one final response of the server transaction; the context's work is then done."""
        self.final = response
        self._respond(response)
        self._close()
        self.env.release(self)
        if self.env.finished is not None:
            self.env.finished(self, response)

    def _respond(self, response: Response) -> None:
        try:
            self.stx.respond(response)
        except TransactionError as error:
            self.env.log.warn(
                "Could not forward {status} to the caller: {error}", status=response.status, error=str(error)
            )
