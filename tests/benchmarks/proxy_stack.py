"""The processes ``bench_proxy`` measures: the lean upstream, the bare proxy and the bridges."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bridges import ROOT, api_key_target, client_tls, stop_daemons
from .loadgen import Target
from .procfs import audit_writer

MODEL = "gpt-4o-mini"
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Say hello to the benchmark in one short sentence, please."}]}
HIGH = 100_000_000  # a rate limit that never rejects, but is checked and charged on every request


def body(stream: bool) -> bytes:
    return json.dumps({**BODY, "stream": True} if stream else BODY).encode()


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
        stop_daemons(self.daemons)
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
    stack.targets[name] = api_key_target(d, name, certs)
    assert d.proc is not None
    stack.pids[name] = d.proc.pid
    writer = audit_writer(d.proc.pid)
    if writer is not None:
        stack.writers[name] = writer


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
        tls = client_tls(certs)
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
