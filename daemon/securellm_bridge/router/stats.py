"""Per-provider observations: latency EWMA and the circuit breaker, for routing and /health/providers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .breaker import CircuitBreaker

EWMA_ALPHA = 0.2


@dataclass
class ProviderStats:
    breaker: CircuitBreaker
    latency_ewma: float | None = None
    requests: int = 0
    failures: int = 0
    last_error: str | None = field(default=None, repr=False)

    def observe(self, seconds: float) -> None:
        self.requests += 1
        prev = self.latency_ewma
        self.latency_ewma = seconds if prev is None else prev + EWMA_ALPHA * (seconds - prev)
        self.breaker.success()

    def fail(self, message: str) -> None:
        self.requests += 1
        self.failures += 1
        self.last_error = message
        self.breaker.failure()

    @property
    def status(self) -> str:
        state = self.breaker.state
        if state == "open":
            return "down"
        if state == "half-open" or self.breaker.failures:
            return "degraded"
        return "up"
