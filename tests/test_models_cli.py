"""``securellmctl models|vram|events`` and ``/health/vram`` against a real daemon that runs
the real llama-server on tiny models, with a simulated GPU sized for two of them.

The simulated GPU is not the 64 MiB of a first sketch: the estimator reserves about 513 MiB
for one tiny model with its layers on a GPU (the backend's fixed buffers), so 64 MiB would
only ever load them on the CPU and the memory numbers would never move.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from securellm_bridge.audit.reader import FileSource, Filter
from securellmctl.commands.events import WATCHING

from .bridge import Bridge, start_bridge
from .gguf_models import write_tiny_llama
from .local_models import llama_servers, local_config, need_bytes, write_models

pytestmark = pytest.mark.slow


def _bridge(make_daemon: Callable[..., Any], tmp_path: Path) -> tuple[Bridge, Path]:
    models = tmp_path / "models"
    write_models(models)
    extra = local_config(models, fit=2)
    extra["local"]["scan_interval_seconds"] = 0  # only `models scan` finds new files
    extra["security"] = {"audit": {"file": str(tmp_path / "audit.jsonl")}}
    return start_bridge(make_daemon, upstreams={}, providers={}, extra=extra), models


def _ok(b: Bridge, *args: str) -> str:
    r = b.daemon.ctl(*args)
    assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    return r.stdout


def _json(b: Bridge, *args: str) -> Any:
    return json.loads(_ok(b, *args, "--json"))


def _models(b: Bridge) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in _json(b, "models", "list")}


def _children(b: Bridge) -> dict[str, int]:
    return llama_servers(parent=b.daemon.proc.pid)  # type: ignore[union-attr]


def _audit(path: Path, count: int, timeout: float = 15.0) -> list[tuple[str, Mapping[str, str]]]:
    """(event, fields) of the model records in the audit file, once there are ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        entries = FileSource([path]).entries(Filter()) if path.exists() else []
        found = [(e.event, e.fields) for e in entries if e.event in ("model_load", "model_unload")]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _table(out: str) -> dict[str, dict[str, str]]:
    """Rows of an aligned table by their first cell, each cell by its column's header."""
    header, *rows = out.splitlines()
    names = header.split()
    starts = [header.index(f"{n}  " if i < len(names) - 1 else n) for i, n in enumerate(names)]
    bounds = list(zip(starts, starts[1:] + [None]))
    parsed = [{n: row[a:b].strip() for n, (a, b) in zip(names, bounds)} for row in rows]
    return {r[names[0]]: r for r in parsed}


