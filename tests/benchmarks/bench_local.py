"""Local models through the bridge against llama-server on its own (docs/PERFORMANCE.md, step 3).

Not a test (pytest does not collect ``bench_*.py``). Run from the repository root, after
``.ci/build-llama-server.sh`` (or with ``$LLAMA_SERVER_BIN``):

    PYTHONPATH=daemon:ctl .venv/bin/python -m tests.benchmarks.bench_local            # 15-40 s on 2 cores
    PYTHONPATH=daemon:ctl .venv/bin/python -m tests.benchmarks.bench_local --quick    # fewer samples
    ... --llama-threads 1      # every llama-server with -t 1 (leaves a core to the daemon)
    ... --json run1.json; ... --from-json run1.json run2.json   # pool several runs' samples

It writes tiny random-weight llamas (``tests.gguf_models.write_tiny_llama``) in two sizes,
starts two real daemons (``python -m securellm_bridge`` from this checkout: mTLS, an API key,
``[local]`` over those models, a simulated GPU) and, for each size:

1. **cold load**: a streaming chat request for a model that is not loaded, through the bridge,
   timed from the request to the first content token (the first non-empty ``content`` delta),
   on a simulated GPU with room for every model; against llama-server started directly with
   the same binary and flags (checked against the daemon's own child), timed from the spawn:
   ``/health`` polled every 10 ms until 200, then the same request. The two alternate (the
   bridge first in even rounds), each on its own copy of the model file. The daemon's log
   (info level) splits the bridge's load into steps: scheduling, spawn, llama-server start
   plus the ``/health`` probe, registration, then ready → first token.
2. **swap**: on a second daemon whose simulated GPU fits one model only, a request for a model
   while another is loaded: evict it, load this one, first token; interleaved with (1) and
   compared with its cold loads through the bridge.
3. **steady state**: sequential requests (``max_tokens`` 4) to a loaded model through the bridge
   against a llama-server of our own (same model file and flags, a known API key): whole
   answers (non-streaming) and first content token (streaming), p50/p99, in alternating blocks
   of 10 so that noise hits both alike.

Connections are opened (the mTLS handshake included) before a clock starts; a new mTLS
connection is timed on its own. Times are medians with the (min-max) spread. A failed request
in the steady state is counted and reported, not measured, and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("ctl", "daemon"):
    if str(ROOT / _sub) not in sys.path:
        sys.path.insert(0, str(ROOT / _sub))

from . import loadgen  # noqa: E402
from .loadgen import HttpConn, Target, perf  # noqa: E402

PATH = "/v1/chat/completions"
AUTH = "Authorization"
PROMPT = "Say hello to the benchmark in one short sentence, please."
MAX_TOKENS = 4
HEALTH_POLL = 0.010  # the direct baseline's /health poll (the daemon polls every 50 ms)
#: name → write_tiny_llama arguments
SIZES: dict[str, dict[str, int]] = {"L2-e64": {}, "L4-e128": {"n_layer": 4, "n_embd": 128}}
_CONTENT = re.compile(rb'"content":"[^"]')
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@functools.cache
def text_tokens_only() -> dict[str, int]:
    """``logit_bias`` that bans every token but the printable ones: a random-weight model may
    otherwise start with byte tokens that form no complete UTF-8 character (llama-server sends
    no content until they do) or with control tokens (no text). So the first generated token
    is the first content."""
    from gguf import TokenType

    from tests.gguf_models import vocabulary

    return {str(i): -100 for i, kind in enumerate(vocabulary()[2]) if kind != TokenType.NORMAL}


def body(model: str, stream: bool) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
                       "logit_bias": text_tokens_only(), "stream": stream}).encode()


class TokenConn(HttpConn):
    """A loadgen connection that also notes when the first content token arrives."""

    token_at = 0.0

    def request(self, data: bytes) -> "asyncio.Future[tuple[int, float, float, bytes]]":
        self.token_at = 0.0
        self._seen = bytearray()
        return super().request(data)

    def data_received(self, data: bytes) -> None:
        if not self.token_at:
            now = perf()
            self._seen += data
            if _CONTENT.search(self._seen):
                self.token_at = now
        super().data_received(data)


async def connect(target: Target) -> TokenConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: TokenConn(loop), target.host, target.port, ssl=target.ssl)
    return conn


@dataclass
class Timed:
    status: int
    start: float
    first_byte: float
    token: float
    end: float
    body: bytes

    def check(self, what: str, stream: bool) -> "Timed":
        ok = loadgen.is_stream(self.body) if stream else loadgen.is_completion(self.body)
        if self.status != 200 or not ok or (stream and not self.token):
            raise RuntimeError(f"{what}: status {self.status}, body {self.body[:400]!r}")
        return self


async def send(conn: TokenConn, target: Target, model: str, stream: bool) -> Timed:
    data = target.request(PATH, body(model, stream))
    t0 = perf()
    status, first, end, answer = await conn.request(data)
    return Timed(status, t0, first, conn.token_at, end, answer)


# ------------------------------------------------------------------------------ llama-server

def server_argv(binary: Path, model: Path, alias: str, port: int, extra: list[str]) -> list[str]:
    """What ``LlamaCppBackend._launch`` runs for the models of ``local_config`` (ctx 256,
    gpu_layers 2, parallel 1); checked against the daemon's own child in ``check_flags``."""
    return [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--alias", alias,
            "-c", "256", "-ngl", "2", "-np", "1", "--metrics", "--no-webui", "--log-colors", "off", "-lv", "4",
            *extra]


