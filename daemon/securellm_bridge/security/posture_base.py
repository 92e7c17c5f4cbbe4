"""The vocabulary of the security posture audit: findings, severities and the audit's context.

See :mod:`securellm_bridge.security.posture` for the checks and docs/SECURITY.md for what
each one means.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Severity = Literal["low", "medium", "high"]
#: Most severe first: the order of a report.
SEVERITIES: tuple[Severity, ...] = ("high", "medium", "low")


@dataclass(frozen=True)
class Finding:
    """One weakness. ``id`` names the check (several findings may share it); ``detail``
    names the key or file concerned; ``fix`` says what to do. Never holds a secret value."""

    id: str
    severity: Severity
    title: str
    detail: str
    fix: str


@dataclass(frozen=True)
class Account:
    """The user and group the daemon runs as: files may belong to root or to it, and its own
    group may read (never write) the files it needs."""

    uid: int
    gid: int

    @classmethod
    def current(cls) -> "Account":
        """This process's account: exact when the daemon audits itself."""
        return cls(os.geteuid(), os.getegid())

    @classmethod
    def owning(cls, state_dir: str) -> "Account":
        """The owner of the state dir, which the daemon creates as itself; this process's
        account when the dir cannot be examined (an offline audit on a fresh host)."""
        try:
            st = os.stat(state_dir)
        except OSError:
            return cls.current()
        return cls(st.st_uid, st.st_gid)


@dataclass(frozen=True)
class Context:
    """What the checks compare against, besides the config and the files."""

    account: Account
    #: Aware UTC time the certificate and CRL validity is judged at.
    now: datetime
    #: ``$CREDENTIALS_DIRECTORY``: ``file:`` secrets under it are systemd's, like ``cred:``.
    credentials_dir: str | None = None


def ordered(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then by check id; the order within one check is kept."""
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.id))


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def mode_text(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"
