"""``certs init|issue-client|revoke|refresh-crl|list|inspect``: the private CA, offline.

These work on files only, without the daemon; the common ``--socket`` option is accepted
and ignored. After ``revoke`` or ``refresh-crl``, ``securellmctl reload`` makes a running
daemon read the new revocation list.
"""

from __future__ import annotations

import argparse
import functools
import stat
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from securellmctl import certs
from securellmctl.certs import CertError, CertInfo, CrlInfo
from securellmctl.certs.authority import CRL_DAYS, CRL_NAME

from .. import output
from ..errors import EXIT_OK, CtlError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("certs", help="private CA: server and client certificates, revocation (offline)")
    cs = group.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)
    p = cs.add_parser("init", parents=[common], help="create a CA with a server and a client certificate")
    _dir_option(p)
    p.add_argument("--san", action="append", default=[], metavar="NAME",
                   help="extra DNS name or IP address of the server certificate (repeatable; "
                        "localhost and 127.0.0.1 are always included)")
    p.add_argument("--client-name", default="client", metavar="NAME", help="CN of the client certificate")
    p.add_argument("--days", type=int, default=825, help="validity of server and client certificates")
    p.add_argument("--force", action="store_true", help="replace an existing CA and every certificate")
    p.set_defaults(func=_handles_cert_errors(init))
    p = cs.add_parser("issue-client", parents=[common], help="sign a client certificate NAME.crt / NAME.key")
    p.add_argument("name", metavar="NAME")
    _dir_option(p)
    p.add_argument("--days", type=int, default=825, help="validity of the certificate")
    p.set_defaults(func=_handles_cert_errors(issue_client))
    p = cs.add_parser("revoke", parents=[common], help="add a client certificate to the CA's revocation list")
    p.add_argument("name_or_serial", metavar="NAME_OR_SERIAL",
                   help="NAME of a NAME.crt in DIR, or a hexadecimal serial (as `certs list` shows it)")
    _dir_option(p)
    p.set_defaults(func=_handles_cert_errors(revoke))
    p = cs.add_parser("refresh-crl", parents=[common],
                      help=f"re-sign the revocation list before it expires (it is valid for {CRL_DAYS} days)")
    _dir_option(p)
    p.set_defaults(func=_handles_cert_errors(refresh_crl))
    p = cs.add_parser("list", parents=[common], help="list the certificates in DIR with expiry and revocation")
    _dir_option(p)
    p.set_defaults(func=_handles_cert_errors(list_certs))
    p = cs.add_parser("inspect", parents=[common], help="show what a PEM certificate or CRL file holds")
    p.add_argument("path", metavar="PATH", type=Path)
    p.set_defaults(func=_handles_cert_errors(inspect))


def _dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", required=True, type=Path, metavar="DIR", help="the CA directory")


def _handles_cert_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CertError as exc:
            raise CtlError(exc.message) from None

    return run


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):04o}"


def init(args: argparse.Namespace) -> int:
    directory = args.dir.absolute()
    made = certs.init_dir(directory, sans=args.san, client_name=args.client_name, days=args.days,
                          force=args.force)
    files = {name: str(path) for name, path in vars(made).items()}
    if args.json:
        output.print_json({"dir": str(directory), "files": files})
        return EXIT_OK
    for path in vars(made).values():
        print(f"wrote {path} ({_mode(path)})")
    print("\nFor the daemon's config:\n\n[security.tls]")
    print(f'cert_path = "{made.server_cert}"\nkey_path = "{made.server_key}"\nclient_ca_path = "{made.ca_cert}"')
    return EXIT_OK


def issue_client(args: argparse.Namespace) -> int:
    cert, key = certs.issue_client(args.dir, args.name, days=args.days)
    if args.json:
        output.print_json({"cert": str(cert), "key": str(key)})
    else:
        print(f"wrote {cert} ({_mode(cert)})\nwrote {key} ({_mode(key)})")
    return EXIT_OK


def _revoked(directory: Path) -> set[str]:
    path = directory / CRL_NAME
    if not path.exists():
        return set()
    return {s for info in certs.inspect(path) if isinstance(info, CrlInfo) for s in info.revoked_serials}