@dataclass
class Direct:
    """A llama-server of our own: the same binary and flags, a known key."""

    proc: subprocess.Popen[bytes]
    target: Target
    spawned: float
    healthy: float = 0.0

    @classmethod
    def spawn(cls, binary: Path, model: Path, alias: str, extra: list[str], log: Path) -> "Direct":
        from securellm_bridge.local.backends.children import child_environment
        from tests.llama import free_port

        port = free_port()
        key = "bench-" + os.urandom(16).hex()
        env = child_environment({"LLAMA_API_KEY": key})
        with log.open("ab") as out:
            t0 = perf()
            proc = subprocess.Popen(server_argv(binary, model, alias, port, extra), env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(proc, Target(f"direct:{alias}", "127.0.0.1", port, None, (("Authorization", f"Bearer {key}"),)),
                   t0)

    async def wait_healthy(self, timeout: float = 60.0) -> float:
        request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{self.target.port}\r\nConnection: close\r\n\r\n".encode()
        deadline = perf() + timeout
        while perf() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.target.port)
                try:
                    writer.write(request)
                    line = await reader.readline()
                finally:
                    writer.close()
                if line.startswith(b"HTTP/1.1 200"):
                    self.healthy = perf()
                    return self.healthy
            except OSError:
                pass
            await asyncio.sleep(HEALTH_POLL)
        raise RuntimeError("llama-server not healthy in time")

    def stop(self) -> float:
        """SIGTERM, wait for the exit (a pidfd, not ``Popen.wait``'s polling); the seconds that took."""
        if self.proc.poll() is not None:
            return 0.0
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            t0 = perf()
            self.proc.send_signal(signal.SIGTERM)
            exited = select.select([pidfd], [], [], 15)[0]
            took = perf() - t0
        finally:
            os.close(pidfd)
        if not exited:
            self.proc.kill()
        self.proc.wait()
        return took


# ---------------------------------------------------------------------------------- bridges

@dataclass
class Bridge:
    daemon: Any  # tests.daemon.Daemon
    target: Target
    #: whether the daemon logs at info or debug: the "ready" and "unloaded" lines time the loads
    timed_log: bool = True

    @property
    def pid(self) -> int:
        return self.daemon.proc.pid  # type: ignore[no-any-return]

    def log_time(self, *texts: str, after: float = 0.0, timeout: float = 10.0) -> float:
        """Wall-clock time (``time.time()``, to the millisecond) of the first log line holding all
        ``texts`` at or after ``after``; nan when the daemon does not log at info."""
        if not self.timed_log:
            return math.nan
        deadline = time.monotonic() + timeout
        while True:
            for line in self.daemon.log().splitlines():
                m = _LOG_TIME.match(line)
                if m and all(text in line for text in texts):
                    at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    if at >= after - 0.002:
                        return at
            if time.monotonic() > deadline:
                raise RuntimeError(f"{texts!r} not in the daemon log after {after}")
            time.sleep(0.02)


