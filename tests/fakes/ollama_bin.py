"""A fake ``ollama`` executable (``tests/fakes/bin/ollama``) for the parts the daemon runs.

Real Ollama cannot run here, so this follows its command line and environment:

* ``ollama serve``: serves the fake Ollama HTTP API (:mod:`.ollama_upstream`) on
  ``$OLLAMA_HOST`` (parsed as Ollama's ``envconfig.Host`` does: optional scheme, default
  ``127.0.0.1:11434``), with the models found in ``$OLLAMA_MODELS`` (default
  ``~/.ollama/models``) under ``manifests/<registry>/<namespace>/<model>/<tag>``, named as
  Ollama names them (``llama3.2:1b``, ``ns/model:tag``, ``host/ns/model:tag``). Logs in
  Ollama's ``slog`` text format on stderr; a port in use is
  ``Error: listen tcp ...: bind: address already in use`` and exit 1; SIGTERM/SIGINT exit 0.
  A models directory without manifests serves the fake's default models (the fake HTTP app
  cannot serve an empty list).
* ``ollama --version`` / ``-v``: ``ollama version is X`` when a server answers on
  ``$OLLAMA_HOST``, else the real CLI's two warnings.

:func:`write_manifest` creates the manifest a pulled model leaves behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from . import running
from .behaviour import Behaviour
from .ollama_upstream import VERSION, make_app

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


def parse_host(value: str | None) -> tuple[str, str, int]:
    """``(scheme, host, port)`` from ``$OLLAMA_HOST`` (unset: ``http``, 127.0.0.1, 11434)."""
    raw = (value or "").strip()
    scheme, sep, hostport = raw.partition("://")
    default_port = "11434"
    if not sep:
        scheme, hostport = "http", raw
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport = hostport.split("/", 1)[0]
    host, port = "127.0.0.1", default_port
    if hostport.startswith("[") and "]:" in hostport:
        host, port = hostport[1:].split("]:", 1)
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    elif hostport:
        host = hostport.strip("[]")
    if not port.isdigit() or int(port) > 65535:
        port = default_port
    return scheme, host, int(port)


def models_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def model_names(root: Path) -> list[str]:
    """The models whose manifests are under ``root/manifests``, as Ollama names them."""
    base = root / "manifests"
    names = []
    for manifest in sorted(p for p in base.glob("*/*/*/*") if p.is_file()):
        registry, namespace, model, tag = manifest.relative_to(base).parts
        if registry == DEFAULT_REGISTRY:
            prefix = "" if namespace == DEFAULT_NAMESPACE else f"{namespace}/"
        else:
            prefix = f"{registry}/{namespace}/"
        names.append(f"{prefix}{model}:{tag}")
    return names


def write_manifest(root: Path, name: str) -> Path:
    """A manifest for ``name`` (``model[:tag]``) under models directory ``root``."""
    model, _, tag = name.partition(":")
    parts = model.split("/")
    registry, namespace = DEFAULT_REGISTRY, DEFAULT_NAMESPACE
    if len(parts) == 3:
        registry, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    path = root / "manifests" / registry / namespace / model / (tag or "latest")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": "sha256:" + "0" * 64, "size": 0},
        "layers": []}))
    return path


def _slog(level: str, msg: str, **attrs: object) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    extra = "".join(f" {k}={json.dumps(str(v))}" for k, v in attrs.items())
    sys.stderr.write(f"time={now} level={level} source=routes.go:1 msg={json.dumps(msg)}{extra}\n")
    sys.stderr.flush()


async def _serve() -> int:
    _, host, port = parse_host(os.environ.get("OLLAMA_HOST"))
    root = models_dir()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    names = model_names(root)
    _slog("INFO", "server config", OLLAMA_HOST=f"http://{host}:{port}", OLLAMA_MODELS=root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app: web.Application = make_app(Behaviour(models=names or None))
    try:
        async with running(app, host, port):
            _slog("INFO", f"total blobs: {len(list((root / 'blobs').iterdir()))}")
            _slog("INFO", f"Listening on {host}:{port} (version {VERSION})")
            await stop.wait()
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        sys.stderr.write(f"Error: listen tcp {host}:{port}: bind: {reason}\n")
        return 1
    return 0


def _version() -> int:
    scheme, host, port = parse_host(os.environ.get("OLLAMA_HOST"))
    server = ""
    try:
        with urllib.request.urlopen(f"{scheme}://{host}:{port}/api/version", timeout=5) as r:
            server = json.loads(r.read())["version"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        print("Warning: could not connect to a running Ollama instance")
    if server:
        print(f"ollama version is {server}")
    if server != VERSION:
        print(f"Warning: client version is {VERSION}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        return asyncio.run(_serve())
    if argv[:1] in (["--version"], ["-v"]):
        return _version()
    command = argv[0] if argv else ""
    sys.stderr.write(f'Error: unknown command "{command}" for "ollama"\n')
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
