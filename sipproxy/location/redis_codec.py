# -*- test-case-name: tests.test_location_redis_codec -*-
"""Bindings and change-feed states as the Redis store writes them: ASCII JSON, lossless.

A binding is a JSON array, ``expires_at`` first (the one field the Lua
scripts read), then the other fields of :class:`Binding` in their order,
then the id of the node that wrote it (the node holding the phone's
connection, for bindings on TCP, TLS or WS flows), then ``via``: for such
a binding, the Path URI (with the flow's RFC 5626 token) through which the
other nodes reach it, "" for the others. ``ensure_ascii`` keeps
every value ASCII, so values that are not valid UTF-8 (carried as
surrogate escapes, as ``rows.py`` does for SQLite) survive, and the
scripts can splice values into a state without re-encoding them.

A state (``redis_scripts``) is what one AOR holds after one change: its
change number, the events of the change and every binding left.

Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from sipproxy.location.binding import Binding
from sipproxy.location.interface import BindingEvent, EventKind, Reason

__all__ = ["State", "decode", "encode", "events_json", "expiry_token", "field", "parse_state", "parse_states"]

_KINDS: frozenset[str] = frozenset({"added", "refreshed", "removed", "expired"})
_REASONS: frozenset[str] = frozenset(
    {"registered", "refreshed", "replaced", "unregistered", "expired", "web", "removed", "reloaded"}
)


_JSON = json.JSONEncoder(separators=(",", ":"))
"""One encoder: ``json.dumps`` with ``separators`` builds a new one per call (a third of a REGISTER's encoding)."""
dumps = _JSON.encode


def encode(binding: Binding, node: str, via: str = "") -> str:
    """The stored value of ``binding``, written by ``node``; ``via``: the Path URI other nodes reach it through."""
    return dumps(
        [
            binding.expires_at,
            binding.aor,
            binding.contact,
            binding.call_id,
            binding.cseq,
            binding.q,
            binding.transport,
            binding.source_host,
            binding.source_port,
            list(binding.path),
            binding.user_agent,
            binding.instance,
            binding.reg_id,
            binding.registered_at,
            binding.refreshed_at,
            node,
            via,
        ]
    )


def decode(row: list[object]) -> tuple[Binding, str, str]:
    """The binding an :func:`encode` value (already parsed) holds, the node that wrote it, and its ``via``."""
    (
        expires_at,
        aor,
        contact,
        call_id,
        cseq,
        q,
        transport,
        host,
        port,
        path,
        agent,
        instance,
        reg_id,
        reg,
        ref,
        node,
    ) = row[:16]
    binding = Binding(
        aor=aor,  # type: ignore[arg-type]
        contact=contact,  # type: ignore[arg-type]
        call_id=call_id,  # type: ignore[arg-type]
        cseq=cseq,  # type: ignore[arg-type]
        expires_at=float(expires_at),  # type: ignore[arg-type]
        q=float(q),  # type: ignore[arg-type]
        transport=transport,  # type: ignore[arg-type]
        source_host=host,  # type: ignore[arg-type]
        source_port=port,  # type: ignore[arg-type]
        path=tuple(path),  # type: ignore[arg-type]
        user_agent=agent,  # type: ignore[arg-type]
        instance=instance,  # type: ignore[arg-type]
        reg_id=reg_id,  # type: ignore[arg-type]
        registered_at=float(reg),  # type: ignore[arg-type]
        refreshed_at=float(ref),  # type: ignore[arg-type]
    )
    return binding, str(node), str(row[16]) if len(row) > 16 else ""


def expiry_token(binding: Binding | None) -> str:
    """What the scripts compare a stored value against: its ``expires_at`` as written, or "" for none."""
    return "" if binding is None else repr(binding.expires_at)  # what json writes for a float


def field(text: str) -> bytes:
    """``text`` (an AOR or contact) as a Redis key or hash field: UTF-8, surrogate escapes back to their bytes."""
    return text.encode("utf-8", "surrogateescape")


def events_json(events: list[BindingEvent], node: str) -> str:
    """The events of a change as a state carries them: ``[kind, reason, binding]`` each."""
    # kinds and reasons are plain ASCII words: nothing to escape
    return "[" + ",".join(f'["{e.kind}","{e.reason}",{encode(e.binding, node)}]' for e in events) + "]"


class State(NamedTuple):
    """One AOR after one change, as Redis holds it."""

    ok: bool
    """False: the change was refused (another node changed a contact first) and this is what the AOR holds."""
    node: str
    """The node that made the change."""
    seq: int
    """The change number (Redis's counter, one order for every AOR)."""
    aor: str
    events: list[BindingEvent]
    bindings: list[tuple[Binding, str, str]]
    """Every binding the AOR holds, with the node that wrote it and its ``via``."""


def _text(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "surrogateescape")


def parse_state(data: bytes | str) -> State:
    """A state as ``UPDATE`` and ``REAP`` publish it; ``ValueError``, ``KeyError`` or ``TypeError`` if not one."""
    raw = json.loads(_text(data))
    events = []
    for kind, reason, row in raw["e"]:
        if kind not in _KINDS or reason not in _REASONS:
            raise ValueError(f"unknown event {kind!r}/{reason!r}")
        kind_: EventKind = kind
        reason_: Reason = reason
        events.append(BindingEvent(kind_, decode(row)[0], reason_))
    return State(bool(raw["ok"]), str(raw["n"]), int(raw["s"]), str(raw["a"]), events, [decode(r) for r in raw["b"]])


def parse_states(data: bytes | str) -> list[tuple[int, list[tuple[Binding, str, str]]]]:
    """A ``LOAD`` page: ``(seq, bindings)`` per AOR."""
    return [(int(s["s"]), [decode(r) for r in s["b"]]) for s in json.loads(_text(data))]
