"""Tokens for Via branches and tags: random ones from the operating system's CSPRNG, read in blocks.

``secrets.token_hex`` costs a system call per token; a proxy makes two or
three tokens per request.  The bytes are the same ``os.urandom`` bytes, read
4 KiB at a time and never handed out twice (a forked child starts afresh).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipproxy.message import Request

__all__ = ["random_bytes", "random_hex", "stable_tag"]

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


def stable_tag(request: Request) -> str:
    """A To tag that is the same for every response about the request's Call-ID (a registration's 401 and 200 alike).

    Python's ``hash`` of a string is keyed per process (SipHash), so the tag
    cannot be predicted from outside; 64 bits of it, as hex.
    """
    call_id = request.get("call-id") or ""
    return format(hash(("to-tag", call_id.strip())) & 0xFFFFFFFFFFFFFFFF, "016x")


def _forget() -> None:
    global _buffer, _offset
    _buffer, _offset = b"", 0


os.register_at_fork(after_in_child=_forget)
