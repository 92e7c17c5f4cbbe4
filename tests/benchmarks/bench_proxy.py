"""Inference overhead of the bridge against a bare aiohttp mTLS proxy (docs/PERFORMANCE.md).

Not a test (pytest does not collect ``bench_*.py``). Run from the repository root:

    .venv/bin/python -m tests.benchmarks.bench_proxy            # full run, about 3 minutes
    .venv/bin/python -m tests.benchmarks.bench_proxy --quick    # one repeat, short runs (~45 s)

Every process it starts runs the working tree's code (``daemon/`` and ``ctl/`` first on
``PYTHONPATH``), whether the venv holds an editable install or a wheel. One run starts, on
loopback, with one private CA (``securellmctl.certs.init_dir``) for every TLS endpoint:

* ``lean_upstream``: a zero-delay OpenAI chat-completions upstream (plain HTTP, plus an mTLS
  listener used only to show the load generator's own ceiling over mTLS);
* ``bare_proxy``: the reference, a bare aiohttp pass-through proxy: the same mTLS and
  certificates as the bridge, parses the JSON, forwards through a pooled ClientSession;
* the bridge: a real ``python -m securellm_bridge`` daemon (``tests.daemon.Daemon``) with mTLS,
  an API key, rate limits on every level (global, per key, per provider; high enough never to
  reject), its Prometheus metrics, and every other setting at its default (audit on: records go
  to journald, else to ``state.dir/audit-fallback.jsonl``), routing ``gpt-4o-mini`` to the
  lean upstream;
* with ``--variant``, more bridges (patched code, other settings) measured the same way.

and measures, with ``loadgen`` (raw asyncio protocol over mTLS, keep-alive):

* saturated throughput (``--connections`` closed loops), non-streaming and streaming, of the
  upstream directly (plain HTTP and mTLS), the bare proxy and the bridge, with the CPU time
  each process spent per request;
* latency at a paced ``--rate`` (default 16 req/s): p50/p99 of whole answers (non-streaming),
  time to first and to last byte (streaming);
* the RSS of the bridge (and of the bare proxy) at start and after the runs; the bridge's audit
  writer process (``securellm_bridge.audit.child``) is reported beside it: its RSS, its CPU per
  request, and the PSS of the two processes together (shared pages counted once).

Every scenario runs ``--repeats`` times, interleaved (direct, bare, bridge, direct, ...), so that
noise from other work on the machine hits them alike. Throughput is the median over repeats
(min-max shown); latency percentiles are over the samples of all repeats pooled (per-repeat
p50s shown). The CPU share of each process during the saturated runs shows who the bottleneck
is, and CPU time per request is steadier than req/s on a shared machine. ``--profile DIR``
also records the bare proxy and the bridge under saturated load, with ``perf`` (CPU cycles by
binary, when installed) and py-spy (Python frames; ``pip install py-spy`` into the venv), and
summarises both (``profile_summary.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import loadgen
from .loadgen import PacedResult, SatResult, Target

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gpt-4o-mini"
PATH = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Say hello to the benchmark in one short sentence, please."}]}
HIGH = 100_000_000  # a rate limit that never rejects, but is checked and charged on every request

BARS = {"throughput_ratio": 0.90, "latency_delta_ms": 0.5, "rss_mb": 80.0}


def _body(stream: bool) -> bytes:
    return json.dumps({**BODY, "stream": True} if stream else BODY).encode()


# ------------------------------------------------------------------------------ processes

def _spawn(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start: {line!r}")
    return proc, [int(p) for p in line.split()[1:]]


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB (10^6 bytes)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, kb, _ = line.split()
                values[name[:-1]] = int(kb) * 1024 / 1e6
    return values["VmRSS"], values["VmHWM"]


@dataclass
class Stack:
    tmp: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    daemons: list[Any] = field(default_factory=list)  # tests.daemon.Daemon
    targets: dict[str, Target] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    #: bridge name -> pid of its audit writer process (its CPU and memory are the bridge's too)
    writers: dict[str, int] = field(default_factory=dict)

    @property
    def bridges(self) -> list[str]:
        return [name for name in self.targets if name.startswith("bridge")]

    def close(self) -> None:
        for d in self.daemons:
            d.stop()
            shutil.rmtree(d.run_dir, ignore_errors=True)
        for proc in self.procs:
            _stop(proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log(self) -> str:
        return "\n".join(d.log()[-3000:] for d in self.daemons)


def bridge_config(d: Any, certs: Any, up_url: str, log_level: str) -> dict[str, Any]:
    from tests.daemon import base_config

    cfg = base_config(d.run_dir, d.state_dir, certs)
    cfg["log"] = {"level": log_level}
    cfg["security"]["auth"] = {"require_api_key": True}
    cfg["limits"] = {"global": {"rpm": HIGH, "burst": HIGH, "tpm": HIGH},
                     "key": {"rpm": HIGH, "burst": HIGH, "tpm": HIGH}}
    cfg["providers"] = {"openai": {"kind": "openai", "base_url": up_url, "api_key": "${BENCH_UPSTREAM_KEY}",
                                   "models": [MODEL], "local": False,
                                   "cost": {MODEL: {"input_per_mtok": 0.15, "output_per_mtok": 0.6}},
                                   "rate_limit": {"rpm": HIGH, "burst": HIGH, "tpm": HIGH}}}
    return cfg


@dataclass(frozen=True)
class Variant:
    """Another bridge to measure: code from ``source`` (a directory holding a ``securellm_bridge``
    package, put first on the daemon's PYTHONPATH) and/or config ``overrides`` (dotted keys)."""

    source: Path | None = None
    overrides: tuple[tuple[str, Any], ...] = ()


def _override(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *tables, key = dotted.split(".")
    for t in tables:
        cfg = cfg.setdefault(t, {})
    cfg[key] = value


def start_bridge(stack: Stack, name: str, certs: Any, up_url: str, log_level: str,
                 variant: Variant = Variant()) -> None:
    """A real daemon (``python -m securellm_bridge``) serving ``certs``, as ``variant`` says,
    and an API key made with securellmctl."""
    from tests.bridge import https_address
    from tests.daemon import Daemon

    workdir = stack.tmp / name
    workdir.mkdir()
    env = {"BENCH_UPSTREAM_KEY": "sk-bench-upstream"}
    if variant.source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(variant.source.resolve()), os.environ["PYTHONPATH"]])
    d = Daemon(workdir, env=env)
    stack.daemons.append(d)
    cfg = bridge_config(d, certs, up_url, log_level)
    for dotted, value in variant.overrides:
        _override(cfg, dotted, value)
    d.config = cfg
    d.write_config(cfg)
    d.start()
    created = d.ctl("keys", "create", "--owner", "bench", "--json")
    if created.returncode != 0:
        raise RuntimeError(f"keys create failed: {created.stderr}")
    key = json.loads(created.stdout)["key"]
    host, _, port = https_address(d).rpartition(":")
    tls = loadgen.client_context(str(certs.ca_cert), str(certs.client_cert), str(certs.client_key))
    stack.targets[name] = Target(name, host.strip("[]"), int(port), tls, (("Authorization", f"Bearer {key}"),))
    assert d.proc is not None
    stack.pids[name] = d.proc.pid
    writer = _audit_writer(d.proc.pid)
    if writer is not None:
        stack.writers[name] = writer


