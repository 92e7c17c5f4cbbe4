"""A running bridge with fake upstreams behind it, and clients that speak real mTLS."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .daemon import Daemon
from .upstreams import FakeUpstream


def https_address(d: Daemon) -> str:
    status = json.loads(d.ctl("status", "--json").stdout)
    (addr,) = [entry["address"] for entry in status["listeners"] if entry["name"] in ("https", "http")]
    return addr


def client_ssl(d: Daemon, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(d.certs.ca_cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


@dataclass
class Bridge:
    daemon: Daemon
    key: str
    key_id: str
    base_url: str
    upstreams: dict[str, FakeUpstream] = field(default_factory=dict)

    def http(self, *, cert: bool = True, timeout: float = 30.0) -> httpx.Client:
        d = self.daemon
        ctx = client_ssl(d, d.certs.client_cert, d.certs.client_key) if cert else client_ssl(d)
        return httpx.Client(base_url=self.base_url, verify=ctx, timeout=timeout)

    def post(self, path: str, body: Any, *, key: str | None = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> httpx.Response:
        hdrs = {"Authorization": f"Bearer {key or self.key}", **(headers or {})}
        with self.http() as c:
            if raw is not None:
                return c.post(path, content=raw, headers={**hdrs, "Content-Type": "application/json"})
            return c.post(path, json=body, headers=hdrs)

    def get(self, path: str, *, key: str | None = None) -> httpx.Response:
        with self.http() as c:
            return c.get(path, headers={"Authorization": f"Bearer {key or self.key}"})

    def openai(self, **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.key, max_retries=0,
                             http_client=self.http(), **kwargs)

    def new_key(self, *args: str) -> tuple[str, str]:
        r = self.daemon.ctl("keys", "create", "--owner", "test", "--json", *args)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        return data["key"], data["id"]

    def metrics(self) -> str:
        with self.http() as c:
            return c.get("/metrics").text


def chat(model: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def start_bridge(make_daemon: Any, *, providers: dict[str, dict[str, Any]], upstreams: dict[str, FakeUpstream],
                 extra: dict[str, dict[str, Any]] | None = None) -> Bridge:
    d = make_daemon()
    cfg = d.updated(**(extra or {}))
    cfg["providers"] = providers
    d.write_config(cfg)
    d.config = cfg
    d.start()
    r = d.ctl("keys", "create", "--owner", "tests", "--json")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    return Bridge(d, created["key"], created["id"], f"https://{https_address(d)}", upstreams)
