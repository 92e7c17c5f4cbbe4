"""``ollama serve``, supervised on a private loopback port or attached at a URL, and the model
operations the scheduler needs, over Ollama's HTTP API.

Supervised, it runs ``BINARY serve`` with ``OLLAMA_HOST=127.0.0.1:PORT`` and ``OLLAMA_MODELS``
when given; ready means ``GET /`` answers 200. The port is picked when the server object is
made, so ``base_url`` is known before start and stays across crash restarts; only a port
taken meanwhile ("address already in use", retried at once) is replaced. Ollama has
no API key, so the loopback port is its only fence, as with any local Ollama. Attached, it
only talks to ``url``.

Operations: :meth:`OllamaServer.load` is ``POST /api/generate`` with no prompt and a
``keep_alive`` (Ollama loads the model and answers one JSON object), :meth:`unload` the same
with ``keep_alive: 0``, :meth:`loaded` is ``GET /api/ps`` and :meth:`models` ``GET /api/tags``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from securellm_bridge.errors import (Conflict, InvalidRequest, NotFound, Unavailable,
                                     UpstreamError, UpstreamTimeout)

from .children import ChildRegistry, child_environment
from .ports import free_port, require_loopback, url_host
from .process import SupervisedProcess
from .states import Launch, ProcessEvent, RestartPolicy, State

log = logging.getLogger(__name__)

#: Seconds, or a Go duration string ("5m", "1h30m"); negative: forever; 0: unload now.
KeepAlive = float | int | str
_LEVEL = re.compile(r"\blevel=(\w+)")
_BIND_FAILED = "address already in use"
_LEVELS = {"ERROR": logging.ERROR, "WARN": logging.WARNING, "INFO": logging.INFO,
           "DEBUG": logging.DEBUG}


@dataclass(frozen=True, slots=True)
class OllamaModel:
    """A model Ollama has on disk (``/api/tags``)."""

    name: str
    size: int
    digest: str
    modified_at: str
    details: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model Ollama holds in memory (``/api/ps``); sizes in bytes."""

    name: str
    size: int
    size_vram: int
    expires_at: datetime | None
    context_length: int | None


def parse_line(line: str) -> tuple[int, str]:
    """Ollama's ``slog`` lines carry ``level=``; ``Error: ...`` is how it reports a fatal one."""
    match = _LEVEL.search(line)
    if match:
        return _LEVELS.get(match[1].upper(), logging.INFO), line
    return (logging.ERROR if line.startswith("Error:") else logging.INFO), line


def _bind_failed(tail: Sequence[str]) -> bool:
    return any(_BIND_FAILED in line for line in tail)


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


