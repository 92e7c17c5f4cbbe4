"""``completion bash|zsh``: shell completion scripts generated from the argument parser."""

from __future__ import annotations

import argparse

import shtab

from ..errors import EXIT_OK


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("completion", help="print a shell completion script",
                       description="bash: securellmctl completion bash > /etc/bash_completion.d/securellmctl\n"
                                   "zsh:  securellmctl completion zsh > \"${fpath[1]}/_securellmctl\"",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=completion)


def completion(args: argparse.Namespace) -> int:
    print(shtab.complete(args.root_parser, shell=args.shell))
    return EXIT_OK