def start_daemons(tmp: Path, configs: dict[str, dict[str, Any]], log_level: str) -> dict[str, Bridge]:
    """One daemon per config (``[local]``, ``[backends]``, ``[vram]`` tables), started together."""
    from tests.bridge import https_address
    from tests.daemon import Daemon, base_config

    daemons: dict[str, Any] = {}
    for name, extra in configs.items():
        workdir = tmp / name
        workdir.mkdir()
        d = Daemon(workdir, env={"PYTHONPATH": os.environ["PYTHONPATH"]})
        cfg = base_config(d.run_dir, d.state_dir, d.certs)
        cfg["log"] = {"level": log_level}
        cfg["security"]["auth"] = {"require_api_key": True}
        cfg.update(extra)
        d.config = cfg
        d.write_config(cfg)
        daemons[name] = d
    bridges: dict[str, Bridge] = {}
    try:
        for d in daemons.values():
            d.start(wait_ready=False)
        for name, d in daemons.items():
            d.wait_ready(timeout=60)
            created = d.ctl("keys", "create", "--owner", "bench", "--json")
            if created.returncode != 0:
                raise RuntimeError(f"keys create failed: {created.stderr}")
            key = json.loads(created.stdout)["key"]
            host, _, port = https_address(d).rpartition(":")
            tls = loadgen.client_context(str(d.certs.ca_cert), str(d.certs.client_cert), str(d.certs.client_key))
            bridges[name] = Bridge(d, Target(name, host.strip("[]"), int(port), tls,
                                             (("Authorization", f"Bearer {key}"),)), log_level in ("info", "debug"))
    except BaseException:
        stop_daemons(daemons.values())
        raise
    return bridges


def stop_daemons(daemons: Any) -> None:
    for d in daemons:
        d.stop()
        shutil.rmtree(d.run_dir, ignore_errors=True)


def check_flags(bridge: Bridge, alias: str, binary: Path, model: Path, extra: list[str]) -> str | None:
    """None when the daemon's llama-server for ``alias`` runs exactly ``server_argv`` (but the port)."""
    from tests.local_models import llama_servers

    pid = llama_servers(parent=bridge.pid).get(alias)
    if pid is None:
        return f"no llama-server for {alias} under the daemon"
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    mine = server_argv(binary, model, alias, 0, extra)
    strip = lambda xs: [x for i, x in enumerate(xs) if i == 0 or xs[i - 1] != "--port"]  # noqa: E731
    return None if strip(argv) == strip(mine) else f"flags differ: daemon {argv} vs direct {mine}"


# ---------------------------------------------------------------------------------- measuring

@dataclass
class Results:
    # (size, what) -> samples in seconds
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # (size, case) -> error messages of failed steady-state requests (not counted in the latencies)
    errors: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # llama-server arguments beyond the daemon's own
    log_level: str = "info"
    runs: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"samples": {f"{s}/{w}": v for (s, w), v in self.samples.items()},
                "errors": {f"{s}/{w}": v for (s, w), v in self.errors.items()},
                "notes": self.notes, "extra": self.extra, "log_level": self.log_level}

    @classmethod
    def pooled(cls, paths: list[str]) -> "Results":
        """The samples of several runs (``--json`` files) together."""
        res = cls(runs=len(paths))
        for i, path in enumerate(paths):
            data = json.loads(Path(path).read_text())
            if i == 0:
                res.extra, res.log_level = data["extra"], data["log_level"]
            elif (data["extra"], data["log_level"]) != (res.extra, res.log_level):
                raise SystemExit(f"{path}: other settings than {paths[0]}")
            for key, values in data["samples"].items():
                res.samples.setdefault(tuple(key.split("/", 1)), []).extend(values)  # type: ignore[arg-type]
            for key, messages in data["errors"].items():
                res.errors.setdefault(tuple(key.split("/", 1)), []).extend(messages)  # type: ignore[arg-type]
            res.notes += [n for n in data["notes"] if n not in res.notes]
        return res

    def add(self, size: str, what: str, value: float) -> None:
        if not math.isnan(value):
            self.samples.setdefault((size, what), []).append(value)

    def get(self, size: str, what: str) -> list[float]:
        return self.samples.get((size, what), [])


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


