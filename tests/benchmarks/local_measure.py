"""``bench_local``'s runs: cold loads and swaps (through the bridge and directly, interleaved),
the steady state, and the mTLS handshake."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from . import loadgen
from .loadgen import perf
from .local_client import Client, Timed, connect, send
from .local_results import Results
from .local_servers import Bridge, Direct, check_flags

AUTH = "Authorization"
#: name → write_tiny_llama arguments
SIZES: dict[str, dict[str, int]] = {"L2-e64": {}, "L4-e128": {"n_layer": 4, "n_embd": 128}}

#: Steps of a load in the daemon's log: (name, texts of the line that ends the step).
#: (The "listening" line llama-server prints is no step: the daemon may read it from the pipe
#: after its /health probe has already succeeded.)
LOAD_STEPS = (("schedule", ("llama-server {m}: stopped -> starting",)),  # request → spawn requested
              ("spawn", ("llama-server {m}: started pid",)),  # fork + exec of llama-server
              ("start + probe", ("llama-server {m}: starting -> ready",)),  # its start; /health every 50 ms
              ("register", ("local model {m} ready",)))  # session, memory monitor, events


async def cold_bridge(bridge: Bridge, model: str) -> tuple[float, dict[str, float]]:
    """(request → first token, how long each of ``LOAD_STEPS`` took by the daemon's log)."""
    conn = await connect(bridge.target)
    wall0 = time.time()
    r = (await send(conn, bridge.target, model, True)).check(f"bridge cold load of {model}", True)
    conn.close()
    steps, last = {}, wall0
    for name, texts in LOAD_STEPS:
        at = bridge.log_time(*(t.format(m=model) for t in texts), after=wall0)
        steps[name], last = at - last, at
    steps["ready"] = last - wall0
    return r.token - r.start, steps


async def cold_direct(binary: Path, model: Path, alias: str, extra: list[str], log: Path
                      ) -> tuple[float, float, float]:
    """(spawn → first token, spawn → /health 200, SIGTERM → exit)."""
    srv = Direct.spawn(binary, model, alias, extra, log)
    try:
        await srv.wait_healthy()
        conn = await connect(srv.target)
        r = (await send(conn, srv.target, alias, True)).check(f"direct cold load of {alias}", True)
        conn.close()
        # As the bridge does before it stops a backend: no connection left open. llama-server
        # exits in ~2 ms then, but only after its next 100 ms poll while a client stays connected.
        await asyncio.sleep(0.05)
    finally:
        stopped = srv.stop()
    return r.token - srv.spawned, srv.healthy - srv.spawned, stopped


@dataclass
class Swapper:
    """The daemon whose simulated GPU fits one model, and which model it holds now."""

    bridge: Bridge
    current: str | None = None

    async def request(self, model: str) -> tuple[float, float, float]:
        """(request → first token, request → victim unloaded, victim unloaded → ready)."""
        conn = await connect(self.bridge.target)
        wall0 = time.time()
        r = (await send(conn, self.bridge.target, model, True)).check(f"swap {self.current} -> {model}", True)
        conn.close()
        victim, self.current = self.current, model
        if victim is None:
            return r.token - r.start, 0.0, 0.0
        evicted = self.bridge.log_time(f"local model {victim} unloaded (evicted for {model})", after=wall0)
        ready = self.bridge.log_time(f"local model {model} ready", after=wall0)
        return r.token - r.start, evicted - wall0, ready - evicted


async def measure_loads(res: Results, roomy: Bridge, swapper: Swapper, binary: Path, extra: list[str],
                        models: dict[str, list[Path]], pairs: dict[str, tuple[str, str]], tmp: Path,
                        repeats: int) -> None:
    """Cold loads through the bridge and directly, and swaps, interleaved so that they share the
    machine's noise; the bridge goes first in even rounds, the direct start in odd ones."""
    await swapper.request(pairs[next(iter(pairs))][1])  # something to evict; not measured
    for i in range(repeats):
        for size, paths in models.items():
            path = paths[i]
            alias = path.stem
            for who in ("bridge", "direct") if i % 2 == 0 else ("direct", "bridge"):
                if who == "bridge":
                    total, steps = await cold_bridge(roomy, alias)
                    res.add(size, "cold_bridge", total)
                    res.add(size, "cold_bridge_ready", steps["ready"])
                    res.add(size, "cold_bridge_after_ready", total - steps["ready"])
                    for step, took in steps.items():
                        res.add(size, f"step_{step}", took)
                    if i == 0 and (problem := check_flags(roomy, alias, binary, path, extra)):
                        res.notes.append(problem)
                else:
                    total, healthy, stopped = await cold_direct(binary, path, alias, extra, tmp / "direct.log")
                    res.add(size, "cold_direct", total)
                    res.add(size, "cold_direct_ready", healthy)
                    res.add(size, "cold_direct_after_ready", total - healthy)
                    res.add(size, "sigterm_exit", stopped)
            a, b = pairs[size]
            total, evict, load = await swapper.request(a if swapper.current != a else b)
            res.add(size, "swap", total)
            res.add(size, "swap_evict", evict)
            res.add(size, "swap_load", load)


async def measure_steady(res: Results, bridge: Bridge, binary: Path, extra: list[str], models: dict[str, Path],
                         tmp: Path, requests: int, block: int = 10) -> None:
    for size, path in models.items():
        alias = path.stem  # already loaded in ``bridge`` by the cold-load runs
        srv = Direct.spawn(binary, path, alias, extra, tmp / "direct.log")
        clients = {"bridge": Client(bridge.target), "direct": Client(srv.target, fresh=True)}

        async def one(who: str, stream: bool, case: str) -> Timed | None:
            """A request; a failure is counted (and its message kept), not measured."""
            client = clients[who]
            try:
                return (await client(alias, stream)).check(f"{who}, stream={stream}", stream)
            except (RuntimeError, ConnectionError, loadgen.ProtocolError) as exc:
                res.errors.setdefault((size, case), []).append(str(exc))
                client.close()
                return None

        try:
            await srv.wait_healthy()
            for stream in (False, True):
                kind = "stream" if stream else "whole"
                for who in clients:  # warm-up (prompt cache, pools)
                    for _ in range(3):
                        await one(who, stream, f"warm-up_{kind}_{who}")
                for start in range(0, requests, block):
                    order = list(clients) if start // block % 2 == 0 else list(clients)[::-1]
                    for who in order:
                        for _ in range(min(block, requests - start)):
                            if r := await one(who, stream, f"{kind}_{who}"):
                                res.add(size, f"{kind}_{who}", (r.token if stream else r.end) - r.start)
        finally:
            for client in clients.values():
                client.close()
            srv.stop()


async def measure_handshake(res: Results, bridge: Bridge, n: int) -> None:
    """A new mTLS connection to the bridge (TCP + TLS handshake with client certificate)."""
    for _ in range(n):
        t0 = perf()
        conn = await connect(bridge.target)
        res.add("-", "mtls_connect", perf() - t0)
        conn.close()


async def measure(args: argparse.Namespace, tmp: Path, binary: Path, cold_models: dict[str, list[Path]],
                  swap_pairs: dict[str, tuple[str, str]], bridges: dict[str, Bridge]) -> Results:
    res = Results(extra=args.extra, log_level=args.log_level)
    for bridge in bridges.values():  # the first request of a daemon pays for lazy set-up: not measured
        conn = await connect(bridge.target)
        await conn.request(f"GET /v1/models HTTP/1.1\r\nHost: {bridge.target.host}\r\n{AUTH}: "
                           f"{dict(bridge.target.headers)[AUTH]}\r\n\r\n".encode())
        conn.close()
    await measure_loads(res, bridges["roomy"], Swapper(bridges["one-fits"]), binary, args.extra, cold_models,
                        swap_pairs, tmp, args.repeats)
    await measure_steady(res, bridges["roomy"], binary, args.extra, {s: p[0] for s, p in cold_models.items()},
                         tmp, args.requests)
    await measure_handshake(res, bridges["roomy"], 20)
    return res
