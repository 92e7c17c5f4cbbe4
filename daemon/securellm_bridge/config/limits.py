"""``[limits]``: request-size, concurrency and rate limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import checks


@dataclass(frozen=True)
class RateLimitConfig:
    """A token-bucket limit. 0 means unlimited."""

    #: Requests per minute.
    rpm: int = field(default=0, metadata={"check": checks.non_negative_int})
    #: Extra requests allowed at once above the steady rate; 0: ``rpm / 6`` (10 seconds' worth), at least 1.
    burst: int = field(default=0, metadata={"check": checks.non_negative_int})
    #: Tokens per minute, estimated from the prompt up front and corrected from the upstream's usage.
    tpm: int = field(default=0, metadata={"check": checks.non_negative_int})


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``."""

    #: Largest accepted request body; larger ones get 413.
    max_body_bytes: int = field(default=10 * 1024 * 1024, metadata={"check": checks.positive})
    #: Whole-request deadline (upstream included); past it the client gets 504.
    request_timeout_seconds: float = field(default=600.0, metadata={"check": checks.positive})
    #: Inference requests served at once; more get 503 with Retry-After.
    max_concurrent_requests: int = field(default=512, metadata={"check": checks.positive})
    #: Longest request line / header field, in bytes.
    max_header_bytes: int = field(default=16384, metadata={"check": checks.positive})
    #: Limit over all requests together.
    global_: RateLimitConfig = field(default_factory=RateLimitConfig, metadata={"toml": "global"})
    #: Default limit of each API key (a key's own --rpm/--tpm override it).
    key: RateLimitConfig = field(default_factory=RateLimitConfig)
