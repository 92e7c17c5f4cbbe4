"""The security posture audit behind ``securellmctl security audit`` and ``Security.RunAudit``.

Pure functions over a :class:`~securellm_bridge.config.Config`, the TOML table it was read
from (for the paths of ``file:`` secrets, which a resolved :class:`Secret` does not keep)
and the filesystem. Each check returns :class:`Finding` s; :func:`audit` runs them all,
most severe first. Nothing here reads a secret's value or puts one in a finding. Every
check, its severity and its fix are listed in docs/SECURITY.md.

The checks do blocking file I/O: the daemon runs :func:`audit` in an executor.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from .. import config as config_mod
from ..config.binder import toml_name
from ..config.checks import is_loopback_host
from ..config.schema import Config
from ..config.secrets import Secret
from . import posture_certs, posture_files
from .posture_base import Account, Context, Finding, ordered

_SECRET_FIX = ("move the value out of the config: a file (file:/etc/securellm/NAME, mode 0600), the "
               "environment (${VAR} from a systemd EnvironmentFile=) or a systemd credential (cred:NAME)")


def audit(config: Config, config_path: str, raw: Mapping[str, Any], ctx: Context) -> list[Finding]:
    """Every check, most severe first. ``raw`` is the parsed TOML of ``config_path`` (may be
    empty: then ``file:`` secrets cannot be located and are reported as unchecked)."""
    tls = config.security.tls
    found = [*network(config), *inline_secrets(config), *audit_trail(config), *screening(config),
             *plain_http_providers(config), *posture_files.config_file(config_path, ctx)]
    for key, path in secret_files(config, raw):
        found += (posture_files.secret_file(key, path, ctx) if path is not None else
                  [Finding("posture.unchecked", "low", "A secret file could not be located",
                           f"{key}: the file: reference is not in {config_path} as read now",
                           "run the audit again once the config file and the daemon agree (securellmctl reload)")])
    if tls.enabled:
        if tls.key_path is not None:
            found += posture_files.tls_key_file(tls.key_path, ctx)
        for key, path in (("security.tls.cert_path", tls.cert_path),
                          ("security.tls.client_ca_path", tls.client_ca_path),
                          ("security.tls.crl_path", tls.crl_path)):
            if path is not None:
                found += posture_files.tls_trust_file(key, path, ctx)
        found += posture_certs.certificates(tls, ctx)
    found += posture_files.state_dir(config.state.dir, ctx)
    found += posture_files.control_socket(config.control, ctx)
    for key, binary in posture_files.backend_binaries(config):
        found += posture_files.backend_binary(key, binary, ctx)
    return ordered(found)


def audit_path(path: str, *, in_daemon: bool = False) -> list[Finding]:
    """Read and validate the config at ``path`` (secret references by form only, never read),
    then :func:`audit` it. Raises :class:`~securellm_bridge.errors.ConfigErrors`."""
    config = config_mod.load(path, resolve_secrets=False).config
    return audit(config, path, read_table(path), context(config, in_daemon=in_daemon))


def audit_running(config: Config, path: str) -> list[Finding]:
    """In the daemon: the configuration in force, read from ``path`` at its last (re)load;
    the ``file:`` secret paths are read back from that file."""
    return audit(config, path, read_table(path), context(config, in_daemon=True))


def context(config: Config, *, in_daemon: bool) -> Context:
    """The daemon audits as itself; anyone else audits on behalf of the state dir's owner."""
    account = Account.current() if in_daemon else Account.owning(config.state.dir)
    return Context(account, datetime.now(UTC), os.environ.get("CREDENTIALS_DIRECTORY") or None)


