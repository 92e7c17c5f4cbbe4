"""``[security.*]`` tables: TLS, API-key authentication and the audit trail."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    #: HMAC key for the record chain; default: a key file generated in the state dir.
    chain_key: Secret | None = None


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``."""

    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
