# -*- test-case-name: tests.test_location_sqlite -*-
"""A :class:`Binding` as a row of the SQLite ``bindings`` table, and back.

Header values are text as the parser decoded them: UTF-8, with the bytes
that are not valid UTF-8 kept as surrogate escapes (``User-Agent:
Téléphone`` sent in Latin-1 arrives as ``"T\\udce9l\\udce9phone"``).
SQLite text must be valid UTF-8, so such a value is stored as a BLOB of the
bytes the phone sent, and read back into the same string: nothing is lost,
and nothing is refused.
"""

from __future__ import annotations

import json

from sipproxy.location.binding import Binding

__all__ = ["COLUMNS", "Row", "from_row", "key", "to_row"]

COLUMNS = (
    "aor",
    "contact",
    "call_id",
    "cseq",
    "expires_at",
    "q",
    "transport",
    "source_host",
    "source_port",
    "path",
    "user_agent",
    "instance",
    "reg_id",
    "registered_at",
    "refreshed_at",
)

_Text = str | bytes
"""A text column's value: text, or the raw bytes of a value that is not valid UTF-8."""

Row = tuple[_Text, _Text, _Text, int, float, float, str, str, int, str, _Text, _Text | None, int | None, float, float]


def _text(value: str) -> _Text:
    """``value`` as SQLite can store it: itself when it is valid UTF-8, else the bytes it escapes."""
    if value.isascii():  # nearly always: a flag check, no scan
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
    return value


def _str(value: _Text) -> str:
    """The inverse of :func:`_text`."""
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "surrogateescape")


def key(aor: str, contact: str) -> tuple[_Text, _Text]:
    return _text(aor), _text(contact)


def to_row(binding: Binding) -> Row:
    return (
        _text(binding.aor),
        _text(binding.contact),
        _text(binding.call_id),
        binding.cseq,
        binding.expires_at,
        binding.q,
        binding.transport,
        binding.source_host,
        binding.source_port,
        json.dumps(list(binding.path)) if binding.path else "[]",
        _text(binding.user_agent),
        None if binding.instance is None else _text(binding.instance),
        binding.reg_id,
        binding.registered_at,
        binding.refreshed_at,
    )


def from_row(row: Row) -> Binding:
    instance = row[11]
    return Binding(
        aor=_str(row[0]),
        contact=_str(row[1]),
        call_id=_str(row[2]),
        cseq=row[3],
        expires_at=row[4],
        q=row[5],
        transport=row[6],
        source_host=row[7],
        source_port=row[8],
        path=tuple(json.loads(row[9])),
        user_agent=_str(row[10]),
        instance=None if instance is None else _str(instance),
        reg_id=row[12],
        registered_at=row[13],
        refreshed_at=row[14],
    )
