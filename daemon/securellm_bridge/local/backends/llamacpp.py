"""One GGUF model served by a supervised ``llama-server`` on a private loopback port.

Every process gets a fresh random API key (``secrets.token_urlsafe``) and listens on a free
loopback port, kept across crash restarts so that ``base_url`` stays put; a new port is
picked only when the old one was taken meanwhile ("couldn't bind", retried at once).
The key reaches llama-server through its ``LLAMA_API_KEY`` environment variable, not
``--api-key``: a command line is readable by every user in ``/proc/PID/cmdline``, a
process's environment only by its owner. llama-server logs a masked key (``****abcd``); the
parser redacts that line too, so no part of the key reaches the journal.

Ready means ``GET /health`` answers 200 (503 while the model loads). The load log is kept:
the buffer sizes it prints at ``-lv 4`` ("model buffer size", "KV buffer size", "compute
buffer size") are the ground truth for :mod:`securellm_bridge.local.estimate`, and its
milestones become :class:`LoadProgress` callbacks (llama-server logs stages, not a
percentage). Start-up failures raise :class:`StartupFailed` naming the log's errors.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from securellm_bridge.errors import Conflict, InvalidRequest

from .children import ChildRegistry, child_environment
from .output import OutputLine
from .ports import free_port, require_loopback, url_host
from .process import SupervisedProcess
from .states import Launch, NotReady, ProcessEvent, RestartPolicy, State

log = logging.getLogger(__name__)

_PREFIX = re.compile(r"^\d+\.\d{2}\.\d{3}\.\d{3} ([DIWE]) (.*)$")
_LEVELS = {"E": logging.ERROR, "W": logging.WARNING, "I": logging.INFO, "D": logging.DEBUG}
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")
_MASKED_KEY = re.compile(r"(api_keys?:\s*)\S.*")
_BIND_FAILED = "couldn't bind HTTP server socket"
#: Log milestones of a model load, in order: (text in the line, stage).
_STAGES = (("loading model '", "loading"), ("loading model tensors", "tensors"),
           ("constructing llama_context", "context"), ("warming up the model", "warmup"),
           ("model loaded", "loaded"))
#: What each stage does, as ``securellmctl models load`` shows it.
STAGE_DETAILS = {"tensors": "loading the weights",
                 "context": "allocating the context and KV cache", "warmup": "a warm-up pass",
                 "loaded": "finishing start-up"}
#: Options the backend sets itself; ``extra_args`` may not repeat or override them.
MANAGED_OPTIONS = frozenset({
    "-m", "--model", "--host", "--port", "-a", "--alias", "-c", "--ctx-size", "-ngl",
    "--gpu-layers", "--n-gpu-layers", "-np", "--parallel", "--api-key", "--api-key-file",
    "--metrics", "--webui", "--no-webui", "--ui", "--no-ui", "-lv", "--verbosity",
    "--log-verbosity", "-v", "--verbose", "--log-verbose", "--log-disable", "--log-file",
    "--log-colors", "--log-jsonl", "--no-log-jsonl", "--log-prefix", "--no-log-prefix",
    "--log-timestamps", "--no-log-timestamps"})
#: ``-lv`` 5 (debug) logs the rendered chat template of requests: not for a gateway's journal.
MAX_LOG_LEVEL = 4


@dataclass(frozen=True, slots=True)
class BufferSize:
    """One "<device> <kind> buffer size = N MiB" line of the load log."""

    device: str  # CPU, CPU_Mapped, CUDA0, ...
    kind: str  # model, KV, compute, output
    mib: float


@dataclass(frozen=True, slots=True)
class LoadLog:
    """What the current process logged about its memory while loading."""

    lines: tuple[str, ...]
    buffers: tuple[BufferSize, ...]

    def mib(self, kind: str, device_prefix: str = "") -> float:
        """Total MiB of ``kind`` buffers on devices whose name starts with ``device_prefix``."""
        return sum(b.mib for b in self.buffers
                   if b.kind == kind and b.device.startswith(device_prefix))


@dataclass(frozen=True, slots=True)
class LoadProgress:
    name: str
    stage: str  # loading, tensors, context, warmup, loaded
    line: str

    @property
    def detail(self) -> str:
        """What the stage does, as ``securellmctl models load`` shows it."""
        return STAGE_DETAILS.get(self.stage, "")


def _bind_failed(tail: Sequence[str]) -> bool:
    return any(_BIND_FAILED in line for line in tail)


def check_extra_args(extra_args: Sequence[str]) -> tuple[str, ...]:
    """``extra_args`` as a tuple; :class:`InvalidRequest` when one sets a managed option."""
    clashes = sorted({a.split("=", 1)[0] for a in extra_args} & MANAGED_OPTIONS)
    if clashes:
        raise InvalidRequest(f"extra_args may not set {', '.join(clashes)}: the backend sets "
                             "them itself", param="extra_args")
    return tuple(extra_args)


class LlamaCppBackend:
    """``llama-server`` for model ``name`` (``model_path``), supervised; see the module doc.

    ``pick_port(host)`` chooses the port of each process (default: a free one).
    """

    def __init__(self, name: str, model_path: Path | str, *, binary: Path | str, ctx: int,
                 gpu_layers: int, parallel: int, extra_args: Sequence[str] = (),
                 host: str = "127.0.0.1", ready_timeout: float = 120.0, log_level: int = 4,
                 grace: float = 10.0, restart_policy: RestartPolicy = RestartPolicy(),
                 registry: ChildRegistry | None = None,
                 pick_port: Callable[[str], int] = free_port) -> None:
        if ctx < 0 or gpu_layers < 0 or parallel < 1:
            raise InvalidRequest("ctx and gpu_layers must be at least 0, parallel at least 1")
        if not 0 <= log_level <= MAX_LOG_LEVEL:
            raise InvalidRequest(f"log_level must be 0 to {MAX_LOG_LEVEL}", param="log_level")
        self.name = name
        self.model_path = Path(model_path)
        self.binary = Path(binary)
        self.ctx, self.gpu_layers, self.parallel = ctx, gpu_layers, parallel
        self.extra_args = check_extra_args(extra_args)
        self.host = require_loopback(host)
        self.log_level = log_level
        self._pick_port = pick_port
        self._port: int | None = None
        self._api_key: str | None = None
        self._load_lines: list[str] = []
        self._buffers: list[BufferSize] = []
        self._progress: list[Callable[[LoadProgress], None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.process = SupervisedProcess(
            name, self._launch, self._healthy, program="llama-server", logger=log,
            ready_timeout=ready_timeout, probe_interval=0.01, grace=grace, policy=restart_policy, parse=self._parse,
            retryable=_bind_failed,
            registry=registry)
        self.process.on_output(self._watch_load)

    def __repr__(self) -> str:
        url = self.base_url if self._port is not None else None
        return (f"LlamaCppBackend({self.name!r}, state={self.state.value}, pid={self.pid}, "
                f"base_url={url!r}, api_key=<redacted>)")

    @property
    def state(self) -> State:
        return self.process.state

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def restarts(self) -> int:
        return self.process.restarts

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: read it per request (a taken port is replaced)."""
        if self._port is None:
            raise NotReady(f"local model {self.name} was never started")
        return f"http://{url_host(self.host)}:{self._port}"

    @property
    def api_key(self) -> str:
        """The current process's key (it changes on a restart); never log it."""
        if self._api_key is None:
            raise NotReady(f"local model {self.name} was never started")
        return self._api_key

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def load_log(self) -> LoadLog:
        return LoadLog(tuple(self._load_lines), tuple(self._buffers))

    def on_event(self, callback: Callable[[ProcessEvent], None]) -> Callable[[], None]:
        return self.process.on_event(callback)

    def on_progress(self, callback: Callable[[LoadProgress], None]) -> Callable[[], None]:
        self._progress.append(callback)
        return lambda: self._progress.remove(callback) if callback in self._progress else None

    async def start(self) -> None:
        """Start llama-server and wait for ``/health``; :class:`StartupFailed` otherwise."""
        if self.state not in (State.STOPPED, State.FAILED):
            raise Conflict(f"local model {self.name} is already {self.state.value}")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        try:
            await self.process.start()
        except BaseException:
            if self.state in (State.STOPPED, State.FAILED):  # not when only this wait was cancelled
                await self._close_session()
            raise

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop the process (also after ``failed``: it releases the HTTP session)."""
        await self.process.stop(grace=grace)
        await self._close_session()

    async def drain(self, timeout: float) -> bool:
        return await self.process.drain(timeout)

    @asynccontextmanager
    async def use(self) -> AsyncIterator[None]:
        async with self.process.use():
            yield

    def _launch(self) -> Launch:
        if self._port is None or _bind_failed(self.process.log_tail):  # the last process's output
            self._port = self._pick_port(self.host)
        self._api_key = secrets.token_urlsafe(32)
        self._load_lines.clear()
        self._buffers.clear()
        argv = (str(self.binary), "-m", str(self.model_path), "--host", self.host,
                "--port", str(self._port), "--alias", self.name, "-c", str(self.ctx),
                "-ngl", str(self.gpu_layers), "-np", str(self.parallel), "--metrics",
                "--no-webui", "--log-colors", "off", "-lv", str(self.log_level),
                *self.extra_args)
        return Launch(argv, child_environment({"LLAMA_API_KEY": self._api_key}))

    async def _healthy(self) -> bool:
        if self._session is None:
            return False
        try:
            async with self._session.get(f"{self.base_url}/health") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    def _parse(self, line: str) -> tuple[int, str]:
        match = _PREFIX.match(line)
        if match:
            level, text = _LEVELS[match[1]], match[2]
        else:
            level = logging.WARNING if line.startswith("warning:") else logging.INFO
            text = line
        if self._api_key is not None and self._api_key in text:
            text = text.replace(self._api_key, "<redacted>")
        return level, _MASKED_KEY.sub(r"\1<redacted>", text)

    def _watch_load(self, line: OutputLine) -> None:
        for device, kind, mib in _BUFFER.findall(line.text):
            self._buffers.append(BufferSize(device, kind, float(mib)))
            self._load_lines.append(line.text)
        for needle, stage in _STAGES:
            if needle in line.text:
                progress = LoadProgress(self.name, stage, line.text)
                for callback in list(self._progress):
                    try:
                        callback(progress)
                    except Exception:
                        log.exception("load progress listener of %s failed", self.name)
                break

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
