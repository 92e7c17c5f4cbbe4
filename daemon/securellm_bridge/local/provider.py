"""The daemon's own local models as one provider for the router (``local``).

A request for a local model goes through the scheduler: it is loaded on demand, counted in
flight while it runs (so it is never evicted mid-request), and forwarded to its
llama-server or Ollama model. Scheduler refusals (load timeout, no memory) become
retryable upstream failures, so the router can fall back to a cloud candidate.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, AsyncIterator

from ..config.providers import ProviderConfig
from ..errors import BridgeError
from ..providers.base import Call, Reply, UpstreamFailure
from ..providers.openai_shapes import TokenUsage
from .registry import Registry
from .scheduler import Scheduler, Slot

NAME = "local"


def _failure(exc: BridgeError) -> UpstreamFailure:
    return UpstreamFailure(f"local: {exc.message}", retryable=True, status=503, retry_after=exc.retry_after)


class LocalProvider:
    name = NAME
    routes = frozenset({"chat", "completions", "embeddings"})

    def __init__(self, scheduler: Scheduler, registry: Registry, route_priority: int) -> None:
        self.scheduler = scheduler
        self.registry = registry
        self.cfg = ProviderConfig(kind="openai", base_url="http://127.0.0.1", models=("*",), local=True,
                                  max_retries=0, priority=route_priority)

    def serves(self, model: str) -> bool:
        entry = self.registry.get(model)
        return entry is not None and entry.usable

    def models(self) -> list[str]:
        return [e.name for e in self.registry.list() if e.usable]

    async def start(self) -> None:
        """Nothing to open: each loaded model has its own session."""

    async def close(self) -> None:
        """Loaded models are closed by the scheduler."""

    async def complete(self, call: Call) -> Reply:
        try:
            async with self.scheduler.use(call.model) as slot:
                return await slot.instance.provider.complete(call)  # type: ignore[attr-defined]
        except UpstreamFailure:
            raise
        except BridgeError as exc:
            raise _failure(exc) from None

    async def open_stream(self, call: Call) -> "HeldStream":
        hold = self.scheduler.use(call.model)
        try:
            slot: Slot = await hold.__aenter__()
        except BridgeError as exc:
            raise _failure(exc) from None
        try:
            upstream = await slot.instance.provider.open_stream(call)  # type: ignore[attr-defined]
        except BaseException as exc:
            await hold.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return HeldStream(upstream, hold)


class HeldStream:
    """A local model's stream that keeps the model marked busy until it is closed."""

    def __init__(self, upstream: Any, hold: AbstractAsyncContextManager[Slot]) -> None:
        self._upstream = upstream
        self._hold = hold
        self._closed = False

    @property
    def usage(self) -> TokenUsage:
        return self._upstream.usage  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._upstream.__aiter__()  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._upstream.aclose()
        finally:
            await self._hold.__aexit__(None, None, None)
