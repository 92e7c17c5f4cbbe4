"""``models list|info|scan|load|unload|switch``: the daemon's local models.

``load`` and ``switch`` follow the load as it happens (see :mod:`..progress`); Ctrl-C stops
following, not the load, which other requests may be waiting for.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import Any

from securellm_bridge._pb import models_pb2, models_pb2_grpc

from .. import output
from ..client import Client
from ..errors import EXIT_OK
from ..progress import display
from ..streaming import human_bytes, stream_errors

_SCAN_KEYS = ("added", "updated", "missing", "corrupt", "unchanged", "removed")
_LONG_VALUE = 100


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", help="local GGUF models: list, load, unload, switch")
    ms = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    p = ms.add_parser("list", parents=[common], help="every local model and whether it is loaded",
                      description="STATUS: loaded, available, missing or corrupt. For loaded models CTX is "
                                  "the context it runs with, LAYERS the layers on the GPU of the total, VRAM "
                                  "its memory, IDLE the time since its last request.")
    p.set_defaults(func=list_models)
    p = ms.add_parser("info", parents=[common], help="one model: file, GGUF metadata, settings, load state")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=info)
    p = ms.add_parser("scan", parents=[common], help="rescan the model directories now")
    p.set_defaults(func=scan)
    p = ms.add_parser("load", parents=[common], help="load a model, showing its progress",
                      description="Waits until the model is ready (or the daemon's load timeout). Progress "
                                  "is a live bar on a terminal, plain lines otherwise, JSON lines with --json.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--gpu-layers", type=_count, metavar="N", help="layers to offload (default: as many as fit)")
    p.add_argument("--ctx", type=_positive, metavar="N", help="context size (default: the largest that fits)")
    p.set_defaults(func=load)
    p = ms.add_parser("unload", parents=[common], help="unload a model once its requests have finished")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=unload)
    p = ms.add_parser("switch", parents=[common], help="hot swap: unload FROM, then load TO",
                      description="FROM must be loaded; it is unloaded once idle, then TO is loaded with "
                                  "progress as in `models load`.")
    p.add_argument("from_model", metavar="FROM")
    p.add_argument("to_model", metavar="TO")
    p.set_defaults(func=switch)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    n = _count(text)
    if n == 0:
        raise argparse.ArgumentTypeError("expected a whole number of at least 1")
    return n


def _stub(c: Client) -> models_pb2_grpc.ModelsStub:
    return models_pb2_grpc.ModelsStub(c.channel)


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def _dash(value: Any) -> Any:
    return "-" if value is None or value == "" else value


def _row(m: models_pb2.LocalModel) -> tuple[Any, ...]:
    layers = _opt(m, "layer_count")
    if not m.HasField("loaded"):
        return (m.name, m.status, m.backend, human_bytes(_opt(m, "size_bytes")), _dash(m.quantization),
                _dash(_opt(m, "ctx")), _dash(layers), "-", "-", "-")
    ld = m.loaded
    mem = ld.measured_bytes if ld.HasField("measured_bytes") else ld.memory_bytes
    return (m.name, m.status, m.backend, human_bytes(_opt(m, "size_bytes")), _dash(m.quantization), ld.ctx,
            f"{ld.gpu_layers}/{layers}" if layers is not None else ld.gpu_layers, human_bytes(mem), ld.in_flight,
            output.duration(ld.idle_seconds))


def list_models(args: argparse.Namespace) -> int:
    with Client(args.socket, args.timeout) as c:
        r = c.call(_stub(c).List, models_pb2.ListModelsRequest())
    if args.json:
        output.print_json([output.to_dict(m) for m in r.models])
    elif not r.models:
        print("no local models: add GGUF files under [local] model_dirs, then `securellmctl models scan`")
    else:
        output.print_table(["NAME", "STATUS", "BACKEND", "SIZE", "QUANT", "CTX", "LAYERS", "VRAM", "IN-FLIGHT",
                            "IDLE"], [_row(m) for m in r.models])
    return EXIT_OK


def _short(value: str) -> str:
    flat = value.replace("\n", "\\n")
    return flat if len(flat) <= _LONG_VALUE else flat[:_LONG_VALUE] + f"... ({len(value)} chars)"


def _info_pairs(m: models_pb2.LocalModel) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        ("name", m.name), ("status", m.status), ("backend", m.backend), ("format", m.format),
        ("path", _dash(m.path)), ("size", human_bytes(_opt(m, "size_bytes"))),
        ("architecture", _dash(m.architecture)), ("layers", _dash(_opt(m, "layer_count"))),
        ("trained context", _dash(_opt(m, "context_length"))), ("quantization", _dash(m.quantization)),
        ("first seen", output.when(_opt(m, "created_at"))), ("last scanned", output.when(_opt(m, "last_scanned"))),
    ]
    if m.error:
        pairs.append(("error", m.error))
    pairs += [("configured", "yes" if m.configured else "no (defaults)"), ("priority", m.priority),
              ("pinned", "yes" if m.pinned else "no"), ("ctx", _opt(m, "ctx") or "largest that fits"),
              ("gpu layers", m.gpu_layers if m.HasField("gpu_layers") else "as many as fit"),
              ("keep alive", f"{m.keep_alive_seconds:g} s" if m.keep_alive_seconds else "forever"),
              ("parallel", m.parallel), ("extra args", " ".join(m.extra_args) or "-")]
    if m.HasField("loaded"):
        ld = m.loaded
        pairs += [("pid", _dash(_opt(ld, "pid"))), ("process state", ld.state),
                  ("loaded at", output.when(ld.loaded_at)), ("loaded ctx", ld.ctx),
                  ("loaded gpu layers", ld.gpu_layers), ("memory (estimate)", human_bytes(ld.memory_bytes)),
                  ("memory (measured)", human_bytes(_opt(ld, "measured_bytes"))), ("in flight", ld.in_flight),
                  ("idle", output.duration(ld.idle_seconds))]
    return pairs


def info(args: argparse.Namespace) -> int:
    with Client(args.socket, args.timeout) as c:
        m = c.call(_stub(c).Get, models_pb2.GetModelRequest(name=args.name))
    if args.json:
        output.print_json(output.to_dict(m))
        return EXIT_OK
    print(output.fields(_info_pairs(m)))
    if m.metadata:
        print("metadata:")
        width = max(len(k) for k in m.metadata)
        for key in sorted(m.metadata):
            print(f"  {key:<{width}}  {_short(m.metadata[key])}")
    return EXIT_OK


def scan(args: argparse.Namespace) -> int:
    with Client(args.socket, args.timeout) as c:
        r = c.call(_stub(c).Scan, models_pb2.ScanModelsRequest())
    found = {k: list(getattr(r, k)) for k in _SCAN_KEYS}
    if args.json:
        output.print_json(found)
        return EXIT_OK
    print("scan: " + ", ".join(f"{len(v)} {k}" for k, v in found.items()))
    pairs = [(k, ", ".join(v)) for k, v in found.items() if v and k != "unchanged"]
    if pairs:
        print(output.fields(pairs))
    return EXIT_OK


def _follow(args: argparse.Namespace,
            start: Callable[[models_pb2_grpc.ModelsStub], Iterator[models_pb2.LoadProgress]]) -> int:
    """Show the progress stream that ``start`` opens; no deadline: the daemon's load timeout bounds it."""
    with Client(args.socket, args.timeout) as c:
        stream = start(_stub(c))
        shown = display(args.json)
        try:
            with stream_errors():
                for progress in stream:
                    shown.show(progress)
        except KeyboardInterrupt:
            shown.close()
            print("securellmctl: stopped following; the daemon goes on loading", file=sys.stderr)
            raise
        finally:
            shown.close()
            stream.cancel()  # type: ignore[attr-defined]
    return EXIT_OK


def load(args: argparse.Namespace) -> int:
    req = models_pb2.LoadModelRequest(name=args.name, gpu_layers=args.gpu_layers, ctx=args.ctx)
    return _follow(args, lambda stub: stub.Load(req))


def unload(args: argparse.Namespace) -> int:
    with Client(args.socket, args.timeout) as c:
        r = c.call(_stub(c).Unload, models_pb2.UnloadModelRequest(name=args.name))
    if args.json:
        output.print_json(output.to_dict(r.model))
    else:
        print(f"unloaded {r.model.name}")
    return EXIT_OK


def switch(args: argparse.Namespace) -> int:
    req = models_pb2.SwitchModelRequest(from_model=args.from_model, to_model=args.to_model)
    return _follow(args, lambda stub: stub.Switch(req))
