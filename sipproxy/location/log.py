# -*- test-case-name: tests.test_location_log -*-
"""The operator's log of the location service: one info line per registration change, saying why."""

from __future__ import annotations

from twisted.logger import Logger

from sipproxy.location.interface import BindingEvent, Reason
from sipproxy.net import Clock

__all__ = ["BindingLog", "WHY"]

WHY: dict[Reason, str] = {
    "registered": "registered",
    "refreshed": "refreshed",
    "replaced": "replaced by the phone's new registration",
    "unregistered": "unregistered by the phone",
    "expired": "not refreshed in time",
    "web": "removed through the web page/API",
    "removed": "removed",
    "reloaded": "back to what the database holds: the last commit failed",
    "flow-lost": "the connection it registered on is gone (RFC 5626 flow)",
}
"""How the log says each :data:`~sipproxy.location.interface.Reason`."""


class BindingLog:
    """Logs the location service's changes: registrations, removals and expiries at info, each with its reason.

    Refreshes (most REGISTERs) are logged at debug, and only with ``--debug``:
    emitting an event per refresh costs throughput even when it is filtered.
    So is a refresh under a new Call-ID (§10.3 step 7 updates the binding):
    where the phone is reached has not changed, and although §10.2.4 has a
    UA keep its Call-ID until it restarts, some take a new one for every
    refresh (sipp's register scenario does), which at info level was a line
    per REGISTER and cost 40 % of the REGISTER rate.
    """

    log = Logger(namespace="sipproxy.location")

    def __init__(self, clock: Clock, refreshes: bool = False) -> None:
        self.clock = clock
        self.refreshes = refreshes

    def __call__(self, event: BindingEvent) -> None:
        b, kind, reason = event.binding, event.kind, event.reason
        if kind == "added" and reason == "registered":
            self.log.info(
                "Registered {aor} -> {contact} for {expires} s from {source}",
                aor=b.aor,
                contact=b.contact,
                expires=b.expires_in(self.clock.seconds()),
                source=b.source(),
            )
        elif kind == "refreshed" and reason == "refreshed":
            if self.refreshes:
                self.log.debug(
                    "Refreshed {aor} -> {contact} for {expires} s",
                    aor=b.aor,
                    contact=b.contact,
                    expires=b.expires_in(self.clock.seconds()),
                )
        elif kind == "refreshed" and reason == "replaced":
            if self.refreshes:
                self.log.debug(
                    "Refreshed {aor} -> {contact} for {expires} s from {source} under a new Call-ID",
                    aor=b.aor,
                    contact=b.contact,
                    expires=b.expires_in(self.clock.seconds()),
                    source=b.source(),
                    reason=reason,
                )
        else:
            self.log.info(
                "Binding {kind}: {aor} -> {contact} ({why})",
                kind=kind,
                aor=b.aor,
                contact=b.contact,
                reason=reason,
                why=WHY[reason],
            )
