"""``sipproxy-passwd FILE USER REALM [--password P]``: add or update a user.

Writes the MD5 and SHA-256 HA1 values (RFC 7616 §3.4.2, RFC 8760) for the
user into the users file read by ``UserDB.load``; the password itself is
never stored.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from sipproxy.auth.users import write_user

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipproxy-passwd",
        description="Add or update a user in a sipproxy digest users file.",
    )
    parser.add_argument("file", help="users file (created with mode 0600 if missing)")
    parser.add_argument("user", help="user name, as sent in the digest username")
    parser.add_argument("realm", help="digest realm, usually the SIP domain")
    parser.add_argument(
        "--password",
        help="password (visible to other local users in the process list; prompted for if omitted)",
    )
    return parser


def _prompt_password() -> str | None:
    """Ask twice without echo; None when the two entries differ."""
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Retype password: ")
    return first if first == second else None


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        password = args.password if args.password is not None else _prompt_password()
    except (EOFError, KeyboardInterrupt):
        print("sipproxy-passwd: no password given", file=sys.stderr)
        return 1
    if password is None:
        print("sipproxy-passwd: passwords do not match", file=sys.stderr)
        return 1
    if not password:
        print("sipproxy-passwd: empty password refused", file=sys.stderr)
        return 1
    try:
        replaced = write_user(args.file, args.user, args.realm, password)
    except (OSError, ValueError) as error:
        print(f"sipproxy-passwd: {error}", file=sys.stderr)
        return 1
    action = "updated" if replaced else "added"
    print(f"{action} user {args.user} in realm {args.realm} in {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
