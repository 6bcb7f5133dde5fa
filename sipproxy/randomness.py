"""Random tokens for Via branches and tags, from the operating system's CSPRNG, read in blocks.

``secrets.token_hex`` costs a system call per token; a proxy makes two or
three tokens per request.  The bytes are the same ``os.urandom`` bytes, read
4 KiB at a time and never handed out twice (a forked child starts afresh).
"""

from __future__ import annotations

import os

__all__ = ["random_bytes", "random_hex"]

_BLOCK = 4096

_buffer = b""
_offset = 0


def random_bytes(n: int) -> bytes:
    """``n`` bytes from ``os.urandom``."""
    global _buffer, _offset
    end = _offset + n
    if end > len(_buffer):
        _buffer, _offset, end = os.urandom(max(_BLOCK, n)), 0, n
    chunk = _buffer[_offset:end]
    _offset = end
    return chunk


def random_hex(n: int) -> str:
    """``n`` random bytes as ``2 * n`` lower-case hex digits (like ``secrets.token_hex(n)``)."""
    return random_bytes(n).hex()


def _forget() -> None:
    global _buffer, _offset
    _buffer, _offset = b"", 0


os.register_at_fork(after_in_child=_forget)
