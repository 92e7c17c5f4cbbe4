"""Local models through the real daemon and the real llama-server: on-demand load, chat and
stream, keep-alive unload, eviction order on a simulated GPU, a backend killed mid-stream,
and no orphans after the daemon is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from securellm_bridge.local.backends.children import is_alive

from .bridge import Bridge, chat, start_bridge
from .local_models import llama_servers, local_config, write_models

pytestmark = pytest.mark.slow


def _bridge(make_daemon: Callable[..., Any], tmp_path: Path, **kw: Any) -> Bridge:
    models = tmp_path / "models"
    if not models.exists():
        write_models(models)
    return start_bridge(make_daemon, upstreams={}, providers={}, extra=local_config(models, **kw))


def _loaded(b: Bridge) -> set[str]:
    return set(llama_servers(parent=b.daemon.proc.pid))  # type: ignore[union-attr]


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_on_demand_load_chat_stream_and_models_list(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    b = _bridge(make_daemon, tmp_path)
    ids = {m["id"]: m["owned_by"] for m in b.get("/v1/models").json()["data"]}
    assert ids == {"tiny-a": "local", "tiny-b": "local", "tiny-c": "local"}
    assert _loaded(b) == set()
    r = b.post("/v1/chat/completions", chat("tiny-a", max_tokens=8))
    assert r.status_code == 200, r.text
    assert r.headers["x-securellm-provider"] == "local"
    body = r.json()
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] > 0
    assert _loaded(b) == {"tiny-a"}
    chunks = list(b.openai().chat.completions.create(model="tiny-a", stream=True, max_tokens=8,
                                                     stream_options={"include_usage": True},
                                                     messages=[{"role": "user", "content": "stream"}]))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert 'securellm_tokens_total{model="tiny-a",provider="local",type="completion"}' in b.metrics()


def test_concurrent_requests_share_one_load(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    import concurrent.futures

    b = _bridge(make_daemon, tmp_path)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: b.post("/v1/chat/completions", chat("tiny-b", max_tokens=4)).status_code,
                                range(6)))
    assert results == [200] * 6
    assert _loaded(b) == {"tiny-b"}
    assert b.daemon.wait_log("local model tiny-b ready").count("local model tiny-b ready") == 1


def test_keep_alive_unloads_idle_model(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    b = _bridge(make_daemon, tmp_path, per_model={"tiny-a": {"keep_alive": 1.0}})
    assert b.post("/v1/chat/completions", chat("tiny-a", max_tokens=4)).status_code == 200
    pid = llama_servers(b.daemon.proc.pid)["tiny-a"]  # type: ignore[union-attr]  # before it idles out
    assert b.post("/v1/chat/completions", chat("tiny-b", max_tokens=4)).status_code == 200
    _wait(lambda: not is_alive(pid))
    assert _loaded(b) == {"tiny-b"}  # keep_alive 0: never unloaded for idleness
    b.daemon.wait_log("unloaded (idle for 1 s)")


@pytest.mark.parametrize("policy, per_model, touch, victim", [
    ("lru", {}, ["tiny-a", "tiny-b", "tiny-a"], "tiny-b"),
    ("fifo", {}, ["tiny-a", "tiny-b", "tiny-a"], "tiny-a"),
    ("priority", {"tiny-a": {"priority": 1}, "tiny-b": {"priority": 5}}, ["tiny-b", "tiny-a", "tiny-b"], "tiny-a"),
])
def test_eviction_order_on_a_simulated_gpu(make_daemon: Callable[..., Any], tmp_path: Path, policy: str,
                                           per_model: dict[str, Any], touch: list[str], victim: str) -> None:
    b = _bridge(make_daemon, tmp_path, fit=2, policy=policy, per_model=per_model)
    for name in touch:
        assert b.post("/v1/chat/completions", chat(name, max_tokens=2)).status_code == 200
    assert _loaded(b) == {"tiny-a", "tiny-b"}
    assert b.post("/v1/chat/completions", chat("tiny-c", max_tokens=2)).status_code == 200
    assert _loaded(b) == {"tiny-a", "tiny-b", "tiny-c"} - {victim}
    b.daemon.wait_log(f"local model {victim} unloaded (evicted for tiny-c)")


def test_pinned_model_is_never_evicted(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    b = _bridge(make_daemon, tmp_path, fit=1, per_model={"tiny-a": {"pinned": True}})
    assert b.post("/v1/chat/completions", chat("tiny-a", max_tokens=2)).status_code == 200
    r = b.post("/v1/chat/completions", chat("tiny-b", max_tokens=2))
    assert r.status_code == 503 and "does not fit" in r.json()["error"]["message"]
    assert _loaded(b) == {"tiny-a"}


def test_backend_killed_mid_stream_gives_clean_error_and_restarts(make_daemon: Callable[..., Any],
                                                                  tmp_path: Path) -> None:
    # A context far longer than the tiny model's 256 tokens: it would otherwise finish the whole
    # answer (finish_reason "length") before the client has read a few events and killed it.
    b = _bridge(make_daemon, tmp_path, per_model={"tiny-a": {"ctx": 16384}})
    assert b.post("/v1/chat/completions", chat("tiny-a", max_tokens=2)).status_code == 200
    pid = llama_servers(b.daemon.proc.pid)["tiny-a"]  # type: ignore[union-attr]
    events: list[str] = []
    with b.http() as c, c.stream("POST", "/v1/chat/completions",
                                 json=chat("tiny-a", "tell a long story", stream=True, max_tokens=16000,
                                           ignore_eos=True),
                                 headers={"Authorization": f"Bearer {b.key}"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    os.kill(pid, signal.SIGKILL)
    last = json.loads(events[-1])
    assert "error" in last and last["error"]["message"], events[-3:]
    assert "Traceback" not in b.daemon.log()
    _wait(lambda: "tiny-a" in llama_servers(b.daemon.proc.pid) and llama_servers(b.daemon.proc.pid)["tiny-a"] != pid)  # type: ignore[union-attr]
    _wait(lambda: b.post("/v1/chat/completions", chat("tiny-a", max_tokens=2)).status_code == 200)


def test_sigkill_of_the_daemon_leaves_no_llama_server(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    b = _bridge(make_daemon, tmp_path)
    for name in ("tiny-a", "tiny-b"):
        assert b.post("/v1/chat/completions", chat(name, max_tokens=2)).status_code == 200
    pids = llama_servers(b.daemon.proc.pid).values()  # type: ignore[union-attr]
    assert len(pids) == 2
    b.daemon.proc.kill()  # type: ignore[union-attr]
    b.daemon.proc.wait()  # type: ignore[union-attr]
    _wait(lambda: not any(is_alive(p) for p in pids), timeout=10)


def _with_cloud(make_daemon: Callable[..., Any], tmp_path: Path, up: Any, aliases: dict[str, list[str]],
                **kw: Any) -> Bridge:
    models = tmp_path / "models"
    write_models(models)
    extra = local_config(models, **kw)
    extra["router"] = {"aliases": aliases, "retry_base_delay_seconds": 0.01}
    return start_bridge(make_daemon, upstreams={"cloud": up}, extra=extra, providers={
        "cloud": {"kind": "openai", "base_url": up.url + "/v1", "models": ["gpt-4o-mini"]}})


def test_cloud_failure_falls_back_to_local_model(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    from .upstreams import FakeUpstream

    up = FakeUpstream("openai")
    try:
        b = _with_cloud(make_daemon, tmp_path, up, {"smart": ["gpt-4o-mini", "local/tiny-a"]})
        up.script("500", "503")
        r = b.post("/v1/chat/completions", chat("smart", max_tokens=4))
        assert r.status_code == 200 and r.headers["x-securellm-provider"] == "local"
        assert _loaded(b) == {"tiny-a"}
    finally:
        up.stop()


def test_local_failure_falls_back_to_cloud(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    from .upstreams import FakeUpstream

    up = FakeUpstream("openai")
    try:
        b = _with_cloud(make_daemon, tmp_path, up, {"smart": ["local/tiny-a", "gpt-4o-mini"]}, fit=0)
        r = b.post("/v1/chat/completions", chat("smart", max_tokens=4))
        assert r.status_code == 200 and r.headers["x-securellm-provider"] == "cloud"
        assert _loaded(b) == set()
        b.daemon.wait_log("does not fit")
    finally:
        up.stop()


def test_ollama_backed_local_model_through_a_supervised_ollama(make_daemon: Callable[..., Any],
                                                              tmp_path: Path) -> None:
    from .daemon import ROOT

    models = tmp_path / "models"
    write_models(models, ("tiny-a",))
    extra = local_config(models)
    extra["local"]["models"]["llama3.2:1b"] = {"backend": "ollama"}
    extra["backends"]["ollama"] = {"binary": str(ROOT / "tests" / "fakes" / "bin" / "ollama"),
                                   "models_dir": str(tmp_path / "ollama-models")}
    b = start_bridge(make_daemon, upstreams={}, providers={}, extra=extra)
    ids = {m["id"] for m in b.get("/v1/models").json()["data"]}
    assert {"tiny-a", "llama3.2:1b"} <= ids
    r = b.post("/v1/chat/completions", chat("llama3.2:1b", "hello ollama"))
    assert r.status_code == 200, r.text
    assert r.headers["x-securellm-provider"] == "local" and r.json()["object"] == "chat.completion"
    chunks = list(b.openai().chat.completions.create(model="llama3.2:1b", stream=True,
                                                     messages=[{"role": "user", "content": "stream it"}]))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)


def test_forwarder_request_right_after_a_stream(tmp_path: Path) -> None:
    """llama-server closes the connection after a stream although it offered keep-alive: the
    next request must not get that dead pooled connection (it did, before Connection: close)."""
    import asyncio

    from securellm_bridge.local.backends.llamacpp import LlamaCppBackend
    from securellm_bridge.local.instances import LlamaInstance
    from securellm_bridge.providers.base import Call

    from .llama import require_llama_server

    path = write_models(tmp_path / "models", ("tiny-a",))["tiny-a"]

    async def run() -> None:
        inst = LlamaInstance(LlamaCppBackend("tiny-a", path, binary=require_llama_server(), ctx=256, gpu_layers=0,
                                             parallel=1))
        await inst.start()
        try:
            body = chat("tiny-a", max_tokens=2)
            for i in range(10):
                stream = await inst.provider.open_stream(Call(f"r{i}", "chat", "tiny-a", {**body, "stream": True},
                                                              None, True, False, 0))
                async for _ in stream:
                    pass
                await stream.aclose()
                reply = await inst.provider.complete(Call(f"c{i}", "chat", "tiny-a", body, None, False, False, 0))
                assert reply.status == 200
        finally:
            await inst.stop(5)

    asyncio.run(run())
