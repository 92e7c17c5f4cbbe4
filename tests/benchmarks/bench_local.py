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

This module is the command line and the set-up (models, daemon configs); ``local_client`` is the
timed client, ``local_servers`` the direct llama-server and the daemons, ``local_measure`` the
runs, ``local_results`` the samples and their JSON, ``local_report`` the tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .bridges import ROOT, stop_daemons, tree_pythonpath

for _sub in ("ctl", "daemon"):
    if str(ROOT / _sub) not in sys.path:
        sys.path.insert(0, str(ROOT / _sub))

from .local_measure import SIZES, measure  # noqa: E402
from .local_report import report  # noqa: E402
from .local_results import Results  # noqa: E402
from .local_servers import Bridge, start_daemons  # noqa: E402


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
    tree_pythonpath()
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
