"""``keys create|list|revoke``."""

from __future__ import annotations

import argparse
import sys

from securellm_bridge._pb import keys_pb2, keys_pb2_grpc

from .. import output
from ..client import Client
from ..errors import EXIT_OK


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="manage API keys for the HTTPS listener")
    ks = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    p = ks.add_parser("create", parents=[common], help="create a key; its secret is shown once")
    p.add_argument("--owner", required=True, help="who the key is for (shown in audit records)")
    p.add_argument("--models", default="", metavar="M1,M2",
                   help="comma-separated models the key may use (default: all)")
    p.add_argument("--rpm", type=int, help="requests per minute for this key (default: [limits] key_rpm)")
    p.add_argument("--tpm", type=int, help="tokens per minute for this key (default: [limits] key_tpm)")
    p.add_argument("--max-budget", type=float, metavar="AMOUNT",
                   help="spending cap per budget period, in the price table's currency")
    p.add_argument("--budget-period", choices=["day", "week", "month", "total"], default="month")
    p.add_argument("--dlp-mode", choices=["off", "redact", "block"],
                   help="data-loss prevention for this key (default: [security.dlp] mode)")
    p.add_argument("--strategy", choices=["local-first", "cloud-first", "cost-optimized", "latency-optimized",
                                          "round-robin", "priority"],
                   help="routing strategy for this key's requests (default: [router] default_strategy)")
    p.set_defaults(func=create)
    p = ks.add_parser("list", parents=[common], help="list keys (never their secrets)")
    p.add_argument("--all", action="store_true", help="include revoked keys")
    p.set_defaults(func=list_keys)
    p = ks.add_parser("revoke", parents=[common], help="revoke a key by id")
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=revoke)


def _models(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def create(args: argparse.Namespace) -> int:
    req = keys_pb2.CreateKeyRequest(owner=args.owner, allowed_models=_models(args.models), rpm=args.rpm,
                                    tpm=args.tpm, max_budget=args.max_budget, budget_period=args.budget_period,
                                    dlp_mode=args.dlp_mode, strategy=args.strategy)
    with Client(args.socket, args.timeout) as c:
        r = c.call(keys_pb2_grpc.KeysStub(c.channel).Create, req)
    if args.json:
        output.print_json({"id": r.key.id, "key": r.secret, "owner": r.key.owner,
                           "allowed_models": list(r.key.allowed_models)})
        return EXIT_OK
    print(f"id:     {r.key.id}")
    print(f"owner:  {r.key.owner}")
    print(f"models: {', '.join(r.key.allowed_models) or 'all'}")
    if r.key.HasField("max_budget"):
        print(f"budget: {r.key.max_budget:g} per {r.key.budget_period}")
    print(f"key:    {r.secret}")
    print("Store the key now: it is not shown again.", file=sys.stderr)
    return EXIT_OK


def list_keys(args: argparse.Namespace) -> int:
    with Client(args.socket, args.timeout) as c:
        r = c.call(keys_pb2_grpc.KeysStub(c.channel).List, keys_pb2.ListKeysRequest(include_revoked=args.all))
    if args.json:
        output.print_json([output.to_dict(k) for k in r.keys])
        return EXIT_OK
    output.print_table(
        ["ID", "OWNER", "MODELS", "CREATED", "LAST USED", "STATUS"],
        [(k.id, k.owner, ",".join(k.allowed_models) or "all", output.when(k.created_at),
          output.when(k.last_used_at), "revoked" if k.revoked else "active") for k in r.keys])
    return EXIT_OK


def revoke(args: argparse.Namespace) -> int:
    with Client(args.socket, args.timeout) as c:
        r = c.call(keys_pb2_grpc.KeysStub(c.channel).Revoke, keys_pb2.RevokeKeyRequest(id=args.id))
    if args.json:
        output.print_json(output.to_dict(r.key))
    else:
        print(f"revoked {r.key.id} (owner {r.key.owner})")
    return EXIT_OK
