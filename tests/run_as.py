"""Run securellmctl as another user: ``python -m tests.run_as UID GID GROUPS -- ARGS...``.

The interpreter starts as root so that it can load the code from a root-only venv, then
drops to the given uid/gid/groups *before* it touches the control socket. Everything the
command does against the daemon happens as that user, like ``setpriv --reuid``.
GROUPS is a comma-separated list of gids, or "-" for none.
"""

from __future__ import annotations

import os
import sys

import securellmctl.main as ctl_main


def main() -> int:
    uid, gid, groups = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    assert sys.argv[4] == "--"
    os.setgroups([] if groups == "-" else [int(g) for g in groups.split(",")])
    os.setgid(gid)
    os.setuid(uid)
    assert os.getuid() == uid and os.geteuid() == uid
    return ctl_main.main(sys.argv[5:])


if __name__ == "__main__":
    sys.exit(main())
