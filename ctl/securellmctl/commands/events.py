"""``events [--model NAME]``: follow local model events (state changes, evictions, crashes,
load progress) until Ctrl-C. With ``--json``, one JSON object per line.

Once the daemon has the subscription in place, a note goes to stderr; every event after
that note is shown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from securellm_bridge._pb import models_pb2, models_pb2_grpc

from .. import output
from ..client import Client
from ..errors import EXIT_OK
from ..streaming import stream_errors

WATCHING = "securellmctl: watching local model events (Ctrl-C to stop)"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("events", parents=[common], help="follow local model events until Ctrl-C")
    p.add_argument("--model", metavar="NAME", help="only this model's events")
    p.set_defaults(func=follow)


def event_dict(e: models_pb2.ModelEvent) -> dict[str, Any]:
    return {"time": e.at.ToDatetime(tzinfo=dt.timezone.utc).isoformat(), "kind": e.kind, "model": e.model,
            "state": e.state, "reason": e.reason, "detail": dict(sorted(e.detail.items()))}


def _line(e: models_pb2.ModelEvent) -> str:
    extra = "".join(f" {k}={v}" for k, v in sorted(e.detail.items()))
    reason = f"  ({e.reason})" if e.reason else ""
    return f"{output.when(e.at)}  {e.kind:<13} {e.model or '-':<24} {e.state}{reason}{extra}"


def follow(args: argparse.Namespace) -> int:
    with Client(args.socket, args.timeout) as c:
        stream = models_pb2_grpc.EventsStub(c.channel).Watch(
            models_pb2.WatchEventsRequest(model=args.model or ""))  # no deadline: it follows
        try:
            with stream_errors():
                stream.initial_metadata()  # the subscription is in place
                print(WATCHING, file=sys.stderr, flush=True)
                for event in stream:
                    print(json.dumps(event_dict(event)) if args.json else _line(event), flush=True)
        except KeyboardInterrupt:
            pass
        finally:
            stream.cancel()
    return EXIT_OK