def revoke(args: argparse.Namespace) -> int:
    before = _revoked(args.dir)
    crl = certs.revoke_client(args.dir, args.name_or_serial)
    after = _revoked(args.dir)
    added = sorted(after - before)
    if args.json:
        output.print_json({"crl": str(crl), "revoked": added, "revoked_serials": sorted(after)})
        return EXIT_OK
    if added:
        print(f"revoked {args.name_or_serial} (serial {', '.join(added)}); {crl} lists {len(after)} serial(s)")
    else:
        print(f"{args.name_or_serial} was already revoked; {crl} re-signed")
    print(f"The daemon checks it when [security.tls] crl_path = \"{crl}\"; run `securellmctl reload` to apply.\n"
          f"Re-sign it with `securellmctl certs refresh-crl` within {CRL_DAYS} days, or every client is refused.",
          file=sys.stderr)
    return EXIT_OK


def refresh_crl(args: argparse.Namespace) -> int:
    crl = certs.refresh_crl(args.dir)
    info = next(i for i in certs.inspect(crl) if isinstance(i, CrlInfo))
    if args.json:
        output.print_json(_crl_dict(info))
    else:
        print(f"re-signed {crl}; valid until {_when(info.next_update)}")
    return EXIT_OK


def _kind(info: CertInfo) -> str:
    if info.is_ca:
        return "ca"
    if "serverAuth" in info.extended_key_usage:
        return "server"
    if "clientAuth" in info.extended_key_usage:
        return "client"
    return "-"


def _status(info: CertInfo, revoked: set[str]) -> str:
    if info.serial in revoked:
        return "revoked"
    return "expired" if info.days_left < 0 else "valid"


def list_certs(args: argparse.Namespace) -> int:
    infos = certs.list_dir(args.dir)
    revoked = _revoked(args.dir)
    if args.json:
        output.print_json([{**_cert_dict(i), "kind": _kind(i), "status": _status(i, revoked)} for i in infos])
        return EXIT_OK
    output.print_table(
        ["FILE", "KIND", "SUBJECT", "SERIAL", "EXPIRES", "DAYS LEFT", "STATUS"],
        [(i.path.name, _kind(i), i.subject, i.serial, _when(i.not_after), i.days_left, _status(i, revoked))
         for i in infos])
    return EXIT_OK


def inspect(args: argparse.Namespace) -> int:
    infos = certs.inspect(args.path)
    if args.json:
        output.print_json([_cert_dict(i) if isinstance(i, CertInfo) else _crl_dict(i) for i in infos])
        return EXIT_OK
    print("\n\n".join(_describe_cert(i) if isinstance(i, CertInfo) else _describe_crl(i) for i in infos))
    return EXIT_OK


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _describe_cert(i: CertInfo) -> str:
    left = f"{i.days_left} days left" if i.days_left >= 0 else f"expired {-i.days_left} days ago"
    pairs: list[tuple[str, Any]] = [
        ("certificate", i.path), ("subject", i.subject), ("issuer", i.issuer), ("serial", i.serial),
        ("SANs", ", ".join(i.sans) or "-"), ("valid from", _when(i.not_before)),
        ("expires", f"{_when(i.not_after)} ({left})"), ("key", i.key_type), ("CA", "yes" if i.is_ca else "no"),
        ("key usage", ", ".join(i.extended_key_usage) or "-"), ("SHA-256", i.fingerprint_sha256)]
    weak = certs.weak_key_reason(i)
    if weak is not None:
        pairs.append(("WARNING", weak))
    return output.fields(pairs)


def _describe_crl(i: CrlInfo) -> str:
    return output.fields([
        ("revocation list", i.path), ("issuer", i.issuer), ("last update", _when(i.last_update)),
        ("next update", _when(i.next_update)), ("CRL number", "-" if i.crl_number is None else i.crl_number),
        ("revoked serials", ", ".join(i.revoked_serials) or "none")])


def _cert_dict(i: CertInfo) -> dict[str, Any]:
    return {"type": "certificate", "path": str(i.path), "subject": i.subject, "issuer": i.issuer,
            "serial": i.serial, "not_before": i.not_before.isoformat(), "not_after": i.not_after.isoformat(),
            "days_left": i.days_left, "sans": list(i.sans), "key_type": i.key_type, "key_bits": i.key_bits,
            "is_ca": i.is_ca, "extended_key_usage": list(i.extended_key_usage),
            "fingerprint_sha256": i.fingerprint_sha256, "weak_key": certs.weak_key_reason(i)}


def _crl_dict(i: CrlInfo) -> dict[str, Any]:
    return {"type": "crl", "path": str(i.path), "issuer": i.issuer, "last_update": i.last_update.isoformat(),
            "next_update": None if i.next_update is None else i.next_update.isoformat(),
            "crl_number": i.crl_number, "revoked_serials": list(i.revoked_serials)}
