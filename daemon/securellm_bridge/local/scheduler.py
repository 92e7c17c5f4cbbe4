"""Which local models are loaded: on-demand loads, idle unloads, eviction under memory
pressure, hot swap.

Loads run one at a time, highest model priority first (a priority queue), so memory
decisions never race. Before a load, the model's memory need is estimated from its GGUF
(``estimate.py``); if it would push use above ``[vram] threshold_percent`` (minus
``headroom_mib``), idle unpinned models are evicted by ``eviction_policy``. A model with
requests in flight is never killed: the load waits for it to go idle (up to the load
timeout). Concurrent requests for a model that is loading wait for that one load.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Callable, Protocol

from ..errors import NotFound, Unavailable
from .backends.states import StartupFailed
from .estimate import MIB, InsufficientMemory, auto_params, estimate
from .events import Event, EventBus
from .eviction import Resident, plan

if TYPE_CHECKING:
    from ..config.schema import Config
    from .backends.llamacpp import LoadProgress
    from .registry import ModelEntry, Registry
    from .vram import MemoryMonitor

log = logging.getLogger(__name__)
IDLE_CHECK_SECONDS = 1.0
Progress = Callable[[str, str, float], None]  # (stage, detail, percent or -1)


class Instance(Protocol):
    kind: str
    provider: object
    pid: int | None
    state: str

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...

    def use(self) -> "object": ...


@dataclass
class Slot:
    name: str
    instance: Instance
    bytes: int
    gpu_layers: int
    ctx: int
    priority: int
    pinned: bool
    keep_alive: float
    loaded_at: float
    last_used: float
    in_flight: int = 0

    def resident(self) -> Resident:
        return Resident(self.name, self.bytes, self.priority, self.pinned, self.in_flight, self.loaded_at,
                        self.last_used)


@dataclass(order=True)
class _Job:
    sort_key: tuple[int, int]
    name: str = field(compare=False)
    gpu_layers: int | None = field(compare=False)
    ctx: int | None = field(compare=False)
    future: asyncio.Future["Slot"] = field(compare=False)
    progress: list[Progress] = field(compare=False)


class Scheduler:
    def __init__(self, registry: "Registry", monitor: "MemoryMonitor", cfg: "Config", events: EventBus,
                 launch: Callable[["ModelEntry", int, int], Instance]) -> None:
        self.registry = registry
        self.monitor = monitor
        self.cfg = cfg
        self.events = events
        self._launch = launch
        self.slots: dict[str, Slot] = {}
        self._pending: dict[str, _Job] = {}
        self._queue: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._idle = asyncio.Event()  # set whenever a request finishes
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loader(), name="model-loader"),
                       asyncio.create_task(self._idle_unloader(), name="idle-unloader")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in self._pending.values():
            if not job.future.done():
                job.future.set_exception(Unavailable("the daemon is shutting down"))
        grace = self.cfg.server.drain_timeout_seconds
        await asyncio.gather(*(self._unload(name, "daemon stopping", grace) for name in list(self.slots)),
                             return_exceptions=True)

    # ----------------------------------------------------------------------------- requests

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[Slot]:
        """The loaded model for one request; loads it on demand. Counts the request in flight."""
        slot = self.slots.get(name) or await self.load(name)
        slot.in_flight += 1
        slot.last_used = time.monotonic()
        try:
            async with slot.instance.use():  # type: ignore[attr-defined]
                yield slot
        finally:
            slot.in_flight -= 1
            slot.last_used = time.monotonic()
            self._idle.set()

    # ------------------------------------------------------------------------- load/unload

    async def load(self, name: str, *, gpu_layers: int | None = None, ctx: int | None = None,
                   progress: Progress | None = None) -> Slot:
        """Load ``name`` (or join the load already under way); 503 if it does not finish in time."""
        if name in self.slots:
            return self.slots[name]
        entry = self.registry.get(name)
        if entry is None:
            raise NotFound(f"no local model named {name!r}", code="model_not_found", param="model")
        job = self._pending.get(name)
        if job is None:
            loop = asyncio.get_running_loop()
            job = _Job((-entry.priority, next(self._seq)), name, gpu_layers, ctx, loop.create_future(), [])
            self._pending[name] = job
            self._queue.put_nowait(job)
            self._publish("model_state", name, "queued")
        if progress is not None:
            job.progress.append(progress)
            progress("queued", "", -1)
        timeout = self.cfg.local.load_timeout_seconds
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            raise Unavailable(f"local model {name!r} did not load within {timeout:g} s", retry_after=5,
                              code="model_load_timeout") from None

    async def unload(self, name: str, reason: str = "requested") -> None:
        if name not in self.slots:
            raise NotFound(f"local model {name!r} is not loaded", code="model_not_loaded")
        await self._unload(name, reason, self.cfg.server.drain_timeout_seconds)

    async def _loader(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                slot = await self._do_load(job)
            except Exception as exc:  # reported to every waiter; the loader goes on
                self._pending.pop(job.name, None)
                log.error("local model %s failed to load: %s", job.name, exc, extra={"SECURELLM_MODEL": job.name})
                self._publish("model_state", job.name, "failed", type(exc).__name__)
                if not job.future.done():
                    # Backend start-up errors quote llama-server's log (file paths): clients get
                    # a generic message, the log has the detail.
                    ours = isinstance(exc, Unavailable | NotFound) and not isinstance(exc, StartupFailed)
                    job.future.set_exception(exc if ours else Unavailable(
                        f"local model {job.name!r} failed to load; see the daemon's log", retry_after=5,
                        code="model_load_failed"))
            else:
                self._pending.pop(job.name, None)
                if not job.future.done():
                    job.future.set_result(slot)

    async def _do_load(self, job: _Job) -> Slot:
        entry = self.registry.get(job.name)
        if entry is None:
            raise NotFound(f"no local model named {job.name!r}", code="model_not_found")

        def report(stage: str, detail: str = "", percent: float = -1) -> None:
            self._publish("load_progress", job.name, stage, detail)
            for cb in job.progress:
                cb(stage, detail, percent)

        snap = await self.monitor.refresh()
        vram = self.cfg.vram
        headroom = vram.headroom_mib * MIB
        cap = int(snap.total_bytes * vram.threshold_percent / 100)
        target = "cpu" if snap.mode == "cpu" else "gpu"
        gpu_layers, ctx, need = 0, entry.ctx or 0, 0
        if entry.backend == "llamacpp":
            meta = await entry.meta()
            budget = cap - snap.used_bytes + sum(s.bytes for s in self._evictable())
            try:
                gpu_layers, ctx = auto_params(meta, budget_bytes=max(0, budget), headroom_bytes=headroom,
                                              fixed_gpu_layers=job.gpu_layers if job.gpu_layers is not None
                                              else (0 if target == "cpu" else entry.gpu_layers),
                                              fixed_ctx=job.ctx or entry.ctx, parallel=entry.parallel,
                                              target=target)
            except InsufficientMemory as exc:
                raise Unavailable(f"local model {job.name!r} does not fit in memory: {exc}", retry_after=30,
                                  code="insufficient_memory") from None
            est = estimate(meta, n_ctx=ctx, gpu_layers=gpu_layers, parallel=entry.parallel)
            need = est.total_gpu if target == "gpu" else est.total_gpu + est.total_cpu
        await self._make_room(job.name, need + headroom, cap, report)
        report("starting", f"gpu_layers={gpu_layers} ctx={ctx}")
        instance = self._launch(entry, gpu_layers, ctx)
        self.monitor.register(job.name, need)
        # llama-server logs the stages of its load (Ollama has none); they go to whoever waits
        # for it (models load). Its first, "loading", is the one reported just below.
        def staged(p: "LoadProgress") -> None:
            if p.stage != "loading":
                report(p.stage, p.detail)

        listen = getattr(instance, "on_progress", None)
        unlisten = listen(staged) if listen is not None else None
        try:
            report("loading")
            await instance.start()
        except BaseException:
            self.monitor.unregister(job.name)
            raise
        finally:
            if unlisten is not None:
                unlisten()
        now = time.monotonic()
        slot = Slot(job.name, instance, need, gpu_layers, ctx, entry.priority, entry.pinned, entry.keep_alive, now, now)
        self.slots[job.name] = slot
        instance.on_event(lambda ev: self._on_process_event(job.name, ev))  # type: ignore[attr-defined]
        await self.monitor.refresh()
        report("ready", "", 100)
        self._publish("model_state", job.name, "ready", f"pid={instance.pid}")
        log.info("local model %s ready (pid %s, gpu_layers %d, ctx %d, %d MiB reserved)", job.name,
                 instance.pid, gpu_layers, ctx, need // MIB, extra={"SECURELLM_MODEL": job.name})
        return slot

    def _evictable(self) -> list[Slot]:
        return [s for s in self.slots.values() if not s.pinned and s.in_flight == 0]

    async def _make_room(self, name: str, need: int, cap: int, report: Callable[..., None]) -> None:
        deadline = time.monotonic() + self.cfg.local.load_timeout_seconds
        while True:
            snap = self.monitor.snapshot()
            available = cap - snap.used_bytes
            p = plan([s.resident() for s in self.slots.values()], need, available, self.cfg.vram.eviction_policy)
            if p.evict:
                # One victim at a time, then plan again: a request may have picked up another
                # candidate while this one was stopping.
                victim = p.evict[0]
                report("evicting", victim)
                self._publish("eviction", victim, "evicting", f"to make room for {name}")
                await self._unload(victim, f"evicted for {name}", self.cfg.server.drain_timeout_seconds)
                continue
            if p.enough:
                return
            if not p.wait_for:
                raise Unavailable(f"local model {name!r} does not fit: it needs {need // MIB} MiB and only "
                                  f"{max(0, available) // MIB} MiB can be freed (pinned or too large)",
                                  retry_after=30, code="insufficient_memory")
            report("waiting", "for " + ", ".join(p.wait_for) + " to finish their requests")
            self._idle.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"local model {name!r} is still waiting for busy models to go idle",
                                  retry_after=5, code="model_load_timeout")
            try:
                await asyncio.wait_for(self._idle.wait(), left)
            except TimeoutError:
                continue

    async def _unload(self, name: str, reason: str, grace: float) -> None:
        slot = self.slots.pop(name, None)
        if slot is None:
            return
        self._publish("model_state", name, "unloading", reason)
        try:
            await slot.instance.stop(grace)
        finally:
            self.monitor.unregister(name)
            await self.monitor.refresh()
            self._publish("model_state", name, "unloaded", reason)
            log.info("local model %s unloaded (%s)", name, reason, extra={"SECURELLM_MODEL": name})

    async def _idle_unloader(self) -> None:
        while True:
            await asyncio.sleep(IDLE_CHECK_SECONDS)
            now = time.monotonic()
            for slot in list(self.slots.values()):
                if (slot.keep_alive > 0 and not slot.pinned and slot.in_flight == 0
                        and now - slot.last_used >= slot.keep_alive):
                    try:
                        await self._unload(slot.name, f"idle for {slot.keep_alive:g} s",
                                           self.cfg.server.drain_timeout_seconds)
                    except Exception:
                        log.exception("idle unload of %s failed", slot.name)

    def _on_process_event(self, name: str, ev: object) -> None:
        new = getattr(ev, "new", None)
        old = getattr(ev, "old", None)
        reason = str(getattr(ev, "reason", ""))
        state = getattr(new, "value", str(new))
        if old is not None and getattr(old, "value", "") == "ready" and state == "starting":
            self._publish("crash", name, state, reason)
        else:
            self._publish("model_state", name, state, reason)
        if state == "failed":
            slot = self.slots.pop(name, None)
            if slot is not None:
                self.monitor.unregister(name)
                log.error("local model %s failed: %s", name, reason, extra={"SECURELLM_MODEL": name})

    def _publish(self, kind: str, model: str, state: str, reason: str = "") -> None:
        self.events.publish(Event(kind, model, state, reason))
