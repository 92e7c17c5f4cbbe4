"""Posture checks of files and directories: who may read or write what the daemon relies on.

The rule throughout: a file may belong to root or to the daemon's account; the daemon's own
group may read (never write) the files it needs; nobody else may write them, and nobody
else may read a secret. See docs/SECURITY.md.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from ..config.schema import Config, ControlConfig
from .posture_base import Account, Context, Finding, group_name, mode_text, user_name

#: Groups that hold every (or any) user: a control socket given to them is open to all.
BROAD_GROUPS = frozenset({"users", "staff", "everyone", "nogroup", "nobody"})
_ELSEWHERE = "run the audit as root, or let the daemon run it (securellmctl security audit without --config)"


def stat_path(path: str, key: str, *, required: bool) -> tuple[os.stat_result | None, list[Finding]]:
    """``os.stat`` of ``path``; what stopped it, as findings (none for an optional missing path)."""
    try:
        return os.stat(path), []
    except FileNotFoundError:
        if not required:
            return None, []
        return None, [Finding("files.missing", "medium", "A file the config names does not exist",
                              f"{key}: {path} does not exist",
                              "create it or correct the path: the daemon cannot start or reload without it")]
    except OSError as exc:
        return None, [Finding("posture.unchecked", "low", "A file could not be examined",
                              f"{key}: {path}: {exc.strerror}", _ELSEWHERE)]


def _owner(st: os.stat_result) -> str:
    return f"{user_name(st.st_uid)}:{group_name(st.st_gid)}"


def _foreign_owner(st: os.stat_result, account: Account) -> list[str]:
    """The owner, when it is neither root nor the daemon: it may chmod the file at will."""
    return [] if st.st_uid in (0, account.uid) else [f"its owner {user_name(st.st_uid)}"]


def _mode_writers(st: os.stat_result) -> list[str]:
    out = []
    if st.st_mode & stat.S_IWGRP:
        out.append(f"group {group_name(st.st_gid)}")
    if st.st_mode & stat.S_IWOTH:
        out.append("others")
    return out


def _writers(st: os.stat_result, account: Account) -> list[str]:
    """Who besides root and the daemon may change the file."""
    return _foreign_owner(st, account) + _mode_writers(st)


def _readers(st: os.stat_result, account: Account, *, daemon_group_may_read: bool) -> list[str]:
    """Who besides root, the owner and (when allowed) the daemon's group may read the file."""
    out = []
    if st.st_mode & stat.S_IRGRP and not (daemon_group_may_read and st.st_gid == account.gid):
        out.append(f"group {group_name(st.st_gid)}")
    if st.st_mode & stat.S_IROTH:
        out.append("others")
    return out


def _describe(key: str, path: str, st: os.stat_result, verb: str, who: list[str]) -> str:
    return f"{key}: {path} (mode {mode_text(st)}, {_owner(st)}) is {verb} by {', '.join(who)}"


def config_file(path: str, ctx: Context) -> list[Finding]:
    """The config: writable by others [high] (they would rewrite the gateway's policy),
    readable by others [medium] (it maps the deployment, and any inline secret)."""
    st, problems = stat_path(path, "config", required=True)
    if st is None:
        return problems
    fix = f"chown root:{group_name(ctx.account.gid)} {path} && chmod 0640 {path}"
    out = []
    if writers := _writers(st, ctx.account):
        out.append(Finding("files.config", "high", "The config file can be changed by others",
                           _describe("config", path, st, "writable", writers), fix))
    if readers := _readers(st, ctx.account, daemon_group_may_read=True):
        out.append(Finding("files.config", "medium", "The config file is readable by others",
                           _describe("config", path, st, "readable", readers), fix))
    return out


def secret_file(key: str, path: str, ctx: Context) -> list[Finding]:
    """A ``file:`` secret: any access by group or others, or a foreign owner [high]."""
    if ctx.credentials_dir and _is_under(path, ctx.credentials_dir):
        return []
    st, problems = stat_path(path, key, required=True)
    if st is None:
        return problems
    who = _writers(st, ctx.account) + _readers(st, ctx.account, daemon_group_may_read=False)
    if not who and not st.st_mode & 0o077:
        return []
    detail = _describe(key, path, st, "accessible", who or ["group or others (execute bits)"])
    return [Finding("files.secret", "high", "A secret file is exposed", detail,
                    f"chown {user_name(ctx.account.uid)} {path} && chmod 0600 {path}, or pass it with "
                    "systemd LoadCredential= and write cred:NAME")]


def tls_key_file(path: str, ctx: Context) -> list[Finding]:
    """The server's private key: readable or writable by anyone but root, the daemon and its
    group (read only) [high]."""
    key = "security.tls.key_path"
    st, problems = stat_path(path, key, required=True)
    if st is None:
        return problems
    who = _writers(st, ctx.account) + _readers(st, ctx.account, daemon_group_may_read=True)
    if not who:
        return []
    return [Finding("files.tls_key", "high", "The TLS private key is exposed",
                    _describe(key, path, st, "readable or writable", who),
                    f"chown root:{group_name(ctx.account.gid)} {path} && chmod 0640 {path}")]


