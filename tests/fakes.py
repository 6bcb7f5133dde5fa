"""Stand-ins for the sockets, shared by the in-process tests."""

from __future__ import annotations

from typing import Any


class FakeUDP:
    """A UDP port: records ``(datagram, address)`` instead of sending."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))


class Connector:
    """``connect_tcp`` that never connects: records where it was asked to."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int, layer: Any, timeout: float) -> None:
        self.attempts.append((host, port))
