"""The chain's HMAC key: ``[security.audit] chain_key``, else ``audit.key`` in the state dir.

The generated key file holds 64 hex characters (256 random bits) and a newline, mode 0600.
Either way the key bytes are the UTF-8 encoding of the text without its trailing newline,
so ``audit verify --key-file`` works with the generated file and with a ``file:`` secret.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ..config.security import AuditConfig
from ..errors import StateError

KEY_FILE = "audit.key"


def key_path(state_dir: str) -> Path:
    return Path(state_dir) / KEY_FILE


def load(cfg: AuditConfig, state_dir: str) -> bytes:
    """The key the daemon chains with, without creating one (``audit verify``)."""
    if cfg.chain_key is not None:
        return cfg.chain_key.reveal().encode("utf-8")
    return read_key_file(key_path(state_dir))


def load_or_create(cfg: AuditConfig, state_dir: str) -> bytes:
    """The key the daemon chains with; generates ``audit.key`` on first use."""
    if cfg.chain_key is None:
        path = key_path(state_dir)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateError(f"cannot create audit chain key {path}: {exc.strerror}") from None
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
    return load(cfg, state_dir)


def read_key_file(path: Path) -> bytes:
    """Read a key file; refuses one that group or others may access."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"audit chain key {path} is not a regular file")
        if st.st_mode & 0o077:
            raise StateError(f"audit chain key {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                             "it must not be accessible by group or others (chmod 600)")
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise StateError(f"audit chain key {path} does not exist") from None
    except (PermissionError, UnicodeDecodeError) as exc:
        raise StateError(f"cannot read audit chain key {path}: {type(exc).__name__}") from None
    if len(text) < 32:
        raise StateError(f"audit chain key {path} is too short (expected at least 32 characters)")
    return text.encode("utf-8")
