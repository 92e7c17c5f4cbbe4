"""Everything about local models, built and torn down together: registry, memory monitor,
scheduler, event bus and the ``local`` provider the router uses."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..config.schema import Config
from ..store import Database
from .backends.children import ChildRegistry, kill_stale_children
from .events import EventBus
from .launcher import Launcher
from .provider import LocalProvider
from .registry import Registry
from .scheduler import Scheduler
from .vram import MemoryMonitor

log = logging.getLogger(__name__)
CHILDREN_FILE = "children.json"


class LocalModels:
    def __init__(self, cfg: Config, db: Database) -> None:
        self.cfg = cfg
        self.events = EventBus()
        self.registry = Registry(db, cfg.local)
        self.monitor = MemoryMonitor(cfg.vram)
        self.children = ChildRegistry(Path(cfg.state.dir) / CHILDREN_FILE)
        self.launcher = Launcher(cfg.backends, self.children, cfg.local.load_timeout_seconds)
        self.scheduler = Scheduler(self.registry, self.monitor, cfg, self.events, self.launcher)
        self.provider = LocalProvider(self.scheduler, self.registry, cfg.local.route_priority)

    async def start(self) -> None:
        killed = await kill_stale_children(self.children.path)
        if killed:
            log.warning("killed %d backend process(es) left over from a previous run", len(killed))
        await self.registry.load()
        result = await self.registry.scan()
        log.info("model registry: %d usable local models (%d corrupt, %d missing)",
                 len([e for e in self.registry.list() if e.usable]), len(result.corrupt), len(result.missing))
        await self.monitor.refresh()
        self.monitor.start()
        self.registry.start()
        self.scheduler.start()

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.registry.reconfigure(cfg.local)
        self.monitor.reconfigure(cfg.vram)
        self.scheduler.cfg = cfg
        self.launcher.backends = cfg.backends
        self.provider.cfg = replace(self.provider.cfg, priority=cfg.local.route_priority)

    async def stop(self, grace: float) -> None:
        await self.scheduler.stop()
        await self.launcher.ollama.stop(grace)
        await self.registry.stop()
        await self.monitor.stop()