class Client:
    """Sequential requests to one target on a kept-alive connection, opened before the clock.

    llama-server closes the connection after every streamed answer, so a client of it needs a new
    one per stream (``fresh``); the bridge keeps its client connections open (and reconnects to
    llama-server itself).
    """

    def __init__(self, target: Target, fresh: bool = False) -> None:
        self.target = target
        self.fresh = fresh
        self.conn: TokenConn | None = None

    async def __call__(self, model: str, stream: bool) -> Timed:
        if self.conn is None or self.conn.transport is None or (self.fresh and stream):
            self.close()
            self.conn = await connect(self.target)
        return await send(self.conn, self.target, model, stream)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


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


# ------------------------------------------------------------------------------------ report

def ms(v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v * 1e3:.0f}" if v >= 0.1 else f"{v * 1e3:.1f}"


def med(values: list[float]) -> str:
    """Median (min-max) in ms."""
    if not values:
        return "-"
    return f"{ms(statistics.median(values))} ({ms(min(values))}-{ms(max(values))})"


def pct(values: list[float]) -> str:
    """p50 / p99 in ms."""
    return f"{ms(loadgen.percentile(values, 50))} / {ms(loadgen.percentile(values, 99))}"


def report(res: Results, elapsed: float | None) -> str:
    g = res.get

    def mid(values: list[float]) -> float:
        return statistics.median(values) if values else math.nan

    def row(size: str, label: str, bridge: str, direct: str, direct_label: str = "") -> str:
        b, d = mid(g(size, bridge)), mid(g(size, direct))
        return (f"| {size} | {label} | {med(g(size, bridge))} | {direct_label}{med(g(size, direct))} | "
                f"{ms(b - d)} | {b / d:.2f} |")

    def steady(size: str, kind: str, label: str) -> str:
        b, d = g(size, f"{kind}_bridge"), g(size, f"{kind}_direct")
        pb, pd = loadgen.percentile(b, 50), loadgen.percentile(d, 50)
        qb, qd = loadgen.percentile(b, 99), loadgen.percentile(d, 99)
        return (f"| {size} | {label} | {pct(b)} | {pct(d)} | {ms(pb - pd)} / {ms(qb - qd)} | "
                f"{pb / pd:.2f} / {qb / qd:.2f} |")

    first = next(iter(SIZES))
    runs = f"{res.runs} runs pooled: " if res.runs > 1 else ""
    out = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
           f"CPU llama-server ({' '.join(res.extra) or 'default threads'}), daemon log level {res.log_level}; "
           f"{runs}{len(g(first, 'cold_bridge'))} cold loads and {len(g(first, 'swap'))} swaps per size, "
           f"{len(g(first, 'whole_bridge'))} steady requests per case; max_tokens {MAX_TOKENS}; "
           "times in ms, median (min-max) unless marked p50 / p99.", "",
           "| model | measure | through the bridge | llama-server directly | bridge − direct | ratio |",
           "|---|---|---|---|---|---|"]
    for size in SIZES:
        out += [row(size, "cold load → first token", "cold_bridge", "cold_direct"),
                row(size, "… until ready (daemon log / `/health` 200)", "cold_bridge_ready", "cold_direct_ready"),
                row(size, "… ready → first token", "cold_bridge_after_ready", "cold_direct_after_ready"),
                row(size, "swap → first token (direct column: cold load via the bridge)", "swap", "cold_bridge"),
                row(size, "… evict (request → victim unloaded; direct: SIGTERM → exit)", "swap_evict",
                    "sigterm_exit"),
                row(size, "… load (victim unloaded → ready; direct: until `/health` 200)", "swap_load",
                    "cold_direct_ready"),
                steady(size, "whole", "steady, whole answer, p50 / p99"),
                steady(size, "stream", "steady, stream first token, p50 / p99")]
    out += ["", "Cold load through the bridge, step by step (daemon log, 1 ms resolution; median (min-max)):", "",
            "| model | " + " | ".join(name for name, _ in LOAD_STEPS) + " | ready → first token |",
            "|---|" + "---|" * (len(LOAD_STEPS) + 1)]
    for size in SIZES:
        out.append(f"| {size} | " + " | ".join(med(g(size, f"step_{name}")) for name, _ in LOAD_STEPS)
                   + f" | {med(g(size, 'cold_bridge_after_ready'))} |")
    out += ["", f"new mTLS connection to the bridge (TCP + handshake, client certificate): "
            f"{med(g('-', 'mtls_connect'))} ms, not included above"]
    out += [f"note: {n}" for n in res.notes]
    for (size, case), messages in sorted(res.errors.items()):
        out.append(f"errors: {size} {case}: {len(messages)} failed request(s), first: {messages[0][:300]}")
    if elapsed is not None:
        out.append(f"(total {elapsed:.0f} s)")
    return "\n".join(out)