def test_list_info_and_scan(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    b, models = _bridge(make_daemon, tmp_path)
    out = _ok(b, "models", "list")
    header = out.splitlines()[0].split()
    assert header == ["NAME", "STATUS", "BACKEND", "SIZE", "QUANT", "CTX", "LAYERS", "VRAM", "IN-FLIGHT", "IDLE"]
    rows = _table(out)
    assert set(rows) == {"tiny-a", "tiny-b", "tiny-c"}
    assert rows["tiny-a"] == {"NAME": "tiny-a", "STATUS": "available", "BACKEND": "llamacpp", "SIZE": "259.8 KiB",
                              "QUANT": "F16", "CTX": "256", "LAYERS": "2", "VRAM": "-", "IN-FLIGHT": "-", "IDLE": "-"}
    listed = _models(b)
    assert listed["tiny-a"]["status"] == "available" and "loaded" not in listed["tiny-a"]
    assert listed["tiny-a"]["quantization"] == "F16" and listed["tiny-a"]["layer_count"] == 2

    info = _ok(b, "models", "info", "tiny-b")
    assert "status:" in info and "available" in info and str(models / "tiny-b.gguf") in info
    assert "general.name" in info
    got = _json(b, "models", "info", "tiny-b")
    assert got["metadata"]["general.name"] == "tiny-b" and got["metadata"]["llama.block_count"] == "2"
    assert got["ctx"] == 256 and got["gpu_layers"] == 2 and got["configured"] is True

    write_tiny_llama(models / "tiny-new.gguf", name="tiny-new", seed=7)
    (models / "broken.gguf").write_bytes(b"GGUX not a model")
    assert "tiny-new" not in _models(b)
    out = _ok(b, "models", "scan")
    assert out.startswith("scan: 1 added, 0 updated, 0 missing, 1 corrupt, 3 unchanged, 0 removed"), out
    assert re.search(r"^added: +tiny-new$", out, re.M) and re.search(r"^corrupt: +broken$", out, re.M), out
    listed = _models(b)
    assert listed["tiny-new"]["status"] == "available" and listed["tiny-new"]["configured"] is False
    assert listed["broken"]["status"] == "corrupt" and listed["broken"]["error"]
    (models / "tiny-new.gguf").unlink()
    assert _json(b, "models", "scan")["missing"] == ["tiny-new"]
    assert _models(b)["tiny-new"]["status"] == "missing"


def test_load_switch_unload_vram_and_audit(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    b, models = _bridge(make_daemon, tmp_path)
    need = need_bytes(models / "tiny-a.gguf")
    before = _json(b, "vram")
    assert before["mode"] == "simulated" and "simulate_total_mib" in before["reason"]
    assert int(before["used_bytes"]) == 0 and before["processes"] == []

    out = _ok(b, "models", "load", "tiny-a").splitlines()  # stdout is a pipe: plain lines
    assert out[:3] == ["tiny-a: queued", "tiny-a: starting (gpu_layers=2 ctx=256)", "tiny-a: loading"], out
    # llama-server's own load stages, from its log
    assert out[3:-1] == ["tiny-a: tensors (loading the weights)", "tiny-a: context (allocating the context and "
                         "KV cache)", "tiny-a: warmup (a warm-up pass)", "tiny-a: loaded (finishing start-up)"]
    pid = _children(b)["tiny-a"]
    assert out[-1].startswith(f"tiny-a ready: pid {pid}, 2 GPU layers, ctx 256, ")

    after = _json(b, "vram")
    assert int(after["used_bytes"]) == need
    assert after["gpus"][0]["processes"] == [{"owner": "tiny-a", "used_bytes": str(need), "model": "tiny-a"}]
    text = _ok(b, "vram")
    assert "mode:     simulated" in text and "tiny-a" in text
    with b.http() as c:  # a client certificate, no API key
        health = c.get("/health/vram")
    assert health.status_code == 200, health.text
    assert health.json()["used_bytes"] == need and health.json()["mode"] == "simulated"
    assert health.json()["processes"] == [{"pid": None, "owner": "tiny-a", "used_bytes": need, "model": "tiny-a"}]

    lines = [json.loads(x) for x in _ok(b, "models", "load", "tiny-b", "--json").splitlines()]
    assert [x["stage"] for x in lines] == ["queued", "starting", "loading", "tensors", "context", "warmup", "loaded",
                                          "ready"]
    assert lines[-1]["percent"] == 100 and lines[-1]["loaded"]["status"] == "loaded"
    assert lines[-1]["loaded"]["loaded"]["pid"] == _children(b)["tiny-b"]
    again = [json.loads(x) for x in _ok(b, "models", "load", "tiny-b", "--json").splitlines()]
    assert [(x["stage"], x["detail"]) for x in again] == [("ready", "already loaded")]

    row = _models(b)["tiny-a"]
    assert row["status"] == "loaded" and row["loaded"]["ctx"] == 256 and row["loaded"]["gpu_layers"] == 2
    assert int(row["loaded"]["memory_bytes"]) == need and row["loaded"]["in_flight"] == 0
    row_text = _table(_ok(b, "models", "list"))["tiny-a"]
    assert (row_text["STATUS"], row_text["CTX"], row_text["LAYERS"], row_text["IN-FLIGHT"]) == ("loaded", "256", "2/2", "0")
    assert row_text["VRAM"].endswith(" MiB") and row_text["IDLE"].endswith("s")

    out = _ok(b, "models", "switch", "tiny-a", "tiny-c").splitlines()
    assert out[0] == "tiny-a: unloaded (switching to tiny-c)" and out[-1].startswith("tiny-c ready: pid ")
    assert set(_children(b)) == {"tiny-b", "tiny-c"}
    assert int(_json(b, "vram")["used_bytes"]) == 2 * need

    assert _ok(b, "models", "unload", "tiny-c") == "unloaded tiny-c\n"
    assert set(_children(b)) == {"tiny-b"} and _models(b)["tiny-c"]["status"] == "available"
    assert int(_json(b, "vram")["used_bytes"]) == need

    # On a terminal the progress is a line redrawn in place.
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "securellmctl", "--socket", b.daemon.socket, "models", "load",
                             "tiny-c"], stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    shown = _read_all(controller)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    assert "\r\x1b[K" in shown and "tiny-c [" in shown and "tiny-c ready: pid " in shown

    records = _audit(tmp_path / "audit.jsonl", 6)
    summary = [(event, f["SECURELLM_MODEL"], f.get("SECURELLM_REASON")) for event, f in records]
    assert summary == [("model_load", "tiny-a", None), ("model_load", "tiny-b", None),
                       ("model_unload", "tiny-a", "switched to tiny-c"), ("model_load", "tiny-c", None),
                       ("model_unload", "tiny-c", "unloaded with securellmctl"), ("model_load", "tiny-c", None)]
    first = records[0][1]
    assert first["SECURELLM_PID"] == str(pid) and first["SECURELLM_BACKEND"] == "llamacpp"
    assert first["SECURELLM_SOURCE"] == "control" and first["SECURELLM_GPU_LAYERS"] == "2"


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


class Lines:
    """The lines of a pipe, read by a thread, with a timeout per line."""

    def __init__(self, pipe: IO[str]) -> None:
        self._q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._q.put(line.rstrip("\n"))
        self._q.put("")

    def next(self, timeout: float = 30.0) -> str:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s") from None


def _watch(b: Bridge, *args: str) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen([sys.executable, "-m", "securellmctl", "--socket", b.daemon.socket, "events", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdout is not None
    assert Lines(proc.stderr).next() == WATCHING  # subscribed: every later event reaches it
    return proc, Lines(proc.stdout)


def _until(lines: Lines, model: str, kind: str, state: str) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    while True:
        line = lines.next()
        assert line, f"the events stream ended; saw {seen}"
        event = json.loads(line)
        assert event["model"] == model, event
        seen.append((event["kind"], event["state"]))
        if (event["kind"], event["state"]) == (kind, state):
            return seen


def _in_order(expected: Sequence[tuple[str, str]], seen: Sequence[tuple[str, str]]) -> bool:
    it = iter(seen)
    return all(any(x == e for x in it) for e in expected)


def test_events_follow_loads_and_unloads(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    b, _ = _bridge(make_daemon, tmp_path)
    every, every_lines = _watch(b, "--json")
    only_b, only_b_lines = _watch(b, "--model", "tiny-b", "--json")

    _ok(b, "models", "load", "tiny-a")
    seen = _until(every_lines, "tiny-a", "model_state", "ready")
    assert _in_order([("model_state", "queued"), ("load_progress", "starting"), ("load_progress", "loading"),
                      ("model_state", "ready")], seen), seen
    _ok(b, "models", "unload", "tiny-a")
    seen = _until(every_lines, "tiny-a", "model_state", "unloaded")
    assert _in_order([("model_state", "unloading"), ("model_state", "unloaded")], seen), seen

    _ok(b, "models", "load", "tiny-b")
    first = json.loads(only_b_lines.next())  # nothing about tiny-a came before
    assert (first["kind"], first["model"], first["state"]) == ("model_state", "tiny-b", "queued")
    assert first["time"] and isinstance(first["detail"], dict)

    for proc in (every, only_b):  # Ctrl-C ends following, successfully
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0


def test_errors_are_clear(make_daemon: Callable[..., Any], tmp_path: Path) -> None:
    b, _ = _bridge(make_daemon, tmp_path)
    for args in (("models", "info", "nope"), ("models", "load", "nope"), ("models", "unload", "nope"),
                 ("models", "switch", "nope", "tiny-a")):
        r = b.daemon.ctl(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr == "securellmctl: not_found: no local model named 'nope' (see `securellmctl models list`)\n"

    r = b.daemon.ctl("models", "unload", "tiny-a")
    assert r.returncode == 1 and r.stderr == "securellmctl: not_found: local model 'tiny-a' is not loaded\n"
    r = b.daemon.ctl("models", "switch", "tiny-a", "tiny-b")
    assert r.returncode == 1 and "failed_precondition: local model 'tiny-a' is not loaded" in r.stderr

    r = b.daemon.ctl("models", "load", "tiny-a", "--ctx", "1000000")
    assert r.returncode == 1, (r.stdout, r.stderr)  # a refusal by the daemon, not "unreachable" (3)
    assert r.stderr.startswith("securellmctl: unavailable: local model 'tiny-a' does not fit in memory: ")
    assert _children(b) == {}

    _ok(b, "models", "load", "tiny-a")
    r = b.daemon.ctl("models", "switch", "tiny-a", "nope")
    assert r.returncode == 1 and "no local model named 'nope'" in r.stderr
    assert set(_children(b)) == {"tiny-a"}  # nothing was unloaded
    r = b.daemon.ctl("models", "load", "tiny-a", "--ctx", "0")
    assert r.returncode == 2 and "expected a whole number of at least 1" in r.stderr


def test_vram_on_this_host(daemon: Any) -> None:
    """Without ``simulate_total_mib`` the monitor reads the real hardware: NVML, else system RAM."""
    r = daemon.ctl("vram", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["mode"] in ("gpu", "cpu") and got["reason"]
    assert int(got["total_bytes"]) > 0 and 0 <= got["used_percent"] <= 100
    assert (got["gpus"] == []) == (got["mode"] == "cpu")
    text = daemon.ctl("vram").stdout
    assert text.startswith(f"mode:     {got['mode']} (") and ("no processes" in text) == (not got["processes"])
