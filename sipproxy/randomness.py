"""Tokens for Via branches and tags: random ones from the operating system's CSPRNG, read in blocks.

``secrets.token_hex`` costs a system call per token; a proxy makes two or
three tokens per request.  The bytes are the same ``os.urandom`` bytes, read
4 KiB at a time and never handed out twice (a forked child starts afresh).
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipproxy.message import Request

__all__ = ["random_bytes", "random_hex", "set_tag_key", "stable_tag"]

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


_TAG_KEY = os.urandom(32)
"""The key of :func:`stable_tag`: random per process until wiring sets one (:func:`set_tag_key`)."""


def set_tag_key(key: bytes) -> None:
    """Key :func:`stable_tag` (wiring passes one derived from the server secret, the same in every worker)."""
    global _TAG_KEY
    _TAG_KEY = hashlib.blake2b(key, digest_size=32, person=b"sipproxy-to-tag").digest()


def stable_tag(request: Request) -> str:
    """A To tag that is the same for every response about the request's Call-ID (a registration's 401 and 200 alike).

    A keyed BLAKE2b of the Call-ID, 64 bits as hex: unpredictable from
    outside, and the same in every worker process (with ``--workers``) and
    every node sharing a server secret, where Python's ``hash`` is keyed
    per process (``PYTHONHASHSEED``).
    """
    call_id = (request.get("call-id") or "").strip()
    digest = hashlib.blake2b(call_id.encode("utf-8", "surrogateescape"), digest_size=8, key=_TAG_KEY).digest()
    return digest.hex()


def _forget() -> None:
    global _buffer, _offset
    _buffer, _offset = b"", 0


os.register_at_fork(after_in_child=_forget)
