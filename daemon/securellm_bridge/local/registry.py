"""The local model registry: GGUF models on this host, by name.

Files come from scanning ``[local] model_dirs`` and from ``[local.models.NAME] path``
(naming rules in :mod:`.scan`). Each file is a row of the ``models`` table; lookups
(:meth:`Registry.get`, :meth:`Registry.list`) are synchronous, from memory. A scan walks
the disk and parses changed files in an executor, writes its changes in one transaction
and then swaps the in-memory index, so readers never see half a scan.

A :class:`ModelEntry` carries the effective settings of its ``[local.models.NAME]`` table
(or the defaults), and :meth:`ModelEntry.meta` gives the parsed :class:`GgufMeta` that the
memory estimator needs, parsed once per file version.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config.local import Backend, LocalConfig, LocalModelConfig
from ..errors import Conflict
from ..store import Database
from ..store import models as models_store
from ..store.models import ModelRow, Status
from .gguf_meta import GgufMeta, read_gguf_meta
from .scan import Fingerprint, ScanResult, plan_scan

__all__ = ["MetaCache", "ModelEntry", "ModelUnavailable", "Registry", "ScanResult", "build_entries"]

log = logging.getLogger(__name__)


class ModelUnavailable(Conflict):
    """The model has no usable GGUF file (missing, corrupt, changed, or served by ollama by name)."""

    code = "model_unavailable"


@dataclass(frozen=True)
class ModelEntry:
    """A local model: what its file is, and the settings it runs with."""

    name: str
    #: The GGUF file (the first shard of a split model); None for an ollama model named by tag.
    path: str | None
    format: Literal["gguf", "ollama"]
    status: Status
    #: Why the model is not usable (status ``missing`` or ``corrupt``).
    error: str | None
    #: Bytes of all its files, and the newest mtime: what the scan compares.
    size_bytes: int | None
    mtime_ns: int | None
    architecture: str | None
    layer_count: int | None
    context_length: int | None
    quantization: str | None
    #: When the file was first seen, and the last scan that saw it.
    created_at: float | None
    last_scanned: float | None
    # Effective settings: its [local.models.NAME] table merged over the defaults.
    backend: Backend
    priority: int
    pinned: bool
    ctx: int | None
    gpu_layers: int | None
    keep_alive: float
    parallel: int
    extra_args: tuple[str, ...]
    #: Whether a ``[local.models.NAME]`` table applies to it.
    configured: bool
    #: The GGUF header's key/value pairs (long arrays summarised).
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _cache: MetaCache | None = field(default=None, repr=False, compare=False)

    @property
    def usable(self) -> bool:
        return self.status == "ok"

    async def meta(self) -> GgufMeta:
        """The parsed GGUF metadata (cached); :class:`ModelUnavailable` if there is no usable file."""
        if self.format != "gguf" or self.path is None:
            raise ModelUnavailable(f"model {self.name} is served by ollama by name; it has no GGUF file here")
        if self.status != "ok" or self._cache is None or self.size_bytes is None or self.mtime_ns is None:
            raise ModelUnavailable(f"model {self.name} is {self.status}: {self.error or 'not scanned yet'}")
        meta = await self._cache.get(self.path, (self.size_bytes, self.mtime_ns))
        if meta.file_size != self.size_bytes:
            raise ModelUnavailable(f"model {self.name}: {self.path} changed since the last scan; rescan")
        return meta


class MetaCache:
    """Parsed GGUF metadata by path and fingerprint; parses in an executor, once per version."""

    def __init__(self) -> None:
        self._metas: dict[str, tuple[Fingerprint, GgufMeta]] = {}
        self._pending: dict[tuple[str, Fingerprint], asyncio.Future[GgufMeta]] = {}

    def put(self, path: str, fp: Fingerprint, meta: GgufMeta) -> None:
        self._metas[path] = (fp, meta)

    def retain(self, current: Mapping[str, Fingerprint]) -> None:
        """Forget metadata of files that are gone or changed."""
        self._metas = {p: v for p, v in self._metas.items() if current.get(p) == v[0]}

    def cached(self, path: str, fp: Fingerprint) -> GgufMeta | None:
        hit = self._metas.get(path)
        return hit[1] if hit is not None and hit[0] == fp else None

    async def get(self, path: str, fp: Fingerprint) -> GgufMeta:
        if (meta := self.cached(path, fp)) is not None:
            return meta
        key = (path, fp)
        future = self._pending.get(key)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(None, read_gguf_meta, path)
            self._pending[key] = future
            future.add_done_callback(lambda f: self._parsed(key, f))
        return await asyncio.shield(future)

    def _parsed(self, key: tuple[str, Fingerprint], future: asyncio.Future[GgufMeta]) -> None:
        self._pending.pop(key, None)
        if not future.cancelled() and future.exception() is None:
            self.put(key[0], key[1], future.result())


def build_entries(rows: Iterable[ModelRow], cfg: LocalConfig, cache: MetaCache) -> dict[str, ModelEntry]:
    """Entries by name: every row with its settings merged, plus configured models without a row."""
    entries: dict[str, ModelEntry] = {}
    for row in rows:
        mc = cfg.models.get(row.name)
        if mc is not None and mc.path is not None and os.path.normpath(mc.path) != row.path:
            mc = None  # the config moved this name to another file; the next scan renames
        entries[row.name] = ModelEntry(
            row.name, row.path, "gguf", row.status, row.error, row.size_bytes, row.mtime_ns,
            row.architecture, row.layer_count, row.context_length, row.quantization,
            row.created_at, row.last_scanned, **_settings(mc), metadata=row.metadata, _cache=cache)
    for name, mc in cfg.models.items():
        if name in entries or mc.path is not None:
            continue  # a configured path appears once scanned
        if mc.backend == "ollama":
            entries[name] = ModelEntry(name, None, "ollama", "ok", None, None, None, None, None, None, None,
                                       None, None, **_settings(mc))
        else:
            error = f"not found under local.model_dirs; set local.models.{name}.path"
            entries[name] = ModelEntry(name, None, "gguf", "missing", error, None, None, None, None, None,
                                       None, None, None, **_settings(mc))
    return entries


def _settings(mc: LocalModelConfig | None) -> dict[str, Any]:
    eff = mc if mc is not None else LocalModelConfig()
    return {"backend": eff.backend, "priority": eff.priority, "pinned": eff.pinned, "ctx": eff.ctx,
            "gpu_layers": eff.gpu_layers, "keep_alive": eff.keep_alive, "parallel": eff.parallel,
            "extra_args": eff.extra_args, "configured": mc is not None}


class Registry:
    """Local models by name. ``await load()`` (or a first ``scan()``), then lookups are sync."""

    def __init__(self, db: Database, cfg: LocalConfig) -> None:
        self._db = db
        self._cfg = cfg
        self._cache = MetaCache()
        #: Rows by path as last written; None until loaded (or after a failed write).
        self._rows: dict[str, ModelRow] | None = None
        self._entries: dict[str, ModelEntry] = build_entries((), cfg, self._cache)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def config(self) -> LocalConfig:
        return self._cfg

    async def load(self) -> None:
        """Read the rows of previous scans, so that lookups work before the first scan."""
        async with self._lock:
            await self._load_locked()

    async def scan(self) -> ScanResult:
        """Rescan now (one scan at a time; a caller during a scan waits, then scans again)."""
        async with self._lock:
            if self._rows is None:
                await self._load_locked()
            assert self._rows is not None
            previous = self._rows
            loop = asyncio.get_running_loop()
            plan = await loop.run_in_executor(None, plan_scan, self._cfg, dict(previous))
            try:
                written = await self._db.call(models_store.apply, plan.upserts, plan.delete_ids)
            except BaseException:
                self._rows = None  # unknown what reached the database: reload before the next scan
                raise
            rows = {p: r for p, r in previous.items() if r.id not in plan.delete_ids}
            rows.update((r.path, r) for r in written)
            for path, (fp, meta) in plan.metas.items():
                self._cache.put(path, fp, meta)
            self._cache.retain({p: (r.size_bytes, r.mtime_ns) for p, r in rows.items()  # type: ignore[misc]
                                if r.status == "ok"})
            self._install(rows)
        result = plan.result
        if any((result.added, result.updated, result.missing, result.corrupt, result.removed)):
            log.info("model scan: %d added, %d updated, %d missing, %d corrupt, %d unchanged, %d removed",
                     len(result.added), len(result.updated), len(result.missing), len(result.corrupt),
                     len(result.unchanged), len(result.removed))
        return result

    def start(self) -> None:
        """Rescan every ``scan_interval_seconds`` (never when 0) and whenever :meth:`reconfigure` runs."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="model-registry")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def reconfigure(self, cfg: LocalConfig) -> None:
        """Apply a reloaded ``[local]``: settings at once; files and names at the rescan this triggers."""
        self._cfg = cfg
        if self._rows is not None:
            self._install(self._rows)
        else:
            self._entries = build_entries((), cfg, self._cache)
        if self._task is not None:
            self._wake.set()

    def get(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def list(self) -> builtins.list[ModelEntry]:
        """Every entry, by name."""
        return sorted(self._entries.values(), key=lambda e: e.name)

    async def _load_locked(self) -> None:
        rows = await self._db.call(models_store.all_rows)
        self._install({r.path: r for r in rows})

    def _install(self, rows: dict[str, ModelRow]) -> None:
        self._rows = rows
        self._entries = build_entries(rows.values(), self._cfg, self._cache)

    async def _run(self) -> None:
        while True:
            interval = self._cfg.scan_interval_seconds
            try:
                await asyncio.wait_for(self._wake.wait(), interval if interval > 0 else None)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.scan()
            except Exception:
                log.exception("model scan failed; the previous index stays in use")
