# -*- test-case-name: tests.test_calls_record -*-
"""The call log: one info line per finished call (a :data:`~sipproxy.calls.record.CallObserver`).

A 401/407 the proxy sent itself before any branch (its digest challenge,
``--users``) is written at debug level: every authenticated call starts
with one, and the call that follows it, with credentials, has its own line.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel

from sipproxy.calls.record import CALL_FORMAT, CallRecord, call_fields

__all__ = ["CallLog"]


class CallLog:
    """Writes :data:`~sipproxy.calls.record.CALL_FORMAT` for every record it is given."""

    def __init__(self, log: Logger | None = None) -> None:
        self.log = log if log is not None else Logger(namespace="sipproxy.calls")

    def __call__(self, record: CallRecord) -> None:
        challenge = record.status in (401, 407) and not record.branches
        self.log.emit(LogLevel.debug if challenge else LogLevel.info, CALL_FORMAT, **call_fields(record))
