"""The SIP trace: every message in and out.

Off by default (formatting every packet costs throughput); ``--log-sip``
writes it at info level, ``--debug`` at debug level.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel

__all__ = ["WireLog"]


class WireLog:
    log = Logger(namespace="sipproxy.wire")

    def __init__(self, level: LogLevel | None = None) -> None:
        self.level = level

    @property
    def enabled(self) -> bool:
        return self.level is not None

    def incoming(self, transport: str, host: str, port: int, data: bytes) -> None:
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
