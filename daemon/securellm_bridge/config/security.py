"""``[security.*]`` tables: TLS, API-key authentication and the audit trail."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from . import checks
from .secrets import Secret


@dataclass(frozen=True)
class TlsConfig:
    """``[security.tls]``: the HTTPS listener's certificates."""

    enabled: bool = True
    cert_path: str | None = field(default=None, metadata={"check": checks.absolute_path})
    key_path: str | None = field(default=None, metadata={"check": checks.absolute_path})
    client_ca_path: str | None = field(default=None, metadata={"check": checks.absolute_path})
    require_client_cert: bool = True
    crl_path: str | None = field(default=None, metadata={"check": checks.absolute_path})

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        missing = [k for k in ("cert_path", "key_path") if getattr(self, k) is None]
        if self.require_client_cert and self.client_ca_path is None:
            missing.append("client_ca_path")
        if missing:
            raise ValueError(f"TLS is enabled, so {', '.join(missing)} must be set "
                             "(or set enabled = false explicitly for plain HTTP)")


@dataclass(frozen=True)
class AuthConfig:
    """``[security.auth]``."""

    require_api_key: bool = True


@dataclass(frozen=True)
class AuditConfig:
    """``[security.audit]``: structured, tamper-evident audit records."""

    enabled: bool = True
    #: Include prompts in request records. Off by default: prompts may carry personal data.
    log_requests: bool = False
    #: Include responses in request records. Off by default.
    log_responses: bool = False
    #: Optional JSONL file sink (also the fallback when journald is unavailable).
    file: str | None = field(default=None, metadata={"check": checks.absolute_path})
    #: When the JSONL file is rotated: at the first record of a new (UTC) day, or by size.
    rotate: Literal["daily", "size"] = "daily"
    #: With ``rotate = "size"``: rotate before a write would take the file past this size.
    rotate_max_bytes: int = field(default=100 * 1024 * 1024, metadata={"check": checks.positive})
    #: Rotated JSONL files older than this are deleted; 0 keeps them forever.
    retention_days: int = field(default=30, metadata={"check": checks.non_negative})
    #: HMAC key for the record chain; default: a key file generated in the state dir.
    chain_key: Secret | None = None

    def __post_init__(self) -> None:
        # An unresolved reference (offline validation) has an empty value: form only.
        if self.chain_key is not None and 0 < len(self.chain_key.reveal()) < 32:
            raise ValueError("chain_key: expected at least 32 characters (e.g. `openssl rand -hex 32`)")


@dataclass(frozen=True)
class DlpConfig:
    """``[security.dlp]``: data-loss prevention on prompts, before routing."""

    mode: Literal["off", "redact", "block"] = "off"


@dataclass(frozen=True)
class InjectionConfig:
    """``[security.injection]``: prompt-injection screening."""

    mode: Literal["off", "flag", "block"] = "off"


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``."""

    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    dlp: DlpConfig = field(default_factory=DlpConfig)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
