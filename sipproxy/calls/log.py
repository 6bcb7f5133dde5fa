# -*- test-case-name: tests.test_calls_record -*-
"""The call log: one info line per finished call (a :data:`~sipproxy.calls.record.CallObserver`)."""

from __future__ import annotations

from twisted.logger import Logger

from sipproxy.calls.record import CALL_FORMAT, CallRecord, call_fields

__all__ = ["CallLog"]


class CallLog:
    """Writes :data:`~sipproxy.calls.record.CALL_FORMAT` at info level for every record it is given."""

    def __init__(self, log: Logger | None = None) -> None:
        self.log = log if log is not None else Logger(namespace="sipproxy.calls")

    def __call__(self, record: CallRecord) -> None:
        self.log.info(CALL_FORMAT, **call_fields(record))
