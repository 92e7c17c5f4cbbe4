"""What both benchmarks do with the bridge daemons they start (``tests.daemon.Daemon``): run this
checkout's code, reach a daemon with an API key over mTLS, and stop it."""

from __future__ import annotations

import json
import os
import shutil
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import loadgen
from .loadgen import Target

ROOT = Path(__file__).resolve().parents[2]
PATH = "/v1/chat/completions"


def tree_pythonpath() -> None:
    """Make every process a benchmark starts run the working tree's code (daemon/, ctl/),
    even when the venv holds a regular (non-editable) install of the project."""
    tree = [str(ROOT / "daemon"), str(ROOT / "ctl"), str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join(tree + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and p not in tree])


def client_tls(certs: Any) -> ssl.SSLContext:
    """The mTLS client context for a ``securellmctl.certs`` set (its CA, client certificate and key)."""
    return loadgen.client_context(str(certs.ca_cert), str(certs.client_cert), str(certs.client_key))


def api_key_target(daemon: Any, name: str, certs: Any) -> Target:
    """A new API key made with securellmctl, and the daemon's HTTPS listener as a loadgen target
    that sends it."""
    from tests.bridge import https_address

    created = daemon.ctl("keys", "create", "--owner", "bench", "--json")
    if created.returncode != 0:
        raise RuntimeError(f"keys create failed: {created.stderr}")
    key = json.loads(created.stdout)["key"]
    host, _, port = https_address(daemon).rpartition(":")
    return Target(name, host.strip("[]"), int(port), client_tls(certs), (("Authorization", f"Bearer {key}"),))


def stop_daemons(daemons: Iterable[Any]) -> None:
    for d in daemons:
        d.stop()
        shutil.rmtree(d.run_dir, ignore_errors=True)
