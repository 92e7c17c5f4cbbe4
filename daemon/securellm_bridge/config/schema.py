"""The configuration schema: frozen dataclasses, one per TOML table.

Every key is documented in docs/CONFIG.md and packaging/config.example.toml; keep all three
in step. Defaults are what a packaged install under systemd expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from . import checks
from .limits import LimitsConfig
from .local import BackendsConfig, LocalConfig, VramConfig
from .providers import ProviderConfig, RouterConfig
from .security import SecurityConfig

LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: the HTTPS inference listener."""

    listen: str = field(default="127.0.0.1:8443", metadata={"check": checks.listen_address})
    #: On SIGTERM, how long in-flight work may take before the daemon exits anyway.
    drain_timeout_seconds: float = field(default=30.0, metadata={"check": checks.non_negative})

    @property
    def host_port(self) -> tuple[str, int]:
        return checks.parse_listen(self.listen)


@dataclass(frozen=True)
class ControlConfig:
    """``[control]``: the gRPC control socket used by securellmctl."""

    socket: str = field(default="/run/securellm/control.sock", metadata={"check": checks.absolute_path})
    socket_mode: str = field(default="0660", metadata={"check": checks.octal_mode})
    socket_group: str | None = field(default=None, metadata={"check": checks.non_empty})

    @property
    def mode(self) -> int:
        return int(self.socket_mode, 8)


@dataclass(frozen=True)
class StateConfig:
    """``[state]``: where SQLite and other persistent state live."""

    dir: str = field(default="/var/lib/securellm", metadata={"check": checks.absolute_path})


@dataclass(frozen=True)
class LogConfig:
    """``[log]``."""

    level: LogLevel = "info"


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    server: ServerConfig = field(default_factory=ServerConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    state: StateConfig = field(default_factory=StateConfig)
    log: LogConfig = field(default_factory=LogConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    router: RouterConfig = field(default_factory=RouterConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    vram: VramConfig = field(default_factory=VramConfig)
    backends: BackendsConfig = field(default_factory=BackendsConfig)

    def __post_init__(self) -> None:
        if "local" in self.providers:
            raise ValueError("providers.local: the name 'local' is reserved for the models this daemon runs "
                             "itself ([local]); choose another name")
        for alias, targets in self.router.aliases.items():
            for target in targets:
                provider, sep, _ = target.partition("/")
                if sep and provider not in self.providers and provider != "local" and not any(
                        target in p.models for p in self.providers.values()):
                    raise ValueError(f"router.aliases.{alias}: {target!r} names no configured provider or model")
