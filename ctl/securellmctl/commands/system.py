"""``status``, ``reload`` and ``config validate``."""

from __future__ import annotations

import argparse
import os

from securellm_bridge import config as config_mod
from securellm_bridge._pb import system_pb2, system_pb2_grpc
from securellm_bridge.errors import ConfigErrors

from .. import output
from ..client import Client
from ..errors import EXIT_FAILURE, EXIT_OK, Unreachable


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="show the daemon's status")
    p.set_defaults(func=status)
    p = sub.add_parser("reload", parents=[common], help="re-read and apply the daemon's config (like SIGHUP)")
    p.set_defaults(func=reload)
    cfg = sub.add_parser("config", help="configuration commands")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    p = cfg_sub.add_parser(
        "validate", parents=[common], help="validate a config file (offline when PATH is given)",
        description="With PATH, validate that file here, without the daemon. Without PATH, ask the daemon "
                    "to validate its own config file; if it is not running, validate "
                    f"${config_mod.ENV_VAR} or {config_mod.DEFAULT_PATH} here.")
    p.add_argument("path", nargs="?", metavar="PATH")
    p.add_argument("--skip-secrets", action="store_true",
                   help="check secret references for form only, without reading them")
    p.set_defaults(func=validate)


def status(args: argparse.Namespace) -> int:
    with Client(args.socket, args.timeout) as c:
        st = c.call(system_pb2_grpc.SystemStub(c.channel).GetStatus, system_pb2.GetStatusRequest())
    if args.json:
        output.print_json(output.to_dict(st))
        return EXIT_OK
    pairs = [("version", st.version), ("state", st.state), ("pid", st.pid),
             ("uptime", output.duration(st.uptime_seconds)), ("config", st.config_path),
             ("started", output.when(st.started_at))]
    if st.memory_mode:
        pairs.append(("memory", f"{st.memory_mode} ({st.memory_reason})" if st.memory_reason else st.memory_mode))
    pairs += [(f"listener {l.name}", f"{l.address} ({l.protocol})") for l in st.listeners]
    pairs += [(k.replace("_", " "), v) for k, v in sorted(st.counts.items())]
    print(output.fields(pairs))
    return EXIT_OK


def reload(args: argparse.Namespace) -> int:
    with Client(args.socket, args.timeout) as c:
        r = c.call(system_pb2_grpc.SystemStub(c.channel).Reload, system_pb2.ReloadRequest())
    if args.json:
        output.print_json(output.to_dict(r))
        return EXIT_OK
    print(f"reloaded {r.config_path}")
    if r.applied:
        print("applied: " + ", ".join(r.applied))
    if r.restart_required:
        print("changed, but needs a restart: " + ", ".join(r.restart_required))
    return EXIT_OK


def _report(ok: bool, path: str, problems: list[tuple[str, str, str]], as_json: bool) -> int:
    if as_json:
        output.print_json({"ok": ok, "path": path,
                           "problems": [{"file": f, "key": k, "message": m} for f, k, m in problems]})
    elif ok:
        print(f"{path}: OK")
    else:
        for _, _, message in problems:
            print(message)
    return EXIT_OK if ok else EXIT_FAILURE


def _validate_here(path: str, skip_secrets: bool, as_json: bool) -> int:
    try:
        config_mod.load(path, resolve_secrets=not skip_secrets)
    except ConfigErrors as exc:
        return _report(False, path, [(e.file, e.key, e.message) for e in exc.errors], as_json)
    return _report(True, path, [], as_json)


def validate(args: argparse.Namespace) -> int:
    if args.path:
        return _validate_here(args.path, args.skip_secrets, args.json)
    try:
        with Client(args.socket, args.timeout) as c:
            r = c.call(system_pb2_grpc.SystemStub(c.channel).ValidateConfig, system_pb2.ValidateConfigRequest())
    except Unreachable:
        return _validate_here(config_mod.resolve_path(None, dict(os.environ)), args.skip_secrets, args.json)
    return _report(r.ok, r.path, [(p.file, p.key, p.message) for p in r.problems], args.json)
