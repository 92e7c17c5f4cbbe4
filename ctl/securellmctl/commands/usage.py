"""``usage [--key ID] [--since T]``: requests, tokens and cost per day, key, provider and model."""

from __future__ import annotations

import argparse
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

from securellm_bridge._pb import usage_pb2, usage_pb2_grpc

from .. import output
from ..client import Client
from ..errors import EXIT_OK

_RELATIVE_RE = re.compile(r"([1-9][0-9]{0,4})d")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("usage", parents=[common], help="show usage and cost per day, key, provider and model",
                       description="Usage is counted per UTC day. Totals follow the rows.")
    p.add_argument("--key", metavar="ID", help="only this API key (default: every key)")
    p.add_argument("--since", metavar="T", type=since_date,
                   help="first day: YYYY-MM-DD (UTC), or Nd for the last N days including today")
    p.set_defaults(func=show)


def since_date(text: str, today: date | None = None) -> date:
    """``YYYY-MM-DD``, or ``Nd``: the first of the last N UTC days (``1d`` is today)."""
    match = _RELATIVE_RE.fullmatch(text)
    if match:
        current = today or datetime.now(timezone.utc).date()
        return current - timedelta(days=int(match.group(1)) - 1)
    problem = argparse.ArgumentTypeError(f"expected YYYY-MM-DD or a number of days like 7d, got {text!r}")
    if not _DATE_RE.fullmatch(text):
        raise problem
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise problem from None


def _row(r: usage_pb2.UsageRow) -> dict[str, Any]:
    return {"day": r.day, "key_id": r.key_id or None, "provider": r.provider, "model": r.model,
            "requests": r.requests, "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens, "cost": r.cost}


def show(args: argparse.Namespace) -> int:
    req = usage_pb2.GetUsageRequest(key_id=args.key or "", since=args.since.isoformat() if args.since else "")
    with Client(args.socket, args.timeout) as c:
        r = c.call(usage_pb2_grpc.UsageStub(c.channel).Get, req)
    t = r.totals
    if args.json:
        output.print_json({"rows": [_row(row) for row in r.rows],
                           "totals": {"requests": t.requests, "prompt_tokens": t.prompt_tokens,
                                      "completion_tokens": t.completion_tokens, "cost": t.cost}})
        return EXIT_OK
    if not r.rows:
        print("no usage recorded" + (f" since {args.since.isoformat()}" if args.since else ""))
        return EXIT_OK
    rows = [(u.day, u.key_id or "-", u.provider, u.model, u.requests, u.prompt_tokens, u.completion_tokens,
             f"{u.cost:.4f}") for u in r.rows]
    rows.append(("total", "", "", "", t.requests, t.prompt_tokens, t.completion_tokens, f"{t.cost:.4f}"))
    output.print_table(["DAY", "KEY", "PROVIDER", "MODEL", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS",
                        "COST"], rows)
    return EXIT_OK
