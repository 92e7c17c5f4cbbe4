"""``bench_local``'s report: the Markdown tables of a run (or of pooled ``--json`` runs)."""

from __future__ import annotations

import math
import os
import platform
import statistics

from . import loadgen
from .local_client import MAX_TOKENS
from .local_measure import LOAD_STEPS, SIZES
from .local_results import Results


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
