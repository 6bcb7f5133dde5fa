"""Random tokens for branches and tags: os.urandom bytes, read in blocks, never handed out twice."""

from __future__ import annotations

import os
import re

from sipproxy.randomness import random_bytes, random_hex


def test_tokens_are_hex_of_the_asked_length_and_never_repeat() -> None:
    tokens = [random_hex(8) for _ in range(20_000)]  # several 4 KiB blocks
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in tokens)
    assert len(set(tokens)) == len(tokens)


def test_a_request_larger_than_what_is_left_gets_fresh_bytes() -> None:
    random_bytes(4090)
    assert len(random_bytes(100)) == 100
    assert len(random_bytes(10_000)) == 10_000


def test_a_forked_child_does_not_hand_out_its_parents_next_bytes() -> None:
    random_hex(4)  # the parent now holds a block
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, random_bytes(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != random_bytes(16)
