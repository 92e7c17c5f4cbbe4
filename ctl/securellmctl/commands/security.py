"""``security audit [--config PATH]``: weaknesses of the configuration and of the files it names.

Without ``--config`` the daemon runs the checks, as its own user, against the configuration
it runs with. With ``--config``, or when the daemon cannot be reached, they run here,
offline, against the file; secret references are checked for form and never read. Exit 1
when any finding is high, 0 otherwise, 3 when there is nothing to audit (no daemon, and no
usable config file). Every check is described in docs/SECURITY.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Literal

from securellm_bridge import config as config_mod
from securellm_bridge._pb import security_pb2, security_pb2_grpc
from securellm_bridge.errors import ConfigErrors
from securellm_bridge.security import posture
from securellm_bridge.security.posture_base import SEVERITIES, Finding, Severity

from .. import output
from ..client import Client
from ..errors import EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE, CtlError, Unreachable

#: A severity this CLI does not know (from a newer daemon) counts as high: fail safe.
_SEVERITY: dict[int, Severity] = {security_pb2.SEVERITY_LOW: "low", security_pb2.SEVERITY_MEDIUM: "medium",
                                  security_pb2.SEVERITY_HIGH: "high"}


class NothingToAudit(CtlError):
    exit_code = EXIT_UNREACHABLE


@dataclass(frozen=True)
class Report:
    config_path: str
    #: Who ran the checks: the daemon, or this command ("local").
    source: Literal["daemon", "local"]
    findings: tuple[Finding, ...]


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("security", help="security posture of the configuration and its files")
    ss = group.add_subparsers(dest="security_command", metavar="COMMAND", required=True)
    p = ss.add_parser(
        "audit", parents=[common], help="check the configuration and the files it names for weaknesses",
        description="Without --config the daemon runs the checks against the configuration it runs with; "
                    "if it cannot be reached they run here against "
                    f"${config_mod.ENV_VAR} or {config_mod.DEFAULT_PATH}. Exit 1 when a finding is high. "
                    "The checks are described in docs/SECURITY.md.")
    p.add_argument("--config", metavar="PATH", help="audit this file here, offline, without the daemon")
    p.set_defaults(func=audit)


def audit(args: argparse.Namespace) -> int:
    if args.config:
        report = _local(args.config)
    else:
        try:
            report = _from_daemon(args.socket, args.timeout)
        except Unreachable as exc:
            path = config_mod.resolve_path(None, dict(os.environ))
            print(f"securellmctl: {exc.message}; auditing {path} here instead", file=sys.stderr)
            report = _local(path)
    _print(report, args.json)
    return EXIT_FAILURE if any(f.severity == "high" for f in report.findings) else EXIT_OK


def _local(path: str) -> Report:
    full = os.path.abspath(path)
    try:
        findings = posture.audit_path(full)
    except ConfigErrors as exc:
        raise NothingToAudit(f"{full} cannot be audited:\n{exc.message}") from None
    return Report(full, "local", tuple(findings))


def _from_daemon(socket: str, timeout: float) -> Report:
    with Client(socket, timeout) as c:
        r = c.call(security_pb2_grpc.SecurityStub(c.channel).RunAudit, security_pb2.RunAuditRequest())
    findings = tuple(Finding(id=f.id, severity=_SEVERITY.get(f.severity, "high"), title=f.title, detail=f.detail,
                             fix=f.fix) for f in r.findings)
    return Report(r.config_path, "daemon", findings)


def _print(report: Report, as_json: bool) -> None:
    counts = Counter(f.severity for f in report.findings)
    if as_json:
        output.print_json({"config_path": report.config_path, "source": report.source,
                           "counts": {s: counts[s] for s in SEVERITIES},
                           "findings": [asdict(f) for f in report.findings]})
        return
    by = "by the daemon" if report.source == "daemon" else "here, offline"
    if not report.findings:
        print(f"{report.config_path} (checked {by}): no findings")
        return
    output.print_table(["SEVERITY", "CHECK", "DETAIL", "FIX"],
                       [(f.severity.upper(), f.id, f.detail, f.fix) for f in report.findings])
    summary = ", ".join(f"{counts[s]} {s}" for s in SEVERITIES if counts[s])
    print(f"\n{report.config_path} (checked {by}): {summary}")