def read_table(path: str) -> dict[str, Any]:
    """The parsed TOML of ``path``; empty when it can no longer be read or parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def network(config: Config) -> list[Finding]:
    """TLS off [high]; client certificates optional [medium, high off loopback]; a listener
    off loopback without mutual TLS [high]; API keys optional [medium, high off loopback]."""
    host, _ = config.server.host_port
    public = not is_loopback_host(host)
    reach = "reachable from other hosts" if public else "on loopback"
    listen = f"server.listen = {config.server.listen!r} ({reach})"
    tls = config.security.tls
    out = []
    if not tls.enabled:
        out.append(Finding("tls.disabled", "high", "TLS is off",
                           f"security.tls.enabled = false: {listen} serves plain HTTP; API keys, prompts "
                           "and answers cross the network in clear",
                           "set security.tls.enabled = true with cert_path, key_path and client_ca_path "
                           "(securellmctl certs init --dir DIR prints them)"))
    elif not tls.require_client_cert:
        out.append(Finding("tls.client_cert_optional", "high" if public else "medium",
                           "Client certificates are optional",
                           f"security.tls.require_client_cert = false: on {listen} anyone who can connect "
                           "may present API keys; mutual TLS is the first gate",
                           "set security.tls.require_client_cert = true and give each client a certificate "
                           "(securellmctl certs issue-client NAME --dir DIR)"))
    if public and not (tls.enabled and tls.require_client_cert):
        out.append(Finding("listen.no_mtls", "high", "A listener off loopback without mutual TLS",
                           f"{listen} does not require a client certificate",
                           "turn on TLS with require_client_cert = true, or listen on 127.0.0.1 only"))
    if not config.security.auth.require_api_key:
        out.append(Finding("auth.api_key_optional", "high" if public else "medium", "API keys are not required",
                           f"security.auth.require_api_key = false: every client that gets through TLS on "
                           f"{listen} may use every model, with no per-key limits, budget or audit identity",
                           "set security.auth.require_api_key = true and give each client a key "
                           "(securellmctl keys create --owner NAME)"))
    return out


def inline_secrets(config: Config) -> list[Finding]:
    """A secret written as a literal in the config [high]: whoever reads the file has it."""
    return [Finding("secrets.inline", "high", "A secret is written in the config file",
                    f"{key} is an inline literal", _SECRET_FIX)
            for key, secret, _ in _secrets(config, {}) if secret.source == "inline"]


def secret_files(config: Config, raw: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """``(key, path)`` of each ``file:`` secret; the path is None when ``raw`` lacks it."""
    out = []
    for key, secret, ref in _secrets(config, raw):
        if secret.source == "file":
            out.append((key, ref[5:] if isinstance(ref, str) and ref.startswith("file:") else None))
    return out


def audit_trail(config: Config) -> list[Finding]:
    """Audit off [high]; prompts or answers in the audit records [medium]."""
    cfg = config.security.audit
    if not cfg.enabled:
        return [Finding("audit.disabled", "high", "The audit trail is off",
                        "security.audit.enabled = false: no record of who used which model, of key changes "
                        "or of config reloads, and nothing to investigate an incident with",
                        "set security.audit.enabled = true")]
    out = []
    for key, what in (("log_requests", "prompts"), ("log_responses", "answers")):
        if getattr(cfg, key):
            out.append(Finding(f"audit.{key}", "medium", f"The audit trail keeps {what}",
                               f"security.audit.{key} = true: {what}, which may hold personal data or "
                               "secrets, are kept in the journal (and security.audit.file)",
                               f"set security.audit.{key} = false unless policy demands it; then limit who "
                               "may read the journal and the audit file"))
    return out


def screening(config: Config) -> list[Finding]:
    """DLP or prompt-injection screening off [low, informational]."""
    out = []
    if config.security.dlp.mode == "off":
        out.append(Finding("dlp.off", "low", "Prompts are not screened for personal data",
                           'security.dlp.mode = "off": e-mail addresses, card numbers or secrets in prompts '
                           "go upstream as written (a key's own --dlp-mode may still screen its requests)",
                           'set security.dlp.mode = "redact" (or "block"); see docs/DLP.md'))
    if config.security.injection.mode == "off":
        out.append(Finding("injection.off", "low", "Prompts are not screened for prompt injection",
                           'security.injection.mode = "off": injection attempts are neither counted nor refused',
                           'set security.injection.mode = "flag" (or "block"); see docs/DLP.md'))
    return out


def plain_http_providers(config: Config) -> list[Finding]:
    """An upstream off loopback over plain HTTP [medium; high when it gets an API key]."""
    out = []
    for name, provider in config.providers.items():
        parts = urlsplit(provider.url)
        if parts.scheme != "http" or is_loopback_host(parts.hostname or ""):
            continue
        keyed = provider.api_key is not None
        out.append(Finding("providers.plain_http", "high" if keyed else "medium",
                           "An upstream is reached over plain HTTP",
                           f"{_join(_join('providers', name), 'base_url')} = {provider.url!r}: prompts"
                           + (", answers and the provider's API key" if keyed else " and answers")
                           + " cross the network unencrypted",
                           "use an https:// URL, or reach the upstream through a tunnel on 127.0.0.1"))
    return out


def _secrets(obj: Any, raw: Any, prefix: str = "") -> Iterator[tuple[str, Secret, Any]]:
    """``(dotted key, secret, raw TOML value)`` for every :class:`Secret` in the config tree."""
    table = raw if isinstance(raw, Mapping) else {}
    for f in dataclasses.fields(obj):
        name = toml_name(f)
        value, sub, key = getattr(obj, f.name), table.get(name), _join(prefix, name)
        if isinstance(value, Secret):
            yield key, value, sub
        elif dataclasses.is_dataclass(value):
            yield from _secrets(value, sub, key)
        elif isinstance(value, dict):
            subs = sub if isinstance(sub, Mapping) else {}
            for item, v in value.items():
                if dataclasses.is_dataclass(v):
                    yield from _secrets(v, subs.get(item), _join(key, item))


def _join(prefix: str, name: str) -> str:
    part = name if name.replace("_", "").replace("-", "").isalnum() else f'"{name}"'
    return f"{prefix}.{part}" if prefix else part
