"""``bench_proxy``'s runs: saturated and paced load on every target, memory, and profiles."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import loadgen
from .bridges import PATH
from .loadgen import PacedResult, SatResult
from .procfs import pss_mb, rss_mb
from .proxy_stack import Stack, body


@dataclass
class Results:
    sat: dict[tuple[str, bool], list[SatResult]] = field(default_factory=dict)
    paced: dict[tuple[str, bool], list[PacedResult]] = field(default_factory=dict)
    rss: dict[str, tuple[float, float]] = field(default_factory=dict)
    rss_idle: dict[str, float] = field(default_factory=dict)
    #: bridge -> (its audit writer's RSS, PSS of the bridge and the writer together), MB
    writers: dict[str, tuple[float, float]] = field(default_factory=dict)
    profile: dict[str, str] = field(default_factory=dict)

    def rps(self, target: str, stream: bool) -> float:
        return statistics.median(r.rps for r in self.sat[(target, stream)])

    def paired_ratio(self, target: str, stream: bool) -> float:
        """Median over the repeats of ``target``'s req/s / the bare proxy's in the same repeat.

        The two runs of a repeat are seconds apart, so slow drifts of a shared host (which
        move a target's req/s by 30 % or more between repeats) cancel out of each ratio; the
        ratio of the medians mixes runs from different repeats."""
        return statistics.median(a.rps / b.rps for a, b in zip(self.sat[(target, stream)],
                                                                 self.sat[("bare", stream)]))

    def cpu_us(self, target: str, stream: bool, process: str) -> float:
        """Median CPU time of ``process`` per request served, in microseconds."""
        return statistics.median(r.cpu[process] / r.rps * 1e6 for r in self.sat[(target, stream)])

    def pooled(self, target: str, stream: bool, what: str) -> list[float]:
        return [v for r in self.paced.get((target, stream), []) for v in getattr(r, what)]

    def pct_ms(self, target: str, stream: bool, what: str, p: float) -> float:
        return loadgen.percentile(self.pooled(target, stream, what), p) * 1e3


def validator(stream: bool) -> loadgen.Validator:
    return loadgen.is_stream if stream else loadgen.is_completion


def process_of(target: str) -> str:
    """The process whose CPU a target's requests cost (besides the upstream and the loadgen)."""
    return "upstream" if target.startswith("direct") else target


async def smoke(stack: Stack) -> None:
    """One request of each kind to each target: all must answer 200 with a complete body."""
    for target in stack.targets.values():
        for stream in (False, True):
            (conn,) = await loadgen.open_conns(target, 1)
            status, _, _, answer = await conn.request(target.request(PATH, body(stream)))
            conn.close()
            if status != 200 or not validator(stream)(answer):
                raise RuntimeError(f"{target.name} (stream={stream}) answered {status}: {answer[:300]!r}")


async def measure(stack: Stack, args: argparse.Namespace) -> Results:
    res = Results()
    proxies = ["bare", *stack.bridges]
    res.rss_idle = {name: rss_mb(stack.pids[name])[0] for name in proxies}
    await smoke(stack)
    paced_order = [(t, s) for s in (False, True) for t in ("direct", *proxies)]
    for rep in range(args.repeats):
        # The proxies' order flips every repeat (bare, bridge, ... then ..., bridge, bare), so
        # that a host getting busier or quieter during a run favours neither.
        turn = proxies if rep % 2 == 0 else proxies[::-1]
        sat_order = [("direct", False), ("direct-mtls", False), *((p, False) for p in turn),
                     ("direct", True), *((p, True) for p in turn)]
        for name, stream in sat_order:
            t = stack.targets[name]
            r = await loadgen.saturate(t, t.request(PATH, body(stream)), validator(stream),
                                       connections=args.connections, duration=args.duration,
                                       warmup=args.warmup,
                                       watch={**stack.pids, **{f"{b}/writer": p for b, p in stack.writers.items()}})
            res.sat.setdefault((name, stream), []).append(r)
            own = r.cpu[process_of(name)]
            _progress(f"saturated {name:<14} {'stream' if stream else 'plain ':<6} rep {rep + 1}: "
                      f"{r.rps:7.0f} req/s, {own / r.rps * 1e6:4.0f} us CPU/req, errors {r.errors}; cpu "
                      + " ".join(f"{k}={v:.0%}" for k, v in r.cpu.items() if v >= 0.005))
    if not args.no_paced:
        for rep in range(args.repeats):
            for name, stream in paced_order:
                t = stack.targets[name]
                r = await loadgen.paced(t, t.request(PATH, body(stream)), validator(stream), rate=args.rate,
                                        duration=args.paced_duration)
                res.paced.setdefault((name, stream), []).append(r)
                _progress(f"paced     {name:<14} {'stream' if stream else 'plain ':<6} rep {rep + 1}: "
                          f"p50 {loadgen.percentile(r.ttlb, 50) * 1e3:.3f} ms, p99 "
                          f"{loadgen.percentile(r.ttlb, 99) * 1e3:.3f} ms, n={len(r.ttlb)}, errors {r.errors}, "
                          f"late {r.late}")
    res.rss = {name: rss_mb(stack.pids[name]) for name in proxies}
    res.writers = {name: (rss_mb(pid)[0], pss_mb(stack.pids[name]) + pss_mb(pid))
                   for name, pid in stack.writers.items()}
    if args.profile is not None:
        await profile(stack, args, res)
    return res


async def profile(stack: Stack, args: argparse.Namespace, res: Results) -> None:
    """py-spy (Python frames) and, when ``perf`` exists, a CPU-cycle split by binary, of the
    bare proxy, the bridge and each variant under saturated load."""
    from . import profile_summary

    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    seconds = max(4.0, args.duration * 2)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    perf = shutil.which("perf")
    if not Path(pyspy).exists():
        _progress("--profile: py-spy not found (pip install py-spy into the venv); Python frames skipped")
    for who in ("bare", *stack.bridges):  # the bare proxy, the bridge and every variant
        for stream in (False, True):
            kind = f"{who}-{'stream' if stream else 'plain'}"
            tools = []
            if Path(pyspy).exists():
                tools.append(("py-spy", [pyspy, "record", "--pid", str(stack.pids[who]), "--rate", "250",
                                         "--duration", str(int(seconds)), "--format", "raw", "--nonblocking", "--gil", "--threads",
                                         "--output", str(out / f"{kind}.pyspy.txt")]))
            if perf:
                tools.append(("perf", [perf, "record", "-F", "999", "-p", str(stack.pids[who]),
                                       "-o", str(out / f"{kind}.perf.data"), "--", "sleep", str(seconds)]))
            for tool, cmd in tools:  # one at a time: py-spy's reads would show up in perf
                rec = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                await asyncio.sleep(0.3)
                t = stack.targets[who]
                await loadgen.saturate(t, t.request(PATH, body(stream)), validator(stream),
                                       connections=args.connections, duration=seconds, warmup=0.0)
                _, err = await asyncio.to_thread(rec.communicate)
                if rec.returncode != 0:
                    _progress(f"{tool} failed ({rec.returncode}): {err.strip()[-500:]}")
            parts = []
            if (out / f"{kind}.perf.data").exists():
                parts.append(profile_summary.perf_by_binary(out / f"{kind}.perf.data"))
            if (out / f"{kind}.pyspy.txt").exists():
                parts.append(profile_summary.summarize(out / f"{kind}.pyspy.txt"))
            res.profile[kind] = "\n\n".join(parts)
            _progress(f"profile {kind} written to {out}")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
