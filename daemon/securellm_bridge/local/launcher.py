"""Turn a registry entry and chosen parameters into a startable instance (llama-server
process, or a model in the shared Ollama server)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from ..config.local import BackendsConfig
from ..errors import Unavailable
from .backends.children import ChildRegistry
from .backends.llamacpp import LlamaCppBackend
from .backends.ollama import OllamaServer
from .backends.states import State
from .instances import LlamaInstance, OllamaInstance
from .registry import ModelEntry


def find_binary(name: str, key: str) -> Path:
    path = Path(name) if "/" in name else (Path(found) if (found := shutil.which(name)) else None)
    if path is None or not path.exists():
        raise Unavailable(f"{name!r} not found: set [backends.{key}] binary to its path", code="backend_missing")
    return path


class _SharedOllama:
    """The one Ollama server, started on first use."""

    def __init__(self, cfg: BackendsConfig, children: ChildRegistry) -> None:
        self._cfg = cfg
        self._children = children
        self._server: OllamaServer | None = None
        self._lock = asyncio.Lock()

    def server(self) -> OllamaServer:
        if self._server is None:
            o = self._cfg.ollama
            self._server = OllamaServer(url=o.url) if o.url else OllamaServer(
                binary=find_binary(o.binary, "ollama"), models_dir=o.models_dir, registry=self._children)
        return self._server

    async def ensure_started(self) -> OllamaServer:
        server = self.server()
        async with self._lock:
            if server.state != State.READY:
                await server.start()
        return server

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace=grace)


class Launcher:
    def __init__(self, backends: BackendsConfig, children: ChildRegistry, ready_timeout: float) -> None:
        self.backends = backends
        self.children = children
        self.ready_timeout = ready_timeout
        self.ollama = _SharedOllama(backends, children)

    def __call__(self, entry: ModelEntry, gpu_layers: int, ctx: int) -> LlamaInstance | OllamaInstance:
        if entry.backend == "ollama":
            return OllamaInstance(self.ollama.server(), entry.name, self.ollama.ensure_started)
        backend = LlamaCppBackend(entry.name, entry.path, binary=find_binary(self.backends.llamacpp.binary, "llamacpp"),
                                  ctx=ctx, gpu_layers=gpu_layers, parallel=entry.parallel,
                                  extra_args=entry.extra_args, ready_timeout=self.ready_timeout,
                                  registry=self.children)
        return LlamaInstance(backend)
