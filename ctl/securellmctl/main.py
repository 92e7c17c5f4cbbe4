"""``securellmctl``: the argument tree and exit codes.

Exit codes: 0 ok, 1 failure, 2 usage, 3 daemon unreachable.
"""

from __future__ import annotations

import argparse
import sys

from securellm_bridge import __version__

from .client import SOCKET_ENV, default_socket
from .commands import audit, certs, completion, events, keys, models, security, system, usage, vram
from .errors import EXIT_FAILURE, CtlError

COMMAND_GROUPS = (system, keys, audit, usage, certs, security, models, vram, events, completion)


def build_parser() -> argparse.ArgumentParser:
    # The common options are accepted before and after the command. On subcommands their
    # default is SUPPRESS so that a value given before the command is not overwritten.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"control socket (default: ${SOCKET_ENV}, else /run/securellm/control.sock)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of tables")
    common.add_argument("--timeout", type=float, metavar="SECONDS", default=argparse.SUPPRESS,
                        help="how long to wait for the daemon (default: 30)")
    root = argparse.ArgumentParser(prog="securellmctl", description="Control the securellm-bridge daemon.")
    root.add_argument("--version", action="version", version=f"securellmctl {__version__}")
    root.add_argument("--socket", metavar="PATH", default=None, help=argparse.SUPPRESS)
    root.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    root.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    sub = root.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub, common)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.root_parser = parser
    if args.socket is None:
        args.socket = default_socket()
    try:
        return int(args.func(args))
    except CtlError as exc:
        print(f"securellmctl: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:  # e.g. `securellmctl ... | head`
        sys.stderr.close()
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
