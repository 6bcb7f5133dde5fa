"""The user database: precomputed digest HA1 values, never passwords.

One line per user and realm (RFC 2617 §3.2.2.2, RFC 7616 §3.4.2)::

    # comment
    user:realm:HA1md5
    user:realm:HA1md5:HA1sha256

A 3-field line can answer MD5 challenges only; a 4-field line answers MD5 and
SHA-256 (RFC 8760). ``write_user`` always writes the 4-field form.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sipproxy.auth.digest import base_algorithm, ha1

__all__ = ["UserDB", "UserEntry", "write_user"]

_MD5_HA1 = re.compile(r"[0-9a-fA-F]{32}")
_SHA256_HA1 = re.compile(r"[0-9a-fA-F]{64}")
_FORBIDDEN_IN_NAME = re.compile(r"[:\x00-\x1f\x7f]")
_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True, kw_only=True)
class UserEntry:
    """One user in one realm, with the HA1 values on record."""

    user: str
    realm: str
    ha1_md5: str
    ha1_sha256: str | None = None

    def ha1(self, algorithm: str) -> str | None:
        """The stored HA1 for ``algorithm``, or None when it is not on record."""
        base = base_algorithm(algorithm)
        if base == "MD5":
            return self.ha1_md5
        if base == "SHA-256":
            return self.ha1_sha256
        return None


def _validate_name(kind: str, value: str) -> None:
    if not value:
        raise ValueError(f"{kind} must not be empty")
    if _FORBIDDEN_IN_NAME.search(value):
        raise ValueError(f"{kind} must not contain ':' or control characters: {value!r}")
    if value != value.strip() or value.startswith("#"):
        raise ValueError(f"{kind} must not start with '#' or have surrounding whitespace: {value!r}")


def _parse_line(line: str, lineno: int) -> UserEntry:
    fields = line.split(":")
    if len(fields) not in (3, 4):
        raise ValueError(f"line {lineno}: expected user:realm:HA1[:HA1sha256]")
    user, realm, md5 = fields[0], fields[1], fields[2]
    sha256 = fields[3] if len(fields) == 4 else None
    if not user or not realm:
        raise ValueError(f"line {lineno}: empty user or realm")
    if not _MD5_HA1.fullmatch(md5):
        raise ValueError(f"line {lineno}: MD5 HA1 must be 32 hex digits")
    if sha256 is not None and not _SHA256_HA1.fullmatch(sha256):
        raise ValueError(f"line {lineno}: SHA-256 HA1 must be 64 hex digits")
    return UserEntry(
        user=user,
        realm=realm,
        ha1_md5=md5.lower(),
        ha1_sha256=sha256.lower() if sha256 is not None else None,
    )


def _content_lines(text: str) -> Iterator[tuple[int, str]]:
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield lineno, line


class UserDB:
    """Read-only map of (user, realm) to ``UserEntry``."""

    def __init__(self, entries: Iterable[UserEntry] = ()) -> None:
        self._entries: dict[tuple[str, str], UserEntry] = {}
        for entry in entries:
            key = (entry.user, entry.realm)
            if key in self._entries:
                raise ValueError(f"duplicate user {entry.user!r} in realm {entry.realm!r}")
            self._entries[key] = entry

    @classmethod
    def parse(cls, text: str) -> UserDB:
        """Parse users-file text; ValueError names the first bad line."""
        entries: dict[tuple[str, str], UserEntry] = {}
        for lineno, line in _content_lines(text):
            entry = _parse_line(line, lineno)
            key = (entry.user, entry.realm)
            if key in entries:
                raise ValueError(f"line {lineno}: duplicate user {entry.user!r} in realm {entry.realm!r}")
            entries[key] = entry
        return cls(entries.values())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UserDB:
        """Read a users file (UTF-8)."""
        return cls.parse(Path(path).read_text(encoding="utf-8"))

    def get(self, user: str, realm: str) -> UserEntry | None:
        """The entry for ``user`` in ``realm`` (both compared exactly), or None."""
        return self._entries.get((user, realm))

    def entries(self) -> Mapping[tuple[str, str], UserEntry]:
        """All entries keyed by (user, realm)."""
        return dict(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


def _format_line(user: str, realm: str, password: str) -> str:
    md5 = ha1("MD5", user, realm, password)
    sha256 = ha1("SHA-256", user, realm, password)
    return f"{user}:{realm}:{md5}:{sha256}"


def _is_line_for(line: str, user: str, realm: str) -> bool:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return False
    fields = stripped.split(":")
    return len(fields) >= 2 and fields[0] == user and fields[1] == realm


def _replace_or_append(lines: list[str], user: str, realm: str, new_line: str) -> tuple[list[str], bool]:
    result: list[str] = []
    replaced = False
    for line in lines:
        if _is_line_for(line, user, realm):
            if not replaced:
                result.append(new_line)
                replaced = True
            continue
        result.append(line)
    if not replaced:
        result.append(new_line)
    return result, replaced


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_user(path: str | os.PathLike[str], user: str, realm: str, password: str) -> bool:
    """Add or replace ``user`` in ``realm`` with MD5 and SHA-256 HA1 values.

    Other lines, comments included, are kept as they are. The file is
    rewritten atomically (temporary file, then ``os.replace``) with mode 0600.
    Returns True when an existing line was replaced, False when one was added.
    """
    _validate_name("user", user)
    _validate_name("realm", realm)
    target = Path(path)
    try:
        existing = target.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        existing = []
    lines, replaced = _replace_or_append(existing, user, realm, _format_line(user, realm, password))
    _atomic_write(target, "\n".join(lines) + "\n")
    return replaced
