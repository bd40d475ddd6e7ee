"""PACS credentials: from environment variables or a private file, never from the command line.

A password on the command line is visible to every user of the machine (``ps``) and kept
in shell histories, so ``ragsam pacs`` takes none. In order:

1. ``--credentials FILE``: a JSON file ``{"user": "...", "password": "..."}`` or
   ``{"token": "..."}`` (a bearer token, e.g. from an OAuth proxy in front of the PACS).
   Like ``~/.pgpass`` and SSH keys it must be private: a file that its group or other users
   may read or write is refused (``chmod 600 FILE``).
2. ``RAGSAM_PACS_TOKEN`` (bearer token), else ``RAGSAM_PACS_USER`` + ``RAGSAM_PACS_PASSWORD``
   (HTTP basic authentication).
3. Nothing: anonymous requests (a PACS without authentication, e.g. on the same host).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ragsam.errors import InputError

USER_ENV = "RAGSAM_PACS_USER"
PASSWORD_ENV = "RAGSAM_PACS_PASSWORD"
TOKEN_ENV = "RAGSAM_PACS_TOKEN"


@dataclass(frozen=True)
class Credentials:
    """HTTP authentication for a DICOMweb server (both ``None``: anonymous).

    Attributes:
        user, password: HTTP basic authentication.
        token: a bearer token (``Authorization: Bearer <token>``); excludes user/password.
        source: where they came from, for messages (never the secret itself).
    """

    user: str | None = None
    password: str | None = None
    token: str | None = None
    source: str = "none"

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Credentials(user={self.user!r}, source={self.source!r})"

    def describe(self) -> str:
        """``'user alice from RAGSAM_PACS_USER'`` / ``'a token from FILE'`` / ``'no credentials'``."""
        if self.token:
            return f"a token from {self.source}"
        if self.user:
            return f"user {self.user!r} from {self.source}"
        return "no credentials"


def load_credentials(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Credentials:
    """The credentials to use (see the module docstring for the order).

    Raises:
        InputError: an unreadable, malformed or non-private file; a user without a password.
    """
    if path is not None:
        return _from_file(Path(path))
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return Credentials(token=env[TOKEN_ENV], source=TOKEN_ENV)
    user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
    if user and password is None:
        raise InputError(None, f"{USER_ENV} is set but {PASSWORD_ENV} is not; set both (or {TOKEN_ENV})")
    if user:
        return Credentials(user=user, password=password, source=USER_ENV)
    return Credentials()


def _from_file(path: Path) -> Credentials:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise InputError(path, f"cannot read the credentials file ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise InputError(path, "the credentials file is not a regular file")
    if mode & 0o077:
        raise InputError(path, f"the credentials file is readable or writable by other users "
                               f"(mode {stat.S_IMODE(mode):04o}); make it private: chmod 600 {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a JSON credentials file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(path, 'expected {"user": ..., "password": ...} or {"token": ...}')
    unknown = sorted(set(data) - {"user", "password", "token"})
    token, user, password = data.get("token"), data.get("user"), data.get("password")
    values_ok = all(v is None or isinstance(v, str) for v in (token, user, password))
    if unknown or not values_ok or (token and (user or password)) or (not token and not (user and password)):
        raise InputError(path, 'expected {"user": ..., "password": ...} or {"token": ...} (strings)'
                               + (f"; unknown keys {unknown}" if unknown else ""))
    if token:
        return Credentials(token=token, source=str(path))
    return Credentials(user=user, password=password, source=str(path))
