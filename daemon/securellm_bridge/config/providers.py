"""``[providers.NAME]`` and ``[router]``: where requests may go and how the route is chosen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args
from urllib.parse import urlsplit

from . import checks
from .limits import RateLimitConfig
from .secrets import Secret

ProviderKind = Literal["openai", "deepseek", "anthropic", "ollama"]
Strategy = Literal["local-first", "cloud-first", "cost-optimized", "latency-optimized", "round-robin", "priority"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

#: Base URLs used when ``base_url`` is not set.
DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama": "http://127.0.0.1:11434",
}


@dataclass(frozen=True)
class ModelCost:
    """``[providers.NAME.cost."MODEL"]``: price per million tokens."""

    input_per_mtok: float = field(default=0.0, metadata={"check": checks.non_negative})
    output_per_mtok: float = field(default=0.0, metadata={"check": checks.non_negative})


@dataclass(frozen=True)
class ProviderConfig:
    """One upstream. ``deepseek`` is the ``openai`` protocol with DeepSeek's URL and prices."""

    kind: ProviderKind
    base_url: str | None = field(default=None, metadata={"check": checks.http_url})
    api_key: Secret | None = None
    models: tuple[str, ...] = ()
    #: Lower is preferred by the ``priority`` strategy and breaks ties in the others.
    priority: int = 100
    timeout_s: float = field(default=120.0, metadata={"check": checks.positive})
    #: Retries on the same provider before falling back to the next one.
    max_retries: int = field(default=1, metadata={"check": checks.non_negative_int})
    max_connections: int = field(default=64, metadata={"check": checks.positive})
    #: Whether ``local-first`` counts it as local; default: true for loopback URLs and ollama.
    local: bool | None = None
    #: Anthropic only: ``max_tokens`` when the client sets none.
    default_max_tokens: int = field(default=4096, metadata={"check": checks.positive})
    cost: dict[str, ModelCost] = field(default_factory=dict)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: expected at least one model name")

    @property
    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS[self.kind]).rstrip("/")

    @property
    def is_local(self) -> bool:
        if self.local is not None:
            return self.local
        return self.kind == "ollama" or checks.is_loopback_host(urlsplit(self.url).hostname or "")


@dataclass(frozen=True)
class RouterConfig:
    """``[router]``."""

    default_strategy: Strategy = "priority"
    #: Strategies a request may pick with the ``x-securellm-strategy`` header.
    allowed_strategies: tuple[Strategy, ...] = STRATEGIES
    #: ``alias = ["model", "provider/model", ...]``: names clients may use for a set of candidates.
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    retry_base_delay_seconds: float = field(default=0.1, metadata={"check": checks.non_negative})
    retry_max_delay_seconds: float = field(default=5.0, metadata={"check": checks.non_negative})
    #: Consecutive failures that open a provider's circuit.
    breaker_failure_threshold: int = field(default=5, metadata={"check": checks.positive})
    #: How long an open circuit waits before one half-open probe.
    breaker_reset_seconds: float = field(default=30.0, metadata={"check": checks.positive})
