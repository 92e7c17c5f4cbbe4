"""A loaded local model: its backend process (or Ollama model) plus the provider that
forwards requests to it.

``llama-server`` gets a new API key on every restart (and a new port when its old one was
taken), so the forwarder reads both from the backend per request.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

from ..config.providers import ProviderConfig
from ..providers.base import Call
from ..providers.client import Response
from ..providers.http import openai_error_to_openai, post
from ..providers.ollama import OllamaProvider
from ..providers.openai import PATHS, OpenAIProvider
from .backends.llamacpp import LlamaCppBackend, LoadProgress
from .backends.ollama import OllamaServer
from .backends.states import ProcessEvent


def _cfg(name: str, kind: str, url: str) -> ProviderConfig:
    return ProviderConfig(kind=kind, base_url=url, models=(name,), max_retries=0, local=True,  # type: ignore[arg-type]
                          timeout_s=600.0)


class LlamaForwarder(OpenAIProvider):
    """OpenAI protocol to one llama-server, with its current port and key."""

    def __init__(self, backend: LlamaCppBackend) -> None:
        super().__init__(f"local:{backend.name}", _cfg(backend.name, "openai", "http://127.0.0.1"))
        self._backend = backend

    def url_for(self, route: str) -> str:
        return self._backend.base_url + "/v1" + PATHS[route]

    def request_headers(self) -> dict[str, str]:
        return {**self._headers, **self._backend.headers}

    async def _post(self, call: Call, payload: bytes) -> Response:
        assert self._client is not None
        headers = self.request_headers()
        if call.stream:
            # llama-server closes the connection after a streamed answer although it offered
            # keep-alive; a pooled connection could then fail the next request (a loopback
            # connect costs ~0.1 ms).
            headers["Connection"] = "close"
        return await post(self._client, self.name, self.url_for(call.route), payload, headers,
                          openai_error_to_openai)


class LlamaInstance:
    kind = "llamacpp"

    def __init__(self, backend: LlamaCppBackend) -> None:
        self.backend = backend
        self.provider = LlamaForwarder(backend)

    @property
    def pid(self) -> int | None:
        return self.backend.pid

    @property
    def state(self) -> str:
        return self.backend.state.value

    def on_event(self, callback: Callable[[ProcessEvent], None]) -> Callable[[], None]:
        return self.backend.on_event(callback)

    def on_progress(self, callback: Callable[[LoadProgress], None]) -> Callable[[], None]:
        """llama-server's load stages, read from its log."""
        return self.backend.on_progress(callback)

    async def start(self) -> None:
        await self.backend.start()
        await self.provider.start()

    @asynccontextmanager
    async def use(self) -> AsyncIterator[None]:
        async with self.backend.use():
            yield

    async def stop(self, grace: float) -> None:
        await self.backend.drain(grace)
        await self.provider.close()
        await self.backend.stop(grace=grace)


class OllamaInstance:
    """A model kept loaded in a (shared) Ollama server."""

    kind = "ollama"

    def __init__(self, server: OllamaServer, model: str,
                 ensure_started: Callable[[], Awaitable[OllamaServer]]) -> None:
        self.server = server
        self._ensure_started = ensure_started
        self.model = model
        self.provider = OllamaProvider(f"local:{model}", _cfg(model, "ollama", server.base_url))

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def state(self) -> str:
        return self.server.state.value

    def on_event(self, callback: Callable[[ProcessEvent], None]) -> Callable[[], None]:
        return self.server.on_event(callback)

    async def start(self) -> None:
        await self._ensure_started()
        # The scheduler owns idleness, so Ollama keeps the model until told to unload it.
        await self.server.load(self.model, keep_alive=-1)
        await self.provider.start()

    @asynccontextmanager
    async def use(self) -> AsyncIterator[None]:
        yield  # requests in flight are counted by the scheduler (Slot.in_flight)

    async def stop(self, grace: float) -> None:
        await self.provider.close()
        await self.server.unload(self.model)

