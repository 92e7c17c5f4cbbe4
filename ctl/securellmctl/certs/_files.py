"""Writing PEM files with exact modes, atomically, and reading them back.

Every file is first written to a fresh ``mkstemp`` file in the target directory (mode 0600
from its creation, so a private key is never readable by others, not even briefly), then
given its final mode and moved into place: ``os.replace`` when overwriting is allowed,
``os.link`` otherwise, which fails if the name exists and so never clobbers a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from securellmctl.certs.errors import CertError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700


def ensure_dir(path: Path) -> None:
    """Create ``path`` with mode 0700 if missing (parents get the default mode)."""
    if path.is_dir():
        return
    if path.exists():
        raise CertError(f"{path} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=DIR_MODE)
    os.chmod(path, DIR_MODE)


def write_file(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Atomically write ``data`` to ``path`` with exactly ``mode``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise CertError(f"{path} already exists; refusing to overwrite it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def read_file(path: Path, what: str) -> bytes:
    """Read ``path``; a missing or unreadable file becomes a :class:`CertError` naming ``what``."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise CertError(f"cannot read {what} {path}: {exc.strerror}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
