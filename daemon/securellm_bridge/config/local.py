"""``[local]``, ``[local.models.NAME]``, ``[vram]`` and ``[backends.*]``: models run on this host."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from . import checks

Backend = Literal["llamacpp", "ollama"]
EvictionPolicy = Literal["priority", "lru", "fifo"]


def _absolute_paths(value: tuple[str, ...]) -> str | None:
    for path in value:
        if problem := checks.absolute_path(path):
            return problem
    return None


def _percent(value: float) -> str | None:
    return None if 0 < value <= 100 else f"expected a percentage above 0 and at most 100, got {value!r}"


@dataclass(frozen=True)
class LocalModelConfig:
    """``[local.models.NAME]``: settings of one local model; every key is optional.

    ``NAME`` names a model found by scanning ``local.model_dirs``, or, with ``path``, names
    the file at ``path`` (wherever it is). With ``backend = "ollama"`` and no ``path``,
    ``NAME`` is a model that ollama already has (``ollama pull``).
    """

    path: str | None = field(default=None, metadata={"check": checks.absolute_path})
    backend: Backend = "llamacpp"
    #: Higher is more important to keep loaded (the ``priority`` eviction policy).
    priority: int = 0
    #: Never evicted to make room for another model.
    pinned: bool = False
    #: Context size; unset: the largest that fits, up to the model's training context.
    ctx: int | None = field(default=None, metadata={"check": checks.positive})
    #: Layers offloaded to the GPU (``-ngl``); unset: as many as fit.
    gpu_layers: int | None = field(default=None, metadata={"check": checks.non_negative_int})
    #: Seconds without requests before the model is unloaded; 0: never unloaded for idleness.
    keep_alive: float = field(default=0.0, metadata={"check": checks.non_negative})
    #: Requests served at once (llama-server ``--parallel``).
    parallel: int = field(default=1, metadata={"check": checks.positive})
    #: Extra command-line arguments for the backend process.
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocalConfig:
    """``[local]``: where GGUF models are found."""

    #: Directories scanned (recursively) for ``*.gguf``.
    model_dirs: tuple[str, ...] = field(default=(), metadata={"check": _absolute_paths})
    #: Seconds between rescans; 0: only on demand (start-up, reload, ``securellmctl``).
    scan_interval_seconds: float = field(default=300.0, metadata={"check": checks.non_negative})
    models: dict[str, LocalModelConfig] = field(default_factory=dict)
    #: How long a request waits for its model to load before it gets 503.
    load_timeout_seconds: float = field(default=120.0, metadata={"check": checks.positive})
    #: The local models' ``priority`` among providers for the router (lower is preferred).
    route_priority: int = 100

    def __post_init__(self) -> None:
        owners: dict[str, str] = {}
        for name, model in self.models.items():
            if not name.strip() or any(ord(c) < 0x20 or c == "\x7f" for c in name):
                raise ValueError(f"models.{name!r}: expected a model name without control characters")
            if model.path is None:
                continue
            if model.path in owners:
                raise ValueError(f"models.{owners[model.path]} and models.{name}: "
                                 f"both have path {model.path!r}")
            owners[model.path] = name


@dataclass(frozen=True)
class VramConfig:
    """``[vram]``: GPU memory monitoring and what the scheduler does under pressure."""

    polling_interval_seconds: float = field(default=2.0, metadata={"check": checks.positive})
    #: Memory use (percent of the total) above which models are evicted.
    threshold_percent: float = field(default=90.0, metadata={"check": _percent})
    eviction_policy: EvictionPolicy = "lru"
    #: Memory left free on top of a model's estimate when deciding whether it fits.
    headroom_mib: int = field(default=512, metadata={"check": checks.non_negative_int})
    #: Unset: the real hardware (NVML, else system RAM). Set: a simulated GPU of this size.
    simulate_total_mib: int | None = field(default=None, metadata={"check": checks.positive})


@dataclass(frozen=True)
class LlamaCppConfig:
    """``[backends.llamacpp]``."""

    #: The ``llama-server`` executable: a name looked up in PATH, or an absolute path.
    binary: str = field(default="llama-server", metadata={"check": checks.non_empty})


@dataclass(frozen=True)
class OllamaConfig:
    """``[backends.ollama]``."""

    #: The ``ollama`` executable: a name looked up in PATH, or an absolute path.
    binary: str = field(default="ollama", metadata={"check": checks.non_empty})
    #: Attach to an ollama server already running here instead of supervising one.
    url: str | None = field(default=None, metadata={"check": checks.http_url})
    #: ``OLLAMA_MODELS`` of a supervised server; unset: ollama's default.
    models_dir: str | None = field(default=None, metadata={"check": checks.absolute_path})


@dataclass(frozen=True)
class BackendsConfig:
    """``[backends]``."""

    llamacpp: LlamaCppConfig = field(default_factory=LlamaCppConfig)
    ollama: OllamaConfig = field(default_factory=OllamaConfig)
