"""``bench_proxy``'s report: the Markdown tables printed, the bars checked, and the JSON data."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from typing import Any

from . import loadgen
from .proxy_measure import Results, process_of

BARS = {"throughput_ratio": 0.90, "latency_delta_ms": 0.5, "rss_mb": 80.0}


def _spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return fmt.format(min(values)) + "–" + fmt.format(max(values)) if len(values) > 1 else ""


def _kind(stream: bool) -> str:
    return "stream" if stream else "plain"


def report(res: Results, stack_bridges: list[str], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    out: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    add = lines.append
    add(f"machine: {out['machine']}")
    add(f"runs: {args.repeats} repeat(s), interleaved (the proxies' order flips every repeat); saturated {args.duration:g} s with {args.connections} "
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
            ratio = res.paired_ratio(bridge, stream)
            checks.append((f"throughput {_kind(stream)}: bridge / bare, median of the repeats' ratios{tag}",
                           f"{ratio:.1%}", f">= {BARS['throughput_ratio']:.0%}", ratio >= BARS["throughput_ratio"]))
            ratio = res.rps(bridge, stream) / res.rps("bare", stream)
            checks.append((f"throughput {_kind(stream)}: ratio of the medians{tag}", f"{ratio:.1%}", "", None))
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

