"""The SIP trace: every message in and out.

Off by default (formatting every packet costs throughput); ``--log-sip``
writes it at info level, ``--debug`` at debug level.  ``copy`` sees every
message at the same point, log or no log (``--hep``:
:class:`~sipproxy.transport.hep.HepSender`).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger, LogLevel

__all__ = ["Copy", "WireLog"]

Copy = Callable[[bool, str, str, int, bytes], None]
"""(outgoing, transport, peer host, peer port, bytes): one message as it crosses the socket; must not raise."""


class WireLog:
    log = Logger(namespace="sipproxy.wire")

    def __init__(self, level: LogLevel | None = None, copy: Copy | None = None) -> None:
        self.level = level
        self.copy = copy

    @property
    def enabled(self) -> bool:
        return self.level is not None

    def incoming(self, transport: str, host: str, port: int, data: bytes) -> None:
        if self.copy is not None:
            self.copy(False, transport, host, port, data)
        if self.level is not None:
            self.log.emit(
                self.level,
                "SIP in {transport} from {host}:{port} ({size} bytes)\n{text()}",
                transport=transport,
                host=host,
                port=port,
                size=len(data),
                text=lambda: data.decode("utf-8", "replace"),
            )

    def outgoing(self, transport: str, host: str, port: int, data: bytes) -> None:
        if self.copy is not None:
            self.copy(True, transport, host, port, data)
        if self.level is not None:
            self.log.emit(
                self.level,
                "SIP out {transport} to {host}:{port} ({size} bytes)\n{text()}",
                transport=transport,
                host=host,
                port=port,
                size=len(data),
                text=lambda: data.decode("utf-8", "replace"),
            )
