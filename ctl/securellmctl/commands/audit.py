"""``audit verify|query|tail``: check the tamper-evident chain, and read the audit trail.

``verify`` works offline: it reads the journal (``systemd.journal.Reader``) or the JSONL
files itself, with the chain key, and needs no running daemon. ``query`` and ``tail`` ask
the daemon over the control socket.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from securellm_bridge import config as config_mod
from securellm_bridge._pb import audit_pb2, audit_pb2_grpc
from securellm_bridge.audit import chainkey
from securellm_bridge.audit.reader import FileSource, Filter, JournalSource
from securellm_bridge.audit.verify import Report, verify, verify_merged
from securellm_bridge.errors import BridgeError, ConfigErrors

from .. import output
from ..client import Client
from ..errors import EXIT_FAILURE, EXIT_OK, CtlError, Unreachable

_RELATIVE_RE = re.compile(r"^(?:-\s*(\d+(?:\.\d+)?)\s*([smhd])|(\d+(?:\.\d+)?)\s*([smhd])\s+ago)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TIME_HELP = 'ISO date/time ("2025-01-31", "2025-01-31 14:00", local unless it has an offset), @EPOCH, "-2h", ' \
            '"30m ago", "today", "yesterday" or "now"'


def parse_time(text: str) -> float:
    """A point in time as seconds since the epoch (an argparse ``type``)."""
    t = text.strip()
    now = time.time()
    if t == "now":
        return now
    if t in ("today", "yesterday"):
        midnight = dt.datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        return (midnight - dt.timedelta(days=1 if t == "yesterday" else 0)).timestamp()
    if t.startswith("@"):
        try:
            return float(t[1:])
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected @EPOCH seconds, got {text!r}") from None
    m = _RELATIVE_RE.match(t)
    if m:
        amount, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        return now - float(amount) * _UNIT_S[unit]
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a time: {TIME_HELP}; got {text!r}") from None
    return (when if when.tzinfo else when.astimezone()).timestamp()


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--event", help="only this event type, e.g. request, key_created, auth_failure")
    p.add_argument("--key", metavar="KEY_ID", help="only records of this API key id")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--model", help="only this model")
    p.add_argument("--status", help="only request records with this HTTP status, e.g. 429")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser("audit", help="verify and read the audit trail")
    au = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    p = au.add_parser(
        "verify", parents=[common], help="check the tamper-evident chain (offline)",
        description="Read the audit records directly (the local journal, a journal directory, or JSONL "
                    "files) and check sequence numbers and the HMAC chain. Prints OK, or the first gap, "
                    "modified, reordered or forged record, and exits 1 on a failure. With both "
                    "--journal-dir and --file, their union is checked (records missing from the "
                    "journal may be in the fallback file).")
    p.add_argument("--since", type=parse_time, metavar="TIME", help=f"from this time: {TIME_HELP}")
    p.add_argument("--until", type=parse_time, metavar="TIME", help="up to this time")
    p.add_argument("--journal-dir", metavar="DIR", help="a journal directory (default: the local system journal)")
    p.add_argument("--file", metavar="FILE", type=Path, action="append", default=[],
                   help="a JSONL audit file (its rotated siblings are included); may be repeated")
    p.add_argument("--key-file", metavar="FILE", type=Path,
                   help="the chain key (default: chain_key or state.dir/audit.key of the daemon's config)")
    p.add_argument("--config", metavar="PATH", help=f"the daemon's config (default: ${config_mod.ENV_VAR}, "
                                                    f"else {config_mod.DEFAULT_PATH})")
    p.set_defaults(func=verify_cmd)
    p = au.add_parser("query", parents=[common], help="search the audit trail (newest records in the window)")
    p.add_argument("--since", type=parse_time, metavar="TIME", help=f"from this time: {TIME_HELP}")
    p.add_argument("--until", type=parse_time, metavar="TIME", help="up to this time")
    _filter_args(p)
    p.add_argument("--limit", type=int, default=100, help="at most this many records (default: 100)")
    p.set_defaults(func=query)
    p = au.add_parser("tail", parents=[common], help="show the newest records; -f to follow")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records as they are written")
    p.add_argument("-n", "--lines", type=int, default=10, help="how many recent records first (default: 10)")
    _filter_args(p)
    p.set_defaults(func=tail)


# -- verify ---------------------------------------------------------------------------------

def _key(args: argparse.Namespace) -> bytes:
    try:
        if args.key_file is not None:
            return chainkey.read_key_file(args.key_file)
        path = config_mod.resolve_path(args.config)
        cfg = config_mod.load(path).config
        return chainkey.load(cfg.security.audit, cfg.state.dir)
    except ConfigErrors as exc:
        raise CtlError(f"cannot find the chain key in the config (or pass --key-file):\n{exc}") from None
    except BridgeError as exc:
        raise CtlError(exc.message) from None


def _run_verify(args: argparse.Namespace, key: bytes) -> Report:
    flt = Filter(args.since, args.until)
    sources: list[JournalSource | FileSource] = []
    if args.journal_dir or not args.file:
        sources.append(JournalSource(args.journal_dir))
    if args.file:
        sources.append(FileSource(args.file))
    anchors = [a for a in (s.anchor(args.since) for s in sources) if a is not None] if args.since else []
    anchor = max(anchors, key=lambda a: a.seq or 0) if anchors else None
    name = " + ".join(s.name for s in sources)
    if len(sources) == 1:
        return verify(sources[0].entries(flt), key, source=name, anchor=anchor)
    return verify_merged([list(s.entries(flt)) for s in sources], key, source=name, anchor=anchor)


def verify_cmd(args: argparse.Namespace) -> int:
    key = _key(args)
    try:
        report = _run_verify(args, key)
    except OSError as exc:
        raise CtlError(f"cannot read the audit records: {exc}") from None
    if args.json:
        problem = report.problem
        output.print_json({
            "ok": report.ok, "source": report.source, "records": report.records, "first_seq": report.first_seq,
            "last_seq": report.last_seq, "notes": list(report.notes),
            "problem": None if problem is None else {"kind": problem.kind, "seq": problem.seq,
                                                     "where": problem.where, "message": problem.message}})
    elif report.ok:
        span = f", seq {report.first_seq}..{report.last_seq}" if report.records else ""
        print(f"OK: {report.records} records verified{span} ({report.source})")
        for note in report.notes:
            print(f"note: {note}")
    else:
        assert report.problem is not None
        print(f"FAILED: {report.problem.message}")
        print(f"({report.records} records verified before it, in {report.source})")
        for note in report.notes:
            print(f"note: {note}")
    return EXIT_OK if report.ok else EXIT_FAILURE


# -- query and tail -------------------------------------------------------------------------

def _ts(epoch: float | None) -> Timestamp | None:
    if epoch is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(epoch * 1e9))
    return ts


def _filter(args: argparse.Namespace) -> audit_pb2.AuditFilter:
    return audit_pb2.AuditFilter(event=args.event or "", key_id=args.key or "", provider=args.provider or "",
                                 model=args.model or "", status=args.status or "")


def record_dict(r: audit_pb2.AuditRecord) -> dict[str, Any]:
    return {"seq": r.seq, "event": r.event, "time": r.time.ToDatetime(tzinfo=dt.timezone.utc).isoformat(),
            "priority": r.priority, "message_id": r.message_id, "message": r.message,
            "fields": dict(sorted(r.fields.items())), "chain": r.chain}


def _line(r: audit_pb2.AuditRecord) -> str:
    return f"{output.when(r.time)}  #{r.seq:<6} {r.event:<17} {r.message}"


def _print_records(records: Iterable[audit_pb2.AuditRecord], as_json: bool) -> None:
    for r in records:
        print(json.dumps(record_dict(r), ensure_ascii=False) if as_json else _line(r), flush=True)


def query(args: argparse.Namespace) -> int:
    req = audit_pb2.QueryAuditRequest(since=_ts(args.since), until=_ts(args.until), filter=_filter(args),
                                      limit=args.limit)
    with Client(args.socket, args.timeout) as c:
        r = c.call(audit_pb2_grpc.AuditStub(c.channel).Query, req)
    if args.json:
        output.print_json([record_dict(x) for x in r.records])
    else:
        output.print_table(
            ["TIME", "SEQ", "EVENT", "KEY", "MODEL", "STATUS", "MESSAGE"],
            [(output.when(x.time), x.seq, x.event, x.fields.get("key_id", "-"), x.fields.get("model", "-"),
              x.fields.get("status", "-"), x.message) for x in r.records])
    if r.truncated:
        print(f"(more records match: showing the newest {len(r.records)}; use --limit or --since)", file=sys.stderr)
    return EXIT_OK


def tail(args: argparse.Namespace) -> int:
    if not args.follow:
        req = audit_pb2.QueryAuditRequest(filter=_filter(args), limit=args.lines)
        with Client(args.socket, args.timeout) as c:
            r = c.call(audit_pb2_grpc.AuditStub(c.channel).Query, req)
        _print_records(r.records, args.json)
        return EXIT_OK
    with Client(args.socket, args.timeout) as c:
        stream = audit_pb2_grpc.AuditStub(c.channel).Tail(
            audit_pb2.TailAuditRequest(lines=args.lines, filter=_filter(args)))  # no deadline: it follows
        try:
            _print_records(stream, args.json)
        except KeyboardInterrupt:
            stream.cancel()
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""  # type: ignore[attr-defined]
            if code == grpc.StatusCode.UNAVAILABLE:
                raise Unreachable(f"the daemon is unavailable: {details}") from None
            raise CtlError(f"{code.name.lower()}: {details}") from None
    return EXIT_OK

