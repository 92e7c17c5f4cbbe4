"""A random workload of loads, unloads and requests against the real scheduler, real
llama-server processes and a simulated GPU: memory use never exceeds the budget, a pinned
model is never evicted and a model is never unloaded under a request."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from securellm_bridge.config import parse_text
from securellm_bridge.errors import BridgeError
from securellm_bridge.local.service import LocalModels
from securellm_bridge.store import Database

from . import tomlw
from .local_models import local_config, write_models

pytestmark = pytest.mark.slow
NAMES = ("m0", "m1", "m2", "m3", "m4")


@pytest.mark.parametrize("seed, policy", [(1, "lru"), (2, "priority"), (3, "fifo")])
def test_random_workload_never_exceeds_budget(tmp_path: Path, seed: int, policy: str) -> None:
    models = write_models(tmp_path / "models", NAMES)
    per_model = {"m0": {"pinned": True}, "m1": {"priority": 3}, "m2": {"priority": 1}}
    cfg_dict = {"state": {"dir": str(tmp_path / "state")}, "security": {"tls": {"enabled": False}},
                **local_config(tmp_path / "models", fit=3, policy=policy, per_model=per_model,
                               one_model=models["m0"])}
    cfg = parse_text(tomlw.dumps(cfg_dict), "sim.toml")

    async def run() -> dict[str, int]:
        db = await Database.open(cfg.state.dir)
        local = LocalModels(cfg, db)
        await local.start()
        sched, monitor = local.scheduler, local.monitor
        cap = monitor.snapshot().total_bytes * cfg.vram.threshold_percent / 100
        rng = random.Random(seed)
        stats = {"requests": 0, "refused": 0, "loads": 0, "unloads": 0, "max_used": 0}

        def check() -> None:
            reserved = sum(s.bytes for s in sched.slots.values())
            assert reserved <= cap, f"reserved {reserved} > budget {cap}"
            stats["max_used"] = max(stats["max_used"], reserved)

        async def request(name: str) -> None:
            try:
                async with sched.use(name) as slot:
                    check()
                    await asyncio.sleep(rng.uniform(0, 0.05))
                    # An explicit unload may start meanwhile, but it drains: the process stays up.
                    assert slot.instance.state in ("ready", "draining"), "a model was killed under a request"
                stats["requests"] += 1
            except BridgeError:
                stats["refused"] += 1

        tasks: list[asyncio.Task[None]] = []
        pinned_seen = False
        try:
            for _ in range(60):
                op = rng.random()
                name = rng.choice(NAMES)
                if op < 0.7:
                    tasks.append(asyncio.create_task(request(name)))
                elif op < 0.85:
                    try:
                        await sched.load(name)
                        stats["loads"] += 1
                    except BridgeError:
                        stats["refused"] += 1
                elif name in sched.slots and name != "m0":
                    await sched.unload(name, "test")
                    stats["unloads"] += 1
                check()
                pinned_seen = pinned_seen or "m0" in sched.slots
                assert not pinned_seen or "m0" in sched.slots, "the pinned model was evicted"
                await asyncio.sleep(rng.uniform(0, 0.02))
            await asyncio.gather(*tasks)
            check()
        finally:
            await local.stop(5)
            await db.close()
        return stats

    stats = asyncio.run(run())
    print(f"seed {seed} {policy}: {stats}")
    assert stats["requests"] > 20
