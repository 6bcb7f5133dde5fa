# -*- test-case-name: tests.test_web -*-
"""One Jinja2 environment for the web page, and the values it shows.

Templates live in the top-level ``templates/`` directory. ``setup.cfg`` ships
that directory inside the wheel as the package ``sipproxy.templates``, where
``PackageLoader("sipproxy", "templates")`` finds it; a development checkout or
an editable install has no such package, so the loader falls back to the
source tree.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from sipproxy.location import Binding

__all__ = [
    "EMPTY_BINDING",
    "SOURCE_TEMPLATES",
    "FlowState",
    "binding_json",
    "format_duration",
    "format_utc",
    "iso_utc",
    "make_environment",
    "make_loader",
    "readable",
]

SOURCE_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
"""``templates/`` of a source checkout (absent in an installed wheel)."""


EMPTY_BINDING: dict[str, Any] = {
    "aor": "",
    "contact": "",
    "expires_in": 0,
    "expires_at": "",
    "q": 1.0,
    "call_id": "",
    "cseq": 0,
    "user_agent": "",
    "source": "",
    "transport": "",
    "source_host": "",
    "source_port": 0,
    "path": [],
    "instance": None,
    "reg_id": None,
    "flow": None,
    "registered_at": "",
    "refreshed_at": "",
}
"""The shape of :func:`binding_json` with blank values: the page's row template for its script."""


def make_loader(source: Path = SOURCE_TEMPLATES) -> jinja2.BaseLoader:
    """The installed package's templates first, then ``source`` when it exists.

    ``PackageLoader`` raises ``ValueError`` at construction when ``sipproxy``
    has no ``templates`` directory, which is the case in a source checkout.
    """
    loaders: list[jinja2.BaseLoader] = []
    try:
        loaders.append(jinja2.PackageLoader("sipproxy", "templates"))
    except ValueError:
        pass
    if source.is_dir():
        loaders.append(jinja2.FileSystemLoader(str(source)))
    if not loaders:
        raise RuntimeError(f"no sipproxy templates: neither package sipproxy.templates nor {source} exists")
    return jinja2.ChoiceLoader(loaders)


def make_environment() -> jinja2.Environment:
    """The environment every page is rendered with: autoescaping on, strict undefined names."""
    env = jinja2.Environment(
        loader=make_loader(),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = format_duration
    env.filters["utc"] = format_utc
    return env


def iso_utc(when: float) -> str:
    """Clock seconds (Unix time) as ISO 8601 UTC to the second, e.g. ``"2024-05-01T12:34:56Z"``."""
    second = math.floor(when)
    if when - second >= 0.9999995:  # datetime rounds to the microsecond, possibly into the next second
        return datetime.fromtimestamp(when, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _iso_second(second)


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    # A busy registrar streams thousands of bindings a second to an open page,
    # three timestamps each, nearly all within the same few seconds.
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_utc(iso: str) -> str:
    """An :func:`iso_utc` string as the page shows it, e.g. ``"2024-05-01 12:34:56 UTC"``.

    ``bindings.js`` formats the same way.
    """
    return iso.replace("T", " ").replace("Z", " UTC")


def format_duration(seconds: int) -> str:
    """Seconds as the page shows them: ``"42 s"``, ``"5 min 07 s"``, ``"2 h 00 min 09 s"``.

    ``bindings.js`` formats the same way.
    """
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _byte_as_text(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:  # the five bytes Windows-1252 leaves undefined
        return "\ufffd"


_READABLE = {0xDC00 + byte: _byte_as_text(byte) for byte in range(0x80, 0x100)}
"""Surrogate escape (``U+DC80``..``U+DCFF``, one per byte) -> the byte read as Windows-1252."""


def readable(text: str) -> str:
    """Text a phone sent, as the page and the API show it.

    The parser keeps the bytes of a header that are not valid UTF-8 as
    surrogate escapes, which the store keeps as they are; here each one is
    read as Windows-1252 (Latin-1 with the printable 0x80..0x9F), what
    phones that do not send UTF-8 usually mean: ``User-Agent: Téléphone``
    sent in Latin-1 shows as ``Téléphone``. Valid text is returned as it is.
    """
    return text if text.isascii() else text.translate(_READABLE)


FlowState = Callable[[Binding], str | None]
"""A binding's flow (RFC 5626): ``"open"`` or ``"lost"`` on a connection, ``None`` on UDP (nothing to watch)."""


def binding_json(binding: Binding, now: float, flow: FlowState | None = None) -> dict[str, Any]:
    """One binding as the JSON API, the event stream and the page show it at ``now`` (text as :func:`readable`).

    ``transport`` is UDP, TCP, TLS, WS or WSS; ``flow`` the state of the
    connection it came on (``flow``: who knows it, the transport).
    """
    return {
        "aor": readable(binding.aor),
        "contact": readable(binding.contact),
        "expires_in": binding.expires_in(now),
        "expires_at": iso_utc(binding.expires_at),
        "q": binding.q,
        "call_id": readable(binding.call_id),
        "cseq": binding.cseq,
        "user_agent": readable(binding.user_agent),
        "source": binding.source(),
        "transport": binding.transport,
        "source_host": binding.source_host,
        "source_port": binding.source_port,
        "path": [readable(hop) for hop in binding.path],
        "instance": None if binding.instance is None else readable(binding.instance),
        "reg_id": binding.reg_id,
        "flow": flow(binding) if flow is not None else None,
        "registered_at": iso_utc(binding.registered_at),
        "refreshed_at": iso_utc(binding.refreshed_at),
    }
