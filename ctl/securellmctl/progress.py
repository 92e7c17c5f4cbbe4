"""A model load's progress, as it streams from the daemon.

* a terminal: a live line (bar, stage, elapsed time) redrawn ten times a second, and a
  finished line per stage;
* anything else: one plain line per stage;
* ``--json``: one JSON object per line.

The daemon knows a percentage only for some stages; otherwise the bar sweeps.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Protocol, TextIO

from securellm_bridge._pb import models_pb2

from . import output
from .streaming import human_bytes

BAR_WIDTH = 24
TICK_S = 0.1


class Display(Protocol):
    def show(self, p: models_pb2.LoadProgress) -> None: ...

    def close(self) -> None: ...


def progress_dict(p: models_pb2.LoadProgress) -> dict[str, Any]:
    out: dict[str, Any] = {"model": p.model, "stage": p.stage, "detail": p.detail,
                           "percent": p.percent if p.HasField("percent") else None}
    if p.HasField("loaded"):
        out["loaded"] = output.to_dict(p.loaded)
    return out


def ready_line(p: models_pb2.LoadProgress) -> str:
    """``NAME ready: pid 123, 2 GPU layers, ctx 256, 12.0 MiB``."""
    m = p.loaded
    if not m.HasField("loaded"):
        return f"{p.model} ready"
    ld = m.loaded
    pid = f"pid {ld.pid}" if ld.HasField("pid") else "no pid"
    note = " (already loaded)" if p.detail == "already loaded" else ""
    return (f"{p.model} ready{note}: {pid}, {ld.gpu_layers} GPU layers, ctx {ld.ctx}, "
            f"{human_bytes(ld.memory_bytes)}")


def _stage_text(p: models_pb2.LoadProgress) -> str:
    percent = f" {p.percent:.0f}%" if p.HasField("percent") else ""
    return f"{p.model}: {p.stage}{percent}" + (f" ({p.detail})" if p.detail else "")


class JsonLines:
    def __init__(self, out: TextIO) -> None:
        self._out = out

    def show(self, p: models_pb2.LoadProgress) -> None:
        print(json.dumps(progress_dict(p)), file=self._out, flush=True)

    def close(self) -> None:
        """Every line is already written."""


class PlainLines:
    def __init__(self, out: TextIO) -> None:
        self._out = out

    def show(self, p: models_pb2.LoadProgress) -> None:
        print(ready_line(p) if p.stage == "ready" else _stage_text(p), file=self._out, flush=True)

    def close(self) -> None:
        """Every line is already written."""


class LiveBar:
    """One line redrawn in place for the current stage; a finished line for each stage before it."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._current: models_pb2.LoadProgress | None = None
        self._since = time.monotonic()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._ticker.start()

    def show(self, p: models_pb2.LoadProgress) -> None:
        with self._lock:
            now = time.monotonic()
            cur = self._current
            if cur is not None and (cur.stage, cur.detail) != (p.stage, p.detail):
                self._write(f"\r\x1b[K  {_stage_text(cur)}  {now - self._since:.1f}s\n")
                self._since = now
            if p.stage == "ready":
                self._current = None
                self._write("\r\x1b[K" + ready_line(p) + "\n")
            else:
                self._current = p
                self._draw(now)

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()
        with self._lock:
            if self._current is not None:
                self._write("\n")
                self._current = None

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            with self._lock:
                if self._current is not None:
                    self._draw(time.monotonic())

    def _draw(self, now: float) -> None:
        p = self._current
        assert p is not None
        elapsed = now - self._since
        if p.HasField("percent"):
            filled = round(BAR_WIDTH * min(max(p.percent, 0.0), 100.0) / 100)
            bar, label = "#" * filled + "-" * (BAR_WIDTH - filled), f"{p.percent:3.0f}%"
        else:  # unknown: a block sweeps back and forth
            span = BAR_WIDTH - 4
            pos = int(elapsed / TICK_S) % (2 * span)
            pos = pos if pos < span else 2 * span - pos
            bar, label = "-" * pos + "####" + "-" * (span - pos), "   "
        detail = f" {p.detail}" if p.detail else ""
        self._write(f"\r\x1b[K{p.model} [{bar}] {label} {p.stage}{detail}  {elapsed:.1f}s")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


def display(as_json: bool, out: TextIO = sys.stdout) -> Display:
    if as_json:
        return JsonLines(out)
    return LiveBar(out) if out.isatty() else PlainLines(out)
