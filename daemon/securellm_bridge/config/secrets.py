"""Secret values: a redacting wrapper and the resolution of secret references.

A secret in the config is written as one of:

* ``${ENV_VAR}``  — read from the daemon's environment (e.g. systemd ``EnvironmentFile=``);
* ``cred:NAME``   — read from ``$CREDENTIALS_DIRECTORY/NAME`` (systemd ``LoadCredential=``);
* ``file:/path``  — read from a file that must not be group- or world-readable;
* anything else   — an inline literal (works, but ``security audit`` flags it).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SecretSource = Literal["env", "cred", "file", "inline"]

_ENV_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_CRED_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")


@dataclass(frozen=True, eq=False)
class Secret:
    """A secret string. ``repr``/``str`` never show the value; use :meth:`reveal`."""

    _value: str
    source: SecretSource = "inline"

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<redacted>, source={self.source!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretResolutionError(Exception):
    """Raised with a message naming the reference (never the value)."""


def secret_source(ref: str) -> SecretSource:
    """Where a reference points, without reading it."""
    if _ENV_RE.match(ref):
        return "env"
    if ref.startswith("cred:"):
        return "cred"
    if ref.startswith("file:"):
        return "file"
    return "inline"


def resolve_secret(ref: str, env: dict[str, str] | None = None) -> Secret:
    """Resolve a config reference into a :class:`Secret`."""
    environ = os.environ if env is None else env
    m = _ENV_RE.match(ref)
    if m:
        name = m.group(1)
        if name not in environ:
            raise SecretResolutionError(f"environment variable {name} is not set")
        return Secret(environ[name], "env")
    if ref.startswith("cred:"):
        name = ref[5:]
        if not _CRED_NAME_RE.match(name):
            raise SecretResolutionError(f"invalid credential name {name!r}")
        cred_dir = environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise SecretResolutionError(
                f"cred:{name} needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=), which is not set")
        return Secret(_read_secret_file(Path(cred_dir) / name, trusted_dir=True), "cred")
    if ref.startswith("file:"):
        path = Path(ref[5:])
        if not path.is_absolute():
            raise SecretResolutionError(f"file: secret path must be absolute, got {str(path)!r}")
        cred_dir = environ.get("CREDENTIALS_DIRECTORY")
        trusted = bool(cred_dir) and _is_under(path, Path(cred_dir))
        return Secret(_read_secret_file(path, trusted_dir=trusted), "file")
    return Secret(ref, "inline")


def _is_under(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def _read_secret_file(path: Path, *, trusted_dir: bool) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SecretResolutionError(f"secret file {path} does not exist") from None
    except PermissionError:
        raise SecretResolutionError(f"secret file {path} is not readable by this user") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretResolutionError(f"secret file {path} is not a regular file")
    if not trusted_dir and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretResolutionError(
            f"secret file {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must not be "
            "accessible by group or others (chmod 600), or must be passed via LoadCredential=")
    try:
        text = path.read_text(encoding="utf-8")
    except (PermissionError, UnicodeDecodeError) as exc:
        raise SecretResolutionError(f"secret file {path} cannot be read: {type(exc).__name__}") from None
    return text.rstrip("\r\n")
