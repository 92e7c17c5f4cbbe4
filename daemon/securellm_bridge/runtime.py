"""The Runtime owns every service object of the daemon and applies configuration changes.

Both planes call into the same objects held here. ``reload()`` validates the new file
completely before anything changes; then it swaps the config in one assignment and applies
the keys that can change live. Keys that need a restart are reported, not half-applied.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from . import config as config_mod
from . import logs
from .audit import AuditLog
from .config import LoadedConfig
from .config.binder import toml_name
from .config.limits import RateLimitConfig
from .config.secrets import Secret
from .control.server import ControlServer
from .api.server import HttpServer
from .lifecycle import Notifier
from .local.service import LocalModels
from .local.vram import MemoryMonitor
from .pipeline import Pipeline
from .providers import registry
from .providers.base import Provider
from .router.router import Router
from .security.keys import KeyService
from .security.ratelimit import RateLimiter
from .errors import ConfigErrors
from .store import Database
from .usage import UsageRecorder

log = logging.getLogger(__name__)

#: Config keys that are read once at start; a change is reported and needs a restart.
RESTART_KEYS = ("server.listen", "control.socket", "control.socket_mode", "control.socket_group", "state.dir",
                "security.tls.enabled", "limits.max_header_bytes", "limits.max_body_bytes")
RESTART_KEYS += AuditLog.RESTART_KEYS + MemoryMonitor.RESTART_KEYS
KEY_FLUSH_INTERVAL_S = 5.0


@dataclass(frozen=True)
class ReloadResult:
    path: str
    applied: tuple[str, ...]
    restart_required: tuple[str, ...]


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{toml_name(f)}"
        if dataclasses.is_dataclass(value) and not isinstance(value, Secret):  # a Secret is one key
            out.update(_flatten(value, key + "."))
        elif isinstance(value, dict) and all(dataclasses.is_dataclass(v) for v in value.values()):
            # A table of tables ([providers.NAME], [local.models.NAME]): one key per setting,
            # so that a change is reported (and acted on) as "providers.NAME.KEY".
            for name, item in value.items():
                out.update(_flatten(item, f"{key}.{name}."))
        else:
            out[key] = value
    return out


def changed_keys(old: config_mod.Config, new: config_mod.Config) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class Runtime:
    def __init__(self, loaded: LoadedConfig, notifier: Notifier) -> None:
        self.loaded = loaded
        self.notifier = notifier
        self.state = "starting"
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.config_loaded_at = self.started_at
        self.listeners: list[tuple[str, str, str]] = []
        self.db: Database | None = None
        self.audit = AuditLog(loaded.config.security.audit, loaded.config.state.dir)
        self.keys: KeyService
        self.usage: UsageRecorder
        self.control: ControlServer | None = None
        self.http: HttpServer | None = None
        self.limiter: RateLimiter
        self.router: Router
        self.pipeline = Pipeline(self)
        self.draining = False
        self.local: LocalModels | None = None
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def config(self) -> config_mod.Config:
        return self.loaded.config

    async def start(self) -> None:
        cfg = self.config
        self.notifier.status("Opening state database")
        self.db = await Database.open(cfg.state.dir)
        self.notifier.status("Opening audit log")
        await self.audit.start()
        self.keys = KeyService(self.db)
        self.usage = UsageRecorder(self.db)
        await self.keys.load()
        self.limiter = RateLimiter(*_rate_limits(cfg))
        self.notifier.status("Scanning local models")
        self.local = LocalModels(cfg, self.db)
        await self.local.start()
        self.router = Router(cfg.router, await _start_providers(cfg), local=self.local.provider)
        self.notifier.status("Binding HTTPS listener")
        self.http = HttpServer(self)
        await self.http.start()
        self.listeners.append((self.http.protocol, self.http.address, self.http.protocol))
        self.notifier.status("Binding control socket")
        self.control = ControlServer(cfg.control, self)
        await self.control.start()
        self.listeners.append(("control", self.control.address, "grpc"))
        self._tasks.append(asyncio.create_task(self._flush_keys_periodically(), name="key-flush"))
        self.usage.start()
        self.state = "ready"

    def counts(self) -> dict[str, int]:
        return {**self.keys.counts(), "audit_seq": self.audit.last_seq}

    def status_line(self) -> str:
        where = ", ".join(addr for _, addr, _ in self.listeners)
        return f"Ready: serving {where}"

    async def reload(self) -> ReloadResult:
        """Re-read the config file; raises ConfigErrors (old config stays) when invalid."""
        async with self._reload_lock:
            path = self.loaded.path
            loop = asyncio.get_running_loop()
            try:
                new = await loop.run_in_executor(None, config_mod.load, path)
            except ConfigErrors as exc:
                self.audit.config_reload_failed(path, exc)
                raise
            changed = changed_keys(self.config, new.config)
            restart = tuple(k for k in changed if k in RESTART_KEYS)
            applied = tuple(k for k in changed if k not in RESTART_KEYS)
            cfg = new.config
            if self.http is not None:
                self.http.reload_tls(cfg)  # re-reads the certificates; a bad file keeps the old ones
            if any(k.startswith(("providers.", "router.")) for k in changed):
                old_router = self.router
                self.router = Router(cfg.router, await _start_providers(cfg), old_router.stats,
                                     local=self.local.provider)
                asyncio.get_running_loop().call_later(
                    cfg.limits.request_timeout_seconds, lambda: asyncio.ensure_future(_close(old_router)))
            self.limiter.reconfigure(*_rate_limits(cfg))
            if self.local is not None:
                self.local.reconfigure(cfg)
            if restart:
                log.warning("config keys changed that take effect only after a restart: %s", ", ".join(restart))
            log.info("configuration reloaded from %s (%d keys changed)", path, len(changed))
            self.loaded = new
            self.config_loaded_at = time.time()
            logs.set_level(new.config.log.level)
            self.audit.config_reloaded(path, changed, restart)
            self.audit.configure(new.config.security.audit)
            return ReloadResult(path, applied, restart)

    async def stop(self) -> None:
        self.state = "stopping"
        self.draining = True
        grace = self.config.server.drain_timeout_seconds
        if self.http is not None:
            await self.http.stop(grace)
        if self.control is not None:
            await self.control.stop(grace)
        if hasattr(self, "router"):
            await _close(self.router)
        if self.local is not None:
            await self.local.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.db is not None:
            await self.keys.flush()
            await self.usage.stop()
            await self.db.close()
        await self.audit.close()

    async def _flush_keys_periodically(self) -> None:
        while True:
            await asyncio.sleep(KEY_FLUSH_INTERVAL_S)
            try:
                await self.keys.flush()
            except Exception:
                log.exception("flushing key usage failed; will retry")


def _rate_limits(cfg: config_mod.Config) -> tuple[RateLimitConfig, RateLimitConfig, dict[str, RateLimitConfig]]:
    """The global, per-key default and per-provider limits, as :class:`RateLimiter` takes them."""
    return cfg.limits.global_, cfg.limits.key, {n: p.rate_limit for n, p in cfg.providers.items()}


async def _start_providers(cfg: config_mod.Config) -> dict[str, Provider]:
    providers = {name: registry.build(name, p) for name, p in cfg.providers.items()}
    for p in providers.values():
        await p.start()
    return providers


async def _close(router: Router) -> None:
    for p in router.providers.values():
        await p.close()
