"""API keys for the HTTP service's write and admin routes: where they come from, and the check.

A key is a bearer token with scopes: ``write`` (POST /v1/feedback) and ``admin`` (/v1/admin/*). Keys
come from an environment variable or a secret file readable by its owner only (mode 0600), never from
the Serve config (which Ray shows on its dashboard and stores in its control store). Both hold entries
separated by whitespace, each ``[NAME=]SCOPES:KEY`` with SCOPES a comma-separated list; a line starting
with ``#`` is a comment:

    # llm4tag API keys (mode 0600)
    write,admin:l4t_3q...
    labeller-ann=write:l4t_Zr...

NAME (letters, digits, ``._-``) says who holds the key: feedback sent with it records that name. A key
without one is named by a fingerprint of it, ``key-`` and 8 hex digits of its SHA-256 (telling nothing
usable about the key).

``llm4tag serve`` on a machine without keys writes one with both scopes and prints where (as Ray does
with its token). With ``auth: off`` nothing is checked: only for a service no one else can reach.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from llm4tag.config_section import Section
from llm4tag.errors import ConfigError
from llm4tag.service.refusal import Refusal

SCOPES = ("write", "admin")
KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_KEYS_FILE = "~/.config/llm4tag/api-keys"


class Auth(Section):
    """Who may write (service.auth). ``auth: off`` (or false) turns every check off, explicitly."""

    section: ClassVar[str] = "service.auth"

    enabled: bool = Field(
        True, description="check API keys (`auth: off` turns it off: only where no one else can connect)"
    )
    keys_env: str = Field(
        "LLM4TAG_API_KEYS",
        description="environment variable with the keys ([NAME=]SCOPES:KEY entries); first",
    )
    keys_file: str = Field(
        DEFAULT_KEYS_FILE,
        description="secret file with the keys (mode 0600), read when the variable is unset",
    )
    reads: bool = Field(False, description="also require a key (any scope) for POST /v1/tag and GET /v1/tags")


class AuthError(Refusal):
    """A request without a valid key (401, asking for a bearer key) or with a key lacking the route's
    scope (403)."""

    status = 401

    def __init__(self, message: str, field: str = "authorization", status: int | None = None, headers=None):
        if (status or type(self).status) == 401:
            headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
        super().__init__(message, field, status, headers)


@dataclass(frozen=True)
class ApiKeys:
    """The keys a service accepts, kept as SHA-256 digests (compared in constant time)."""

    digests: tuple[tuple[bytes, frozenset[str], str], ...]  # (digest, scopes, name)
    source: str

    @classmethod
    def parse(cls, text: str, source: str) -> ApiKeys:
        entries = []
        for line in text.splitlines():
            for entry in line.split("#", 1)[0].split():
                head, sep, key = entry.partition(":")
                name, _, scopes = head.rpartition("=")
                named = frozenset(s for s in scopes.split(",") if s)
                unknown = sorted(named - set(SCOPES))
                if not sep or not key or not named or unknown:
                    raise ConfigError(
                        f"{source}: an entry is not [NAME=]SCOPES:KEY with scopes from {', '.join(SCOPES)}"
                        + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                    )
                if "=" in head and not KEY_NAME.fullmatch(name):
                    raise ConfigError(f"{source}: a key name is not 1-64 letters, digits, '.', '_' or '-'")
                if len(key) < 16:
                    raise ConfigError(f"{source}: a key is shorter than 16 characters")
                digest = _digest(key)
                entries.append((digest, named, name or f"key-{digest[:4].hex()}"))
        return cls(tuple(entries), source)

    @classmethod
    def load(cls, auth: Auth) -> ApiKeys:
        """The keys of the variable if it is set, else of the file (none if it does not exist)."""
        text = os.environ.get(auth.keys_env, "")
        if text.strip():
            return cls.parse(text, f"${auth.keys_env}")
        path = Path(auth.keys_file).expanduser()
        try:
            info = path.stat()
        except FileNotFoundError:
            return cls((), str(path))
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigError(
                f"{path}: API key file is readable by others (mode {stat.S_IMODE(info.st_mode):o}): "
                f"chmod 600 {path}"
            )
        return cls.parse(path.read_text(), str(path))

    def scopes_of(self, authorization: str | None) -> frozenset[str] | None:
        """The scopes of the key in an ``Authorization: Bearer KEY`` header; None: no valid key."""
        found = self._find(authorization)
        return found[0] if found else None

    def _find(self, authorization: str | None) -> tuple[frozenset[str], str] | None:
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        presented = _digest(key.strip())
        found = None
        for digest, scopes, name in self.digests:  # every key compared: the time does not tell which
            if hmac.compare_digest(presented, digest):
                found = (scopes, name)
        return found

    def check(self, authorization: str | None, scope: str | None) -> str:
        """The name of the header's key; AuthError unless it has ``scope`` (None: any valid key)."""
        if not self.digests:
            raise AuthError(
                f"no API keys are configured ({self.source}): this route is closed until there are",
                status=401,
            )
        found = self._find(authorization)
        if found is None:
            raise AuthError("missing or unknown API key: send Authorization: Bearer <key>", status=401)
        scopes, name = found
        if scope is not None and scope not in scopes:
            raise AuthError(f"this key lacks the '{scope}' scope", status=403)
        return name


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def ensure_key_file(auth: Auth) -> Path | None:
    """Write a new key with every scope to the keys file when auth is on and no key is configured
    (neither the variable nor the file); returns the file written, None when nothing was needed. The
    file is created with mode 0600 and never overwritten."""
    if not auth.enabled or os.environ.get(auth.keys_env, "").strip():
        return None
    path = Path(auth.keys_file).expanduser()
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = "l4t_" + secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(f"# llm4tag API keys (SCOPES:KEY), mode 0600\n{','.join(SCOPES)}:{key}\n")
        out.flush()
        os.fsync(out.fileno())
    return path
