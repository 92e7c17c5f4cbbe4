"""Candidates for a requested model, ordered by a strategy; attempts with retry and fallback.

A model name resolves to candidates from the providers' ``models`` lists and from
``[router.aliases]``. Each candidate is tried in order: retries with exponential backoff and
full jitter on retryable failures (honouring ``Retry-After`` up to
``retry_max_delay_seconds``), then the next candidate. A provider whose circuit is open, or
whose own rate limit is exhausted, is skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable, TypeVar

from .. import metrics
from ..config.providers import ModelCost, RouterConfig, Strategy
from ..errors import NotFound, RateLimited, Unavailable
from ..providers.base import Provider, UpstreamFailure
from ..security.ratelimit import Reservation
from .breaker import CircuitBreaker
from .pricing import cost, model_cost
from .stats import ProviderStats

if TYPE_CHECKING:
    from ..local.provider import LocalProvider as LocalModels

T = TypeVar("T")
AdmitProvider = Callable[[str, int], Reservation]

#: The output a cost-optimized ranking expects from a request that sets no ``max_tokens``.
EXPECTED_OUTPUT_TOKENS = 256


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: Provider
    model: str
    price: ModelCost
    stats: ProviderStats


@dataclass(slots=True)
class Outcome:
    """Which candidate answered, whether it was a fallback, and its provider-limit reservation."""

    candidate: Candidate
    fallback: bool
    upstream_seconds: float
    provider_reservation: Reservation


@dataclass(frozen=True, slots=True)
class _LocalTarget:
    """An alias entry ``local/MODEL``: resolved to a candidate per request."""

    model: str


class Router:
    def __init__(self, cfg: RouterConfig, providers: dict[str, Provider],
                 stats: dict[str, ProviderStats] | None = None, local: "LocalModels | None" = None) -> None:
        self.cfg = cfg
        self.providers = providers
        self.local = local
        old = stats or {}
        self.stats = {name: old.get(name) or self._new_stats() for name in providers}
        # Local models are resolved when asked (the registry changes); each keeps its own stats.
        self.stats.update({n: s for n, s in old.items() if n.startswith("local:")})
        self._rr = itertools.count()
        self._table: dict[str, tuple[Candidate, ...]] = {}
        for name, p in providers.items():
            for model in p.cfg.models:
                self._table.setdefault(model, ())
                self._table[model] += (self._candidate(name, model),)
        for alias, targets in cfg.aliases.items():
            self._table[alias] = tuple(itertools.chain.from_iterable(self._resolve(t) for t in targets))

    def _new_stats(self) -> ProviderStats:
        return ProviderStats(CircuitBreaker(self.cfg.breaker_failure_threshold, self.cfg.breaker_reset_seconds))

    def _candidate(self, name: str, model: str) -> Candidate:
        p = self.providers[name]
        return Candidate(p, model, model_cost(p.cfg, model), self.stats[name])

    def _local_candidate(self, model: str) -> Candidate:
        assert self.local is not None
        key = f"local:{model}"
        stats = self.stats.get(key) or self.stats.setdefault(key, self._new_stats())
        return Candidate(self.local, model, model_cost(self.local.cfg, model), stats)  # type: ignore[arg-type]

    def _resolve(self, target: str) -> Iterable[Candidate]:
        name, sep, model = target.partition("/")
        if sep and name in self.providers:
            return (self._candidate(name, model),)
        if sep and name == "local" and self.local is not None:
            return (_LocalTarget(model),)  # type: ignore[return-value]
        return self._table.get(target, ())

    def models(self) -> list[tuple[str, str]]:
        """(model id, owner) for /v1/models: provider models, local models, then aliases."""
        out = [(m, c[0].provider.name) for m, c in self._table.items() if m not in self.cfg.aliases and c]
        if self.local is not None:
            seen = {m for m, _ in out}
            out += [(m, "local") for m in self.local.models() if m not in seen]
        out += [(alias, "securellm-bridge") for alias in self.cfg.aliases]
        return out

    def knows(self, model: str) -> bool:
        return model in self._table or (self.local is not None and self.local.serves(model))

    def _lookup(self, model: str) -> list[Candidate]:
        found = [self._local_candidate(c.model) if isinstance(c, _LocalTarget) else c
                 for c in self._table.get(model, ())]
        if self.local is not None and model not in self.cfg.aliases and self.local.serves(model):
            found.append(self._local_candidate(model))
        return found

    def candidates(self, model: str, route: str, strategy: Strategy, est_prompt: int,
                   max_out: int | None) -> list[Candidate]:
        """``est_prompt``: the prompt's estimated tokens; ``max_out``: the client's output
        limit, None when it set none (cost-optimized then expects ``EXPECTED_OUTPUT_TOKENS``)."""
        found = [c for c in self._lookup(model) if route in c.provider.routes]
        if not found:
            if self.knows(model):
                raise NotFound(f"model {model!r} is not available for this endpoint", code="model_not_found",
                               param="model")
            raise NotFound(f"the model {model!r} does not exist or is not configured", code="model_not_found",
                           param="model")
        return order(found, strategy, est_prompt, max_out or EXPECTED_OUTPUT_TOKENS, next(self._rr))

    async def run(self, candidates: list[Candidate], attempt: Callable[[Candidate], Awaitable[T]],
                  admit_provider: AdmitProvider, est_tokens: int) -> tuple[T, Outcome]:
        last: Exception | None = None
        for index, cand in enumerate(candidates):
            name = cand.provider.name
            if not cand.stats.breaker.allow():
                last = last or Unavailable(f"provider {name} is failing (circuit open)", retry_after=1)
                continue
            try:
                reservation = admit_provider(name, est_tokens)
            except RateLimited as exc:
                cand.stats.breaker.release()
                last = exc
                continue
            max_retries = cand.provider.cfg.max_retries
            for n in range(max_retries + 1):
                started = time.monotonic()
                try:
                    result = await attempt(cand)
                except UpstreamFailure as exc:
                    cand.stats.fail(exc.message)
                    last = exc
                    if not exc.retryable:
                        reservation.settle(0)
                        raise
                    delay = self._backoff(n, exc.retry_after)
                    if n == max_retries or delay is None or not cand.stats.breaker.allow():
                        break
                    metrics.RETRIES.labels(name).inc()
                    await asyncio.sleep(delay)
                    continue
                except BaseException:
                    cand.stats.breaker.release()
                    reservation.settle(0)
                    raise
                elapsed = time.monotonic() - started
                cand.stats.observe(elapsed)
                return result, Outcome(cand, index > 0, elapsed, reservation)
            reservation.settle(0)  # nothing was served: refund the estimate
        if last is None:
            raise Unavailable("no provider is available for this model", retry_after=1)
        raise last

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        """Full-jitter exponential backoff; None when Retry-After asks for longer than we wait."""
        cap = self.cfg.retry_max_delay_seconds
        delay = random.uniform(0, min(cap, self.cfg.retry_base_delay_seconds * 2 ** attempt))
        if retry_after is not None:
            if retry_after > cap:
                return None
            delay = max(delay, retry_after)
        return delay


def order(found: list[Candidate], strategy: Strategy, est_prompt: int, est_completion: int,
          turn: int) -> list[Candidate]:
    def prio(c: Candidate) -> int:
        return c.provider.cfg.priority

    if strategy == "priority":
        return sorted(found, key=prio)
    if strategy == "local-first":
        return sorted(found, key=lambda c: (not c.provider.cfg.is_local, prio(c)))
    if strategy == "cloud-first":
        return sorted(found, key=lambda c: (c.provider.cfg.is_local, prio(c)))
    if strategy == "cost-optimized":
        return sorted(found, key=lambda c: (cost(c.price, est_prompt, est_completion), prio(c)))
    if strategy == "latency-optimized":
        # Unmeasured providers sort first, so that each gets measured.
        return sorted(found, key=lambda c: (c.stats.latency_ewma or 0.0, prio(c)))
    ranked = sorted(found, key=prio)  # round-robin over the priority order
    k = turn % len(ranked)
    return ranked[k:] + ranked[:k]
