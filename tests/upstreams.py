"""Fake upstreams (tests/fakes) as real subprocesses on loopback, driven over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

from .daemon import ROOT


class FakeUpstream:
    def __init__(self, kind: str, *, api_key: str | None = None, extra: tuple[str, ...] = ()) -> None:
        env = dict(os.environ)
        args = [sys.executable, "-m", f"tests.fakes.{kind}_upstream", "--host", "127.0.0.1", "--port", "0", *extra]
        if api_key is not None:
            env["FAKE_UPSTREAM_KEY"] = api_key
            args += ["--api-key-env", "FAKE_UPSTREAM_KEY"]
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING "):
            self.proc.kill()
            raise RuntimeError(f"fake {kind} upstream did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def script(self, *faults: str) -> None:
        self._call("POST", "/_fake/script", {"faults": list(faults)})

    def requests(self) -> list[dict[str, Any]]:
        got = self._call("GET", "/_fake/requests")
        return got["requests"] if isinstance(got, dict) else got

    def reset(self) -> None:
        self._call("POST", "/_fake/reset", {})

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
