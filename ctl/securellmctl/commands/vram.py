"""``vram``: accelerator memory per GPU and per process, and the monitor's mode."""

from __future__ import annotations

import argparse

from securellm_bridge._pb import system_pb2, system_pb2_grpc

from .. import output
from ..client import Client
from ..errors import EXIT_OK
from ..streaming import human_bytes


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("vram", parents=[common], help="GPU memory: per GPU, per process, and the monitor's mode",
                       description="Mode gpu reads NVIDIA GPUs through NVML; cpu reports system RAM (no usable "
                                   "GPU); simulated is [vram] simulate_total_mib. The reason says why.")
    p.set_defaults(func=show)


def _who(p: system_pb2.GpuProcess) -> str:
    return str(p.pid) if p.HasField("pid") else p.owner


def show(args: argparse.Namespace) -> int:
    with Client(args.socket, args.timeout) as c:
        r = c.call(system_pb2_grpc.SystemStub(c.channel).GetVram, system_pb2.GetVramRequest())
    if args.json:
        output.print_json(output.to_dict(r))
        return EXIT_OK
    print(output.fields([
        ("mode", f"{r.mode} ({r.reason})"),
        ("memory", f"{human_bytes(r.used_bytes)} used of {human_bytes(r.total_bytes)} ({r.used_percent:.1f}%), "
                   f"{human_bytes(r.free_bytes)} free"),
        ("eviction", f"above {r.threshold_percent:g}% with {human_bytes(r.headroom_bytes)} headroom"),
        ("taken", output.when(r.taken_at)),
    ]))
    if r.gpus:
        print()
        output.print_table(["GPU", "NAME", "TOTAL", "USED", "FREE", "UTIL"], [
            (g.index, g.name, human_bytes(g.total_bytes), human_bytes(g.used_bytes), human_bytes(g.free_bytes),
             f"{g.utilization_percent}%" if g.HasField("utilization_percent") else "-") for g in r.gpus])
    rows = [(g.index, _who(p), p.model or "-", human_bytes(p.used_bytes)) for g in r.gpus for p in g.processes]
    if not r.gpus:  # cpu mode: the model processes' resident memory
        rows = [("-", _who(p), p.model or "-", human_bytes(p.used_bytes)) for p in r.processes]
    print()
    if rows:
        output.print_table(["GPU", "PROCESS", "MODEL", "USED"], rows)
    else:
        print("no processes")
    return EXIT_OK
