"""Helpers for tests with the real llama-server: tiny models, daemon config, live processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from securellm_bridge.local.estimate import estimate
from securellm_bridge.local.gguf_meta import read_gguf_meta

from .gguf_models import write_tiny_llama
from .llama import require_llama_server

MIB = 1024 * 1024


def write_models(directory: Path, names: tuple[str, ...] = ("tiny-a", "tiny-b", "tiny-c")) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return {n: write_tiny_llama(directory / f"{n}.gguf", name=n, seed=i) for i, n in enumerate(names)}


def need_bytes(path: Path, ctx: int = 256, gpu_layers: int = 2) -> int:
    """What the scheduler reserves for one of these models on a (simulated) GPU."""
    return estimate(read_gguf_meta(path), n_ctx=ctx, gpu_layers=gpu_layers).total_gpu


def local_config(models_dir: Path, *, fit: int | None = None, per_model: dict[str, dict[str, Any]] | None = None,
                 policy: str = "lru", one_model: Path | None = None) -> dict[str, Any]:
    """``[local]``, ``[backends]`` and ``[vram]`` tables; ``fit`` models fit on the simulated GPU."""
    models = {name: {"ctx": 256, "gpu_layers": 2, **(per_model or {}).get(name, {})}
              for name in (p.stem for p in sorted(models_dir.glob("*.gguf")))}
    vram: dict[str, Any] = {"headroom_mib": 0, "threshold_percent": 100, "eviction_policy": policy,
                            "polling_interval_seconds": 0.5}
    sample = one_model or sorted(models_dir.glob("*.gguf"))[0]
    if fit is not None:
        vram["simulate_total_mib"] = (fit * need_bytes(sample) + need_bytes(sample) // 2) // MIB + 1
    else:
        vram["simulate_total_mib"] = 64 * 1024
    return {"local": {"model_dirs": [str(models_dir)], "models": models, "load_timeout_seconds": 60},
            "backends": {"llamacpp": {"binary": str(require_llama_server())}}, "vram": vram}


def llama_servers(parent: int | None = None) -> dict[str, int]:
    """alias → pid of every live llama-server (optionally only children of ``parent``)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state in ("Z", "X") or not argv or not argv[0].endswith(b"llama-server"):
            continue
        if parent is not None and int(ppid) != parent:
            continue
        if b"--alias" in argv:
            found[argv[argv.index(b"--alias") + 1].decode()] = int(entry.name)
    return found