def tls_trust_file(key: str, path: str, ctx: Context) -> list[Finding]:
    """A certificate, CA bundle or CRL that others may write [high]: with the CA bundle they
    could trust a CA of their own, with the CRL un-revoke a client."""
    st, problems = stat_path(path, key, required=True)
    if st is None:
        return problems
    if not (writers := _writers(st, ctx.account)):
        return []
    return [Finding("files.tls_trust", "high", "A TLS certificate, CA bundle or CRL can be changed by others",
                    _describe(key, path, st, "writable", writers),
                    f"chown root:root {path} && chmod 0644 {path}")]


def state_dir(path: str, ctx: Context) -> list[Finding]:
    """The state dir (SQLite with API key hashes and usage, the audit chain key): any access
    by group or others, or a foreign owner [medium]. A missing dir is made 0700 at start."""
    st, problems = stat_path(path, "state.dir", required=False)
    if st is None:
        return problems
    who = _foreign_owner(st, ctx.account)
    if st.st_mode & 0o070:
        who.append(f"group {group_name(st.st_gid)}")
    if st.st_mode & 0o007:
        who.append("others")
    if not who:
        return []
    return [Finding("state.permissions", "medium", "The state directory is open to others",
                    _describe("state.dir", path, st, "accessible", who), f"chmod 0700 {path}")]


def control_socket(cfg: ControlConfig, ctx: Context) -> list[Finding]:
    """The control socket [low]: given to a group that holds every user, kept in a directory
    others may write (they could put their own socket there and pose as the daemon), or with
    a mode or group that differs from the config."""
    out = []
    group = cfg.socket_group or group_name(ctx.account.gid)
    if group in BROAD_GROUPS and cfg.mode & 0o060:
        out.append(Finding("control.socket_group", "low", "The control socket is open to a group of every user",
                           f"control.socket_group: members of {group!r} may use securellmctl "
                           f"(socket_mode {cfg.socket_mode})",
                           "set control.socket_group to a dedicated group (e.g. securellm) of the admins"))
    parent = str(Path(cfg.socket).parent)
    st, problems = stat_path(parent, "control.socket", required=False)
    out += problems
    if st is not None and (writers := _mode_writers(st)):
        out.append(Finding("control.socket_dir", "low", "Others may write the control socket's directory",
                           _describe("control.socket", parent, st, "writable", writers),
                           f"chmod go-w {parent}, or put the socket under /run/securellm (0750)"))
    st, problems = stat_path(cfg.socket, "control.socket", required=False)
    out += problems
    if st is not None and stat.S_ISSOCK(st.st_mode):
        wanted = cfg.socket_group
        if stat.S_IMODE(st.st_mode) != cfg.mode or (wanted is not None and group_name(st.st_gid) != wanted):
            out.append(Finding("control.socket_drift", "low",
                               "The control socket's mode or group is not the configured one",
                               f"control.socket: {cfg.socket} has mode {mode_text(st)} and group "
                               f"{group_name(st.st_gid)}; the config says {cfg.socket_mode}"
                               + (f" and group {wanted}" if wanted else ""),
                               "restart the daemon (it sets both when it binds), and find who changed them"))
    return out


def backend_binaries(config: Config) -> list[tuple[str, str]]:
    """``(key, binary)`` of each backend executable the daemon may start: llama-server, and
    ollama unless ``[backends.ollama] url`` attaches to a server already running."""
    out = [("backends.llamacpp.binary", config.backends.llamacpp.binary)]
    if config.backends.ollama.url is None:
        out.append(("backends.ollama.binary", config.backends.ollama.binary))
    return out


def backend_binary(key: str, binary: str, ctx: Context) -> list[Finding]:
    """A backend executable, or a directory above it, that others may write [high]: they
    could replace the program the daemon runs. A name is looked up in this process's PATH;
    one not found (or an absolute path that does not exist) is not in use here."""
    path = binary if os.path.isabs(binary) else shutil.which(binary)
    if path is None or not os.path.exists(path):
        return []
    problems: list[str] = []
    unchecked: list[Finding] = []
    for item in _with_ancestors(path):
        st, found = stat_path(item, key, required=False)
        unchecked += found
        if st is None:
            continue
        # A sticky directory (/tmp, /nix/store): others may add entries, not replace root's or ours.
        sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if writers := _foreign_owner(st, ctx.account) + ([] if sticky else _mode_writers(st)):
            problems.append(f"{item} (mode {mode_text(st)}, {_owner(st)}) is writable by {', '.join(writers)}")
    if not problems:
        return unchecked
    return unchecked + [Finding("backends.binary", "high", "A backend executable can be replaced by others",
                                f"{key}: {binary}: " + "; ".join(problems),
                                "make the program and every directory above it owned by root and not "
                                "writable by group or others (chown root:root, chmod go-w)")]


def _with_ancestors(path: str) -> list[str]:
    """``path`` and its directories, then (through symlinks) its real file and directories."""
    out: list[str] = []
    for start in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        for item in (start, *start.parents):
            if str(item) not in out:
                out.append(str(item))
    return out


def _is_under(path: str, parent: str) -> bool:
    try:
        Path(path).resolve().relative_to(Path(parent).resolve())
    except ValueError:
        return False
    return True

