"""Password login from ``ECHO_AUTH``.

Formats: ``user1:pass1,user2:pass2`` inline, or the path of a file with one ``user:pass`` per line
(blank lines and ``#`` comments ignored; the file form allows commas in passwords). A password may
contain ``:`` (the user name ends at the first one).

Why a callable instead of Gradio's list of tuples: Gradio compares the list with ``==``, whose
running time leaks how many leading characters matched; :func:`make_checker` compares with
:func:`hmac.compare_digest` and always does the same work whether the user exists or not.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path

__all__ = ["AuthError", "make_checker", "parse_credentials"]


class AuthError(ValueError):
    """``ECHO_AUTH`` cannot be parsed; the message says which entry is wrong (never echoing a password)."""


def parse_credentials(value: str) -> dict[str, str]:
    """``ECHO_AUTH`` -> {user: password}. A value naming an existing file is read as a file."""
    candidate = Path(value).expanduser()
    if candidate.is_file():
        entries = [
            (f"{candidate.name} line {n}", line.strip())
            for n, line in enumerate(candidate.read_text(encoding="utf-8").splitlines(), start=1)
            if line.strip() and not line.strip().startswith("#")
        ]
    else:
        entries = [(f"entry {n}", item.strip()) for n, item in enumerate(value.split(","), start=1) if item.strip()]
    creds: dict[str, str] = {}
    for where, entry in entries:
        user, sep, password = entry.partition(":")
        user = user.strip()
        if not sep or not user or not password:
            raise AuthError(f"ECHO_AUTH {where}: expected 'user:password' with both parts non-empty")
        if user in creds:
            raise AuthError(f"ECHO_AUTH {where}: user {user!r} is listed twice")
        creds[user] = password
    if not creds:
        raise AuthError("ECHO_AUTH is set but names no 'user:password' entry")
    return creds


def make_checker(credentials: dict[str, str]) -> Callable[[str, str], bool]:
    """A ``launch(auth=...)`` callable comparing fixed-length digests in constant time."""
    digests = {user: hashlib.sha256(pw.encode("utf-8")).digest() for user, pw in credentials.items()}
    decoy = hashlib.sha256(b"echo-no-such-user").digest()

    def check(username: str, password: str) -> bool:
        given = hashlib.sha256((password or "").encode("utf-8")).digest()
        expected = digests.get(username or "", decoy)
        same = hmac.compare_digest(given, expected)
        return same and (username or "") in digests

    return check