# -------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Local models: on-demand load, swap and steady-state overhead "
                                            "of the bridge against llama-server directly.")
    p.add_argument("--repeats", type=int, default=5, help="cold loads and swaps per model size (default 5)")
    p.add_argument("--requests", type=int, default=50, help="steady-state requests per case (default 50)")
    p.add_argument("--quick", action="store_true", help="2 cold loads and swaps, 20 steady requests")
    p.add_argument("--llama-threads", type=int, metavar="N",
                   help="run every llama-server with -t N (default: llama-server's own, one per core)")
    p.add_argument("--log-level", default="info",
                   help="the daemons' [log] level (default info; the load split needs info or debug)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (models, logs)")
    p.add_argument("--json", metavar="PATH", help="also write the raw samples (seconds) as JSON")
    p.add_argument("--from-json", nargs="+", metavar="PATH",
                   help="measure nothing: print the table of earlier runs' --json files, pooled")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.requests = 2, 20
    if args.repeats < 1 or args.requests < 1:
        p.error("--repeats and --requests must be at least 1")
    args.extra = ["-t", str(args.llama_threads)] if args.llama_threads else []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        res = Results.pooled(args.from_json)
        print(report(res, None))
        return 1 if res.errors else 0
    import uvloop

    from tests.gguf_models import write_tiny_llama
    from tests.llama import llama_server_binary
    from tests.local_models import MIB, local_config, need_bytes

    binary = llama_server_binary()
    if binary is None:
        print("no llama-server: run .ci/build-llama-server.sh (or set $LLAMA_SERVER_BIN)", file=sys.stderr)
        return 2
    # The daemons and securellmctl must run this checkout, not an installed copy.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "daemon"), str(ROOT / "ctl"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="sllm-bench-local-"))
    bridges: dict[str, Bridge] = {}
    try:
        cold_dir, swap_dir = tmp / "models-cold", tmp / "models-swap"
        cold_dir.mkdir()
        swap_dir.mkdir()
        cold: dict[str, list[Path]] = {}
        pairs: dict[str, tuple[str, str]] = {}
        for k, (size, shape) in enumerate(SIZES.items()):
            tag = size.lower().replace("-", "")
            cold[size] = [write_tiny_llama(cold_dir / f"{tag}-cold{i}.gguf", name=f"{tag}-cold{i}", seed=i, **shape)
                          for i in range(args.repeats)]
            a, b = (write_tiny_llama(swap_dir / f"{tag}-swap{x}.gguf", name=f"{tag}-swap{x}", seed=k * 2 + j, **shape)
                    for j, x in enumerate("ab"))
            pairs[size] = (a.stem, b.stem)
        largest = max((p for ps in cold.values() for p in ps), key=lambda p: p.stat().st_size)
        swap_cfg = local_config(swap_dir, fit=1, one_model=largest)
        cap = swap_cfg["vram"]["simulate_total_mib"] * MIB
        for ps in cold.values():  # one model must fit, two must not
            assert need_bytes(ps[0]) <= cap < 2 * need_bytes(ps[0]), (need_bytes(ps[0]), cap)
        configs = {"roomy": local_config(cold_dir), "one-fits": swap_cfg}
        for cfg in configs.values():
            for model in cfg["local"]["models"].values():
                model["extra_args"] = args.extra
        bridges = start_daemons(tmp, configs, args.log_level)
        res = uvloop.run(measure(args, tmp, binary, cold, pairs, bridges))
    except BaseException:
        for b in bridges.values():
            print(b.daemon.log()[-4000:], file=sys.stderr)
        raise
    finally:
        stop_daemons(b.daemon for b in bridges.values())
        if args.keep:
            print(f"kept {tmp} (daemon logs: */daemon.log, direct llama-servers: direct.log)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(report(res, time.monotonic() - started))
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_json(), indent=2))
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
