"""OllamaServer: ``ollama serve`` supervised (the fake executable tests/fakes/bin/ollama, since
real Ollama cannot run here) or attached, and load / unload / ps / tags over its HTTP API."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from securellm_bridge.errors import InvalidRequest, NotFound, Unavailable
from securellm_bridge.local.backends.ollama import OllamaServer, parse_line
from securellm_bridge.local.backends.ports import free_port
from securellm_bridge.local.backends.states import State

from .fakes.ollama_bin import parse_host, write_manifest
from .fakes.ollama_upstream import VERSION

pytestmark = pytest.mark.anyio
OLLAMA = Path(__file__).resolve().parent / "fakes" / "bin" / "ollama"
LOGGER = "securellm_bridge.local.backends.ollama"
MODELS = ("llama3.2:1b", "qwen2.5:0.5b", "someone/custom:q4")


def test_ollama_host_is_parsed_like_ollama() -> None:
    assert parse_host(None) == ("http", "127.0.0.1", 11434)
    assert parse_host("127.0.0.1:4000") == ("http", "127.0.0.1", 4000)
    assert parse_host("http://[::1]:4000/") == ("http", "::1", 4000)
    assert parse_host("https://example.org") == ("https", "example.org", 443)
    assert parse_host("0.0.0.0") == ("http", "0.0.0.0", 11434)


def test_log_levels_follow_slog() -> None:
    assert parse_line('time=x level=WARN source=a.go:1 msg="hm"')[0] == logging.WARNING
    assert parse_line("Error: listen tcp: bind: address already in use")[0] == logging.ERROR
    assert parse_line("plain")[0] == logging.INFO


def test_exactly_one_of_binary_and_url() -> None:
    with pytest.raises(InvalidRequest, match="exactly one"):
        OllamaServer()
    with pytest.raises(InvalidRequest, match="exactly one"):
        OllamaServer(binary=OLLAMA, url="http://127.0.0.1:11434")
    with pytest.raises(InvalidRequest, match="http"):
        OllamaServer(url="unix:///run/ollama.sock")


def _models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for name in MODELS:
        write_manifest(root, name)
    return root


@pytest.mark.slow
async def test_supervised_load_unload_ps_tags(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-daemon-secret")
    server = OllamaServer(binary=OLLAMA, models_dir=_models_dir(tmp_path),
                          env={"OLLAMA_NUM_PARALLEL": "2"})
    await server.start()
    try:
        pid = server.pid
        assert pid is not None and server.state is State.READY
        environ = dict(v.split("=", 1) for v in
                       Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        assert environ["OLLAMA_HOST"] == server.base_url.removeprefix("http://")
        assert environ["OLLAMA_MODELS"] == str(tmp_path / "models")
        assert environ["OLLAMA_NUM_PARALLEL"] == "2" and "OPENAI_API_KEY" not in environ

        assert await server.version() == VERSION
        assert sorted(m.name for m in await server.models()) == sorted(MODELS)
        assert await server.loaded() == []

        await server.load("llama3.2:1b", keep_alive="10m")
        await server.load("qwen2.5:0.5b")
        loaded = {m.name: m for m in await server.loaded()}
        assert set(loaded) == {"llama3.2:1b", "qwen2.5:0.5b"}
        soon = loaded["llama3.2:1b"]
        assert soon.size > 0 and soon.size_vram == soon.size
        assert soon.expires_at is not None
        assert datetime.now(UTC) < soon.expires_at <= datetime.now(UTC) + timedelta(minutes=10)
        forever = loaded["qwen2.5:0.5b"].expires_at
        assert forever is not None and forever.year > 2300

        await server.unload("llama3.2:1b")
        assert [m.name for m in await server.loaded()] == ["qwen2.5:0.5b"]
        with pytest.raises(NotFound, match="not found"):
            await server.load("absent:7b")
        with pytest.raises(InvalidRequest, match="keep_alive"):
            await server.load("qwen2.5:0.5b", keep_alive="soon")
    finally:
        await server.stop()
    assert server.state is State.STOPPED
    assert server.process is not None and server.process.last_exit is not None
    assert server.process.last_exit.returncode == 0
    assert not Path(f"/proc/{pid}").exists()
    port = server.base_url.rsplit(":", 1)[1]
    listening = [r for r in caplog.records if f"Listening on 127.0.0.1:{port}" in r.getMessage()]
    assert listening and getattr(listening[0], "SECURELLM_MODEL") == "ollama"
    assert getattr(listening[0], "SECURELLM_PID") == pid


@pytest.mark.slow
async def test_attach_to_a_running_ollama(tmp_path: Path) -> None:
    owner = OllamaServer(binary=OLLAMA, models_dir=_models_dir(tmp_path))
    await owner.start()
    try:
        attached = OllamaServer(url=owner.base_url + "/")
        assert attached.state is State.STOPPED and not attached.supervised
        await attached.start()
        assert attached.state is State.READY and attached.pid is None
        await attached.load("llama3.2:1b")
        assert [m.name for m in await owner.loaded()] == ["llama3.2:1b"]
        await attached.stop()
        assert attached.state is State.STOPPED
        assert owner.state is State.READY
        assert [m.name for m in await owner.loaded()] == ["llama3.2:1b"]
    finally:
        await owner.stop()
    nobody = OllamaServer(url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable, match="unreachable"):
        await nobody.start()


@pytest.mark.slow
async def test_port_taken_starts_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], free_port()])
        server = OllamaServer(binary=OLLAMA, models_dir=_models_dir(tmp_path),
                              pick_port=lambda host: next(ports))
        await server.start()
        try:
            assert list(ports) == []
            assert len(await server.models()) == len(MODELS)
        finally:
            await server.stop()
    retried = [r.getMessage() for r in caplog.records if "starting again" in r.getMessage()]
    assert len(retried) == 1 and "bind: address already in use" in retried[0]


@pytest.mark.slow
def test_fake_ollama_version_talks_to_the_server(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}"}
    alone = subprocess.run([OLLAMA, "--version"], env=env, capture_output=True, text=True,
                           check=True)
    assert alone.stdout.splitlines() == ["Warning: could not connect to a running Ollama instance",
                                         f"Warning: client version is {VERSION}"]
    with subprocess.Popen([OLLAMA, "serve"], env={**env, "OLLAMA_MODELS": str(tmp_path)},
                          stderr=subprocess.PIPE, text=True) as serve:
        assert serve.stderr is not None
        for line in serve.stderr:
            if "Listening on" in line:
                break
        both = subprocess.run([OLLAMA, "-v"], env=env, capture_output=True, text=True, check=True)
        serve.terminate()
    assert both.stdout == f"ollama version is {VERSION}\n"
    assert serve.returncode == 0