class OllamaServer:
    """One Ollama server: ``binary`` to supervise, or ``url`` to attach to (exactly one).

    ``env`` adds variables for ``ollama serve`` (``OLLAMA_NUM_PARALLEL``, ...): it inherits
    only :data:`~.children.INHERITED_ENV` from the daemon. ``pick_port(host)`` chooses the port
    of each process (default: a free one).
    """

    def __init__(self, *, binary: Path | str | None = None, url: str | None = None,
                 models_dir: Path | str | None = None, host: str = "127.0.0.1",
                 env: Mapping[str, str] | None = None, ready_timeout: float = 60.0,
                 request_timeout: float = 30.0, load_timeout: float = 600.0,
                 grace: float = 10.0, restart_policy: RestartPolicy = RestartPolicy(),
                 registry: ChildRegistry | None = None, name: str = "ollama",
                 pick_port: Callable[[str], int] = free_port) -> None:
        if (binary is None) == (url is None):
            raise InvalidRequest("give exactly one of binary (supervise ollama serve) and url "
                                 "(attach to a running ollama)", param="binary")
        self.name = name
        self.host = require_loopback(host)
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.request_timeout = request_timeout
        self.load_timeout = load_timeout
        self._env = dict(env or {})
        self._pick_port = pick_port
        self._port = pick_port(self.host) if url is None else None
        self._url = url.rstrip("/") if url is not None else None
        if self._url is not None and urlsplit(self._url).scheme not in ("http", "https"):
            raise InvalidRequest(f"ollama url must be http(s)://..., not {url!r}", param="url")
        self._binary = str(binary) if binary is not None else None
        self._session: aiohttp.ClientSession | None = None
        self.process = None if binary is None else SupervisedProcess(
            name, self._launch, self._healthy, program="ollama", logger=log,
            ready_timeout=ready_timeout, grace=grace, policy=restart_policy, parse=parse_line,
            retryable=_bind_failed,
            registry=registry)
        self._attached_ready = False

    def __repr__(self) -> str:
        return f"OllamaServer({self.name!r}, state={self.state.value}, pid={self.pid})"

    @property
    def supervised(self) -> bool:
        return self.process is not None

    @property
    def state(self) -> State:
        if self.process is not None:
            return self.process.state
        return State.READY if self._attached_ready else State.STOPPED

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def base_url(self) -> str:
        """Known before :meth:`start`; a port taken meanwhile is replaced at start."""
        if self._url is not None:
            return self._url
        return f"http://{url_host(self.host)}:{self._port}"

    def on_event(self, callback: Callable[[ProcessEvent], None]) -> Callable[[], None]:
        """Transitions of the supervised process (an attached server has none)."""
        if self.process is None:
            return lambda: None
        return self.process.on_event(callback)

    async def start(self) -> None:
        """Supervised: start ``ollama serve`` and wait until it answers. Attached: check that
        the server answers (:class:`Unavailable` otherwise)."""
        if self.state not in (State.STOPPED, State.FAILED):
            raise Conflict(f"{self.name} is already {self.state.value}")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            if self.process is not None:
                await self.process.start()
            else:
                await self.version()
                self._attached_ready = True
        except BaseException:
            if self.state in (State.STOPPED, State.FAILED):  # not when only this wait was cancelled
                await self._close_session()
            raise

    async def stop(self, *, grace: float | None = None) -> None:
        """Supervised: stop ``ollama serve``. Attached: only forget the connection."""
        if self.process is not None:
            await self.process.stop(grace=grace)
        self._attached_ready = False
        await self._close_session()

    async def version(self) -> str:
        body = await self._call("GET", "/api/version")
        return str(body.get("version", ""))

    async def load(self, model: str, keep_alive: KeepAlive = -1) -> None:
        """Load ``model`` and keep it for ``keep_alive`` (default: until unloaded)."""
        await self._call("POST", "/api/generate",
                         {"model": model, "keep_alive": keep_alive, "stream": False},
                         timeout=self.load_timeout)

    async def unload(self, model: str) -> None:
        await self._call("POST", "/api/generate",
                         {"model": model, "keep_alive": 0, "stream": False})

    async def loaded(self) -> list[LoadedModel]:
        body = await self._call("GET", "/api/ps")
        return [LoadedModel(name=str(m.get("name") or m.get("model")), size=int(m.get("size", 0)),
                            size_vram=int(m.get("size_vram", 0)),
                            expires_at=_timestamp(m.get("expires_at")),
                            context_length=m.get("context_length"))
                for m in body.get("models") or []]

    async def models(self) -> list[OllamaModel]:
        body = await self._call("GET", "/api/tags")
        return [OllamaModel(name=str(m.get("name") or m.get("model")), size=int(m.get("size", 0)),
                            digest=str(m.get("digest", "")),
                            modified_at=str(m.get("modified_at", "")),
                            details=m.get("details") or {})
                for m in body.get("models") or []]

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                    timeout: float | None = None) -> dict[str, Any]:
        if self._session is None:
            raise Unavailable(f"{self.name} is not started")
        limit = self.request_timeout if timeout is None else timeout
        try:
            async with self._session.request(
                    method, f"{self.base_url}{path}", json=body,
                    timeout=aiohttp.ClientTimeout(total=limit)) as response:
                status, raw = response.status, await response.read()
        except TimeoutError:
            raise UpstreamTimeout(f"{self.name} did not answer {path} within {limit:g} s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{self.name} is unreachable: {exc}") from None
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            raise UpstreamError(f"{self.name} answered {path} with invalid JSON") from None
        if not isinstance(parsed, dict):
            raise UpstreamError(f"{self.name} answered {path} with {type(parsed).__name__}")
        if status == 200:
            return parsed
        message = f"{self.name} {path}: {parsed.get('error') or f'HTTP {status}'}"
        if status == 404:
            raise NotFound(message)
        if status == 400:
            raise InvalidRequest(message)
        raise UpstreamError(message)

    def _launch(self) -> Launch:
        assert self._binary is not None and self.process is not None
        if _bind_failed(self.process.log_tail):  # the last process's output
            self._port = self._pick_port(self.host)
        env = {**self._env, "OLLAMA_HOST": f"{url_host(self.host)}:{self._port}"}
        if self.models_dir is not None:
            env["OLLAMA_MODELS"] = str(self.models_dir)
        return Launch((self._binary, "serve"), child_environment(env))

    async def _healthy(self) -> bool:
        if self._session is None:
            return False
        try:
            async with self._session.get(f"{self.base_url}/",
                                         timeout=aiohttp.ClientTimeout(total=2.0)) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
