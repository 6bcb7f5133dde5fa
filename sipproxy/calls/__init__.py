"""The operator's window on calls: finished-call records, the call log line, the recent calls and their ladders.

- :mod:`~sipproxy.calls.record`: :class:`CallRecord` (a pure value the proxy builds), the call log format
- :mod:`~sipproxy.calls.log`: :class:`CallLog`, the info line per call
"""

from sipproxy.calls.record import CALL_FORMAT, BranchRecord, CallObserver, CallRecord, call_fields, call_line

__all__ = ["CALL_FORMAT", "BranchRecord", "CallObserver", "CallRecord", "call_fields", "call_line"]
