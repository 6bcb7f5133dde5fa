"""The ``auth-param`` grammar of RFC 3261 §25.1 (RFC 7230 §7 list rules, RFC 7235): parsing and quoting.

Credentials (``Authorization``, ``Proxy-Authorization``) and challenges
(``WWW-Authenticate``, ``Proxy-Authenticate``) are ``auth-scheme LWS
auth-param *(COMMA auth-param)``; this module turns such a value into its
scheme and parameters and renders a quoted-string.  Pure, no I/O.
"""

from __future__ import annotations

import re

__all__ = ["MAX_AUTH_PARAMS", "MAX_HEADER_LENGTH", "parse_auth_params", "quote"]

MAX_HEADER_LENGTH = 8192
MAX_AUTH_PARAMS = 64

# RFC 7230 §3.2.6 tchar (a superset of the RFC 3261 §25.1 token characters).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# LWS as RFC 3261 §25.1; line folding is accepted in any form.
_LWS = re.compile(r"[ \t\r\n]*")
# quoted-string = DQUOTE *(qdtext / quoted-pair) DQUOTE (RFC 3261 §25.1),
# refusing control characters (and lone surrogates) in both alternatives.
_QUOTED_STRING = re.compile(
    r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]|\\[^\x00-\x08\x0a-\x1f\x7f\ud800-\udfff])*)"'
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split a credentials/challenge header value into scheme and parameters.

    RFC 3261 §25.1: ``auth-scheme LWS auth-param *(COMMA auth-param)`` with
    ``auth-param = token EQUAL (token / quoted-string)``. Parameter names are
    lowercased; quoted values are unquoted with quoted-pairs resolved. Empty
    list elements are skipped (RFC 7230 §7). Anything else, including
    duplicate parameters, raises ValueError and nothing else.
    """
    if len(value) > MAX_HEADER_LENGTH:
        raise ValueError("authorization header value too long")
    scheme, pos = _read_token(value, _skip_lws(value, 0), "auth-scheme")
    after_scheme = _skip_lws(value, pos)
    if after_scheme == pos or after_scheme == len(value):
        raise ValueError("expected auth-params after the auth-scheme")
    params: dict[str, str] = {}
    pos = after_scheme
    while True:
        name, param_value, pos = _read_auth_param(value, pos)
        if name in params:
            raise ValueError(f"duplicate auth-param {name!r}")
        if len(params) >= MAX_AUTH_PARAMS:
            raise ValueError("too many auth-params")
        params[name] = param_value
        pos, more = _skip_comma(value, pos)
        if not more:
            return scheme, params


def _skip_lws(value: str, pos: int) -> int:
    match = _LWS.match(value, pos)
    return match.end() if match is not None else pos


def _read_token(value: str, pos: int, what: str) -> tuple[str, int]:
    match = _TOKEN.match(value, pos)
    if match is None:
        raise ValueError(f"expected {what} at offset {pos}")
    return match.group(), match.end()


def _read_auth_param(value: str, pos: int) -> tuple[str, str, int]:
    name, pos = _read_token(value, pos, "auth-param name")
    pos = _skip_lws(value, pos)
    if not value.startswith("=", pos):
        raise ValueError(f"expected '=' at offset {pos}")
    pos = _skip_lws(value, pos + 1)
    quoted = _QUOTED_STRING.match(value, pos)
    if quoted is not None:
        return name.lower(), _QUOTED_PAIR.sub(r"\1", quoted.group(1)), quoted.end()
    token, pos = _read_token(value, pos, "token or quoted-string")
    return name.lower(), token, pos


def _skip_comma(value: str, pos: int) -> tuple[int, bool]:
    """Skip ``LWS "," LWS`` (and empty elements); report whether a param follows."""
    pos = _skip_lws(value, pos)
    if pos == len(value):
        return pos, False
    if value[pos] != ",":
        raise ValueError(f"expected ',' at offset {pos}")
    while pos < len(value) and value[pos] == ",":
        pos = _skip_lws(value, pos + 1)
    return pos, pos < len(value)


def quote(value: str) -> str:
    """Render ``value`` as an RFC 3261 §25.1 quoted-string."""
    if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value):
        raise ValueError(f"control character in quoted value: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