def _audit_writer(pid: int) -> int | None:
    """The daemon's audit writer process (``securellm_bridge.audit.child``), if it runs one."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"securellm_bridge.audit.child" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def pss_mb(pid: int) -> float:
    """Proportional set size in MB: shared pages split among the processes that map them."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def start_stack(log_level: str, variants: dict[str, Variant] | None = None) -> Stack:
    from securellmctl.certs import init_dir

    stack = Stack(Path(tempfile.mkdtemp(prefix="sllm-bench-")))
    try:
        certs = init_dir(stack.tmp / "certs")
        cert_dir = str(certs.ca_cert.parent)
        upstream, (up_port, up_tls_port) = _spawn(["tests.benchmarks.lean_upstream", "--port", "0",
                                                   "--tls-dir", cert_dir])
        stack.procs.append(upstream)
        up_url = f"http://127.0.0.1:{up_port}/v1"
        bare, (bare_port,) = _spawn(["tests.benchmarks.bare_proxy", "--port", "0", "--upstream", up_url,
                                     "--tls-dir", cert_dir])
        stack.procs.append(bare)
        tls = loadgen.client_context(str(certs.ca_cert), str(certs.client_cert), str(certs.client_key))
        # The same request bytes everywhere: a (dummy) API key of the real length for the others.
        auth = (("Authorization", "Bearer sk-sllm-" + "x" * 43),)
        stack.targets = {"direct": Target("direct", "127.0.0.1", up_port, None, auth),
                         "direct-mtls": Target("direct-mtls", "127.0.0.1", up_tls_port, tls, auth),
                         "bare": Target("bare", "127.0.0.1", bare_port, tls, auth)}
        stack.pids = {"upstream": upstream.pid, "bare": bare.pid}
        start_bridge(stack, "bridge", certs, up_url, log_level)
        for label, variant in (variants or {}).items():
            start_bridge(stack, f"bridge:{label}", certs, up_url, log_level, variant)
    except BaseException:
        stack.close()
        raise
    return stack


