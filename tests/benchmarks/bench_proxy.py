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

Every scenario runs ``--repeats`` times, interleaved (direct, bare, bridge, direct, ..., with the
proxies' order flipped every other repeat), so that noise from other work on the machine hits
them alike. Throughput is the median over repeats (min-max shown); the throughput bar is judged
on the median of each repeat's bridge / bare ratio (the two runs of a repeat are seconds apart,
while a shared host's speed drifts by 30 % between repeats), and the ratio of the medians is
shown beside it; latency percentiles are over the samples of all repeats pooled (per-repeat
p50s shown). The CPU share of each process during the saturated runs shows who the bottleneck
is, and CPU time per request is steadier than req/s on a shared machine. ``--profile DIR``
also records the bare proxy and the bridge under saturated load, with ``perf`` (CPU cycles by
binary, when installed) and py-spy (Python frames; ``pip install py-spy`` into the venv), and
summarises both (``profile_summary.py``).

This module is the command line; ``proxy_stack`` starts the processes, ``proxy_measure`` runs the
load, ``proxy_report`` renders the tables and the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

from .bridges import tree_pythonpath
from .proxy_measure import measure
from .proxy_report import report
from .proxy_stack import Variant, start_stack


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