# ------------------------------------------------------------------------------ measuring

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
            status, _, _, body = await conn.request(target.request(PATH, _body(stream)))
            conn.close()
            if status != 200 or not validator(stream)(body):
                raise RuntimeError(f"{target.name} (stream={stream}) answered {status}: {body[:300]!r}")


async def measure(stack: Stack, args: argparse.Namespace) -> Results:
    res = Results()
    proxies = ["bare", *stack.bridges]
    res.rss_idle = {name: rss_mb(stack.pids[name])[0] for name in proxies}
    await smoke(stack)
    sat_order = [("direct", False), ("direct-mtls", False), *((p, False) for p in proxies),
                 ("direct", True), *((p, True) for p in proxies)]
    paced_order = [(t, s) for s in (False, True) for t in ("direct", *proxies)]
    for rep in range(args.repeats):
        for name, stream in sat_order:
            t = stack.targets[name]
            r = await loadgen.saturate(t, t.request(PATH, _body(stream)), validator(stream),
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
                r = await loadgen.paced(t, t.request(PATH, _body(stream)), validator(stream), rate=args.rate,
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
                await loadgen.saturate(t, t.request(PATH, _body(stream)), validator(stream),
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


# ------------------------------------------------------------------------------ report

def _spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return fmt.format(min(values)) + "–" + fmt.format(max(values)) if len(values) > 1 else ""


def _kind(stream: bool) -> str:
    return "stream" if stream else "plain"


def report(res: Results, stack_bridges: list[str], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    out: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    add = lines.append
    add(f"machine: {out['machine']}")
    add(f"runs: {args.repeats} repeat(s), interleaved; saturated {args.duration:g} s with {args.connections} "
        f"connections (after {args.warmup:g} s warm-up); paced {args.rate:g} req/s for {args.paced_duration:g} s")
    add("")
    add("Saturated throughput, req/s: median of repeats [min–max]. CPU: median CPU time of the target process "
        "per request (the upstream's for direct), and the median share of one core of target / upstream / "
        "load generator while non-streaming")
    add("")
    add("| target | non-streaming | streaming | CPU/req plain | CPU/req stream | cores (plain): target / upstream / loadgen |")
    add("|---|---|---|---|---|---|")
    for name in ("direct", "direct-mtls", "bare", *stack_bridges):
        cells = []
        for stream in (False, True):
            runs = res.sat.get((name, stream))
            cells.append(f"{res.rps(name, stream):,.0f} [{_spread([r.rps for r in runs])}]".replace(" []", "")
                         if runs else "–")
        for stream in (False, True):
            cells.append(f"{res.cpu_us(name, stream, process_of(name)):.0f} µs"
                         if (name, stream) in res.sat else "–")
        runs = res.sat[(name, False)]
        who = process_of(name)
        procs = (who, "loadgen") if who == "upstream" else (who, "upstream", "loadgen")
        cells.append(" / ".join(f"{statistics.median(r.cpu[k] for r in runs):.2f}" for k in procs))
        add(f"| {name} | " + " | ".join(cells) + " |")
    lat: dict[str, dict[str, float]] = {}
    if res.paced:
        add("")
        add(f"Latency at {args.rate:g} req/s paced, ms (percentiles of the samples of all repeats pooled; "
            "in brackets: added over direct)")
        add("")
        add("| target | plain p50 | plain p99 | stream TTFB p50 | TTFB p99 | stream TTLB p50 | TTLB p99 | samples |")
        add("|---|---|---|---|---|---|---|---|")
        for name in ("direct", "bare", *stack_bridges):
            vals = {"p50": res.pct_ms(name, False, "ttlb", 50), "p99": res.pct_ms(name, False, "ttlb", 99),
                    "ttfb50": res.pct_ms(name, True, "ttfb", 50), "ttfb99": res.pct_ms(name, True, "ttfb", 99),
                    "ttlb50": res.pct_ms(name, True, "ttlb", 50), "ttlb99": res.pct_ms(name, True, "ttlb", 99)}
            lat[name] = vals
            n = len(res.pooled(name, False, "ttlb")) + len(res.pooled(name, True, "ttlb"))
            cells = [f"{v:.3f}" + ("" if name == "direct" else f" (+{v - lat['direct'][k]:.2f})")
                     for k, v in vals.items()]
            add(f"| {name} | " + " | ".join(cells) + f" | {n} |")
        add("")
        add("per-repeat plain p50, ms: " + "; ".join(
            f"{name} " + ", ".join(f"{loadgen.percentile(r.ttlb, 50) * 1e3:.3f}" for r in res.paced[(name, False)])
            for name in ("direct", "bare", *stack_bridges)))
    add("")
    add("RSS, MB (10^6 bytes): " + "; ".join(
        f"{name} {res.rss_idle[name]:.1f} at start, {rss:.1f} after the runs (peak {hwm:.1f})"
        for name, (rss, hwm) in res.rss.items()))
    for name, (rss, pss) in res.writers.items():
        cpu = [f"{statistics.median(r.cpu.get(name + '/writer', 0.0) / r.rps * 1e6 for r in res.sat[(name, s)]):.0f}"
               for s in (False, True)]
        add(f"{name}'s audit writer process: {rss:.1f} MB RSS after the runs ({name} and its writer together: "
            f"{pss:.1f} MB PSS); CPU per request {cpu[0]} µs plain, {cpu[1]} µs stream (not in the bridge's CPU above)")
    checks: list[tuple[str, str, str, bool | None]] = []
    for bridge in stack_bridges:
        tag = "" if bridge == "bridge" else f" [{bridge}]"
        for stream in (False, True):
            ratio = res.rps(bridge, stream) / res.rps("bare", stream)
            checks.append((f"throughput {_kind(stream)}: bridge / bare{tag}", f"{ratio:.1%}",
                           f">= {BARS['throughput_ratio']:.0%}", ratio >= BARS["throughput_ratio"]))
        for stream in (False, True):
            d = res.cpu_us(bridge, stream, bridge) - res.cpu_us("bare", stream, "bare")
            checks.append((f"CPU per request {_kind(stream)}: bridge - bare{tag}", f"{d:+.0f} µs "
                           f"({res.cpu_us(bridge, stream, bridge) / res.cpu_us('bare', stream, 'bare'):.2f}×)",
                           "", None))
        if lat:
            for key, label, bar in (("p50", "p50 plain", True), ("p99", "p99 plain", True),
                                    ("ttfb50", "stream TTFB p50", False), ("ttfb99", "stream TTFB p99", False),
                                    ("ttlb50", "stream TTLB p50", False), ("ttlb99", "stream TTLB p99", False)):
                d = lat[bridge][key] - lat["bare"][key]
                checks.append((f"{label} at {args.rate:g} req/s: bridge - bare{tag}", f"{d:+.3f} ms",
                               f"<= +{BARS['latency_delta_ms']} ms" if bar else "",
                               d <= BARS["latency_delta_ms"] if bar else None))
        rss = res.rss[bridge][0]
        checks.append((f"RSS{tag}", f"{rss:.1f} MB", f"<= {BARS['rss_mb']:.0f} MB", rss <= BARS["rss_mb"]))
        if bridge in res.writers:
            pss = res.writers[bridge][1]
            checks.append((f"PSS of the bridge and its audit writer{tag}", f"{pss:.1f} MB",
                           f"<= {BARS['rss_mb']:.0f} MB", pss <= BARS["rss_mb"]))
    add("")
    add("| check | measured | bar | met |")
    add("|---|---|---|---|")
    for label, value, bar, ok in checks:
        add(f"| {label} | {value} | {bar} | {'' if ok is None else ('yes' if ok else 'NO')} |")
    errors = sum(r.errors for runs in res.sat.values() for r in runs) + \
        sum(r.errors for runs in res.paced.values() for r in runs)
    late = sum(r.late for runs in res.paced.values() for r in runs)
    add("")
    add(f"errors: {errors}; paced requests that found every connection busy: {late}")
    for kind, text in res.profile.items():
        add("")
        add(f"### Profile: {kind}, saturated")
        add("")
        add(text)
    out.update({
        "saturated_rps": {f"{n}/{_kind(s)}": [r.rps for r in runs] for (n, s), runs in res.sat.items()},
        "saturated_cpu": {f"{n}/{_kind(s)}": [r.cpu for r in runs] for (n, s), runs in res.sat.items()},
        "latency_ms": lat, "rss_mb": res.rss, "rss_idle_mb": res.rss_idle,
        "audit_writer_rss_and_pss_mb": res.writers,
        "checks": [{"check": c[0], "measured": c[1], "bar": c[2], "met": c[3]} for c in checks],
        "errors": errors,
    })
    return "\n".join(lines), out


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import aiohttp

    return (f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, load average at start "
            f"{os.getloadavg()[0]:.2f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Inference overhead: the bridge against a bare aiohttp mTLS proxy.")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per saturated run (default 3)")
    p.add_argument("--paced-duration", type=float, default=5.0, help="seconds per paced run (default 5)")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each saturated run")
    p.add_argument("--repeats", type=int, default=3, help="runs per scenario, interleaved (default 3)")
    p.add_argument("--connections", type=int, default=32, help="closed-loop connections when saturating")
    p.add_argument("--rate", type=float, default=16.0, help="paced request rate, req/s (default 16)")
    p.add_argument("--quick", action="store_true", help="1 repeat, 1.5 s saturated, 4 s paced")
    p.add_argument("--no-paced", action="store_true", help="saturated runs only")
    p.add_argument("--log-level", default="info", help="the bridge's [log] level (default info)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=ITEM[,ITEM...]",
                   help="also measure another bridge; each ITEM is a directory holding a securellm_bridge package "
                        "(e.g. a patched copy of daemon/) or a config override dotted.key=TOML-value, e.g. "
                        "'noaudit=security.audit.enabled=false'. Repeatable; 'same=daemon' measures the noise "
                        "between two identical bridges")
    p.add_argument("--profile", metavar="DIR", help="also profile the bare proxy, the bridge and the variants (py-spy, perf)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.duration, args.paced_duration = 1, 1.5, 4.0
    args.variants = {}
    for spec in args.variant:
        label, sep, rest = spec.partition("=")
        source, overrides = None, []
        for item in rest.split(",") if sep else ():
            dotted, eq, value = item.partition("=")
            if eq:
                try:
                    overrides.append((dotted.strip(), tomllib.loads(f"v = {value}")["v"]))
                except tomllib.TOMLDecodeError:
                    p.error(f"--variant {spec!r}: {value!r} is not a TOML value")
            elif (Path(item) / "securellm_bridge").is_dir():
                source = Path(item)
            else:
                p.error(f"--variant {spec!r}: {item!r} holds no securellm_bridge package")
        if not label or (source is None and not overrides):
            p.error(f"--variant {spec!r}: expected LABEL=ITEM[,ITEM...]")
        args.variants[label] = Variant(source, tuple(overrides))
    return args


def tree_pythonpath() -> None:
    """Make every process this benchmark starts run the working tree's code (daemon/, ctl/),
    even when the venv holds a regular (non-editable) install of the project."""
    tree = [str(ROOT / "daemon"), str(ROOT / "ctl"), str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join(tree + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and p not in tree])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvloop

    tree_pythonpath()
    started = time.monotonic()
    stack = start_stack(args.log_level, args.variants)
    try:
        res = uvloop.run(measure(stack, args))
    except BaseException:
        print(stack.log(), file=sys.stderr)
        raise
    finally:
        bridges = stack.bridges
        stack.close()
    text, data = report(res, bridges, args)
    print(text)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 0 if data["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
