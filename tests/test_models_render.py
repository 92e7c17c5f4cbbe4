"""How ``securellmctl models load`` and ``events`` show what streams in: sizes, plain lines,
JSON lines and the live bar, from real protobuf messages."""

from __future__ import annotations

import io
import json

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from securellm_bridge._pb import models_pb2
from securellmctl.commands.events import event_dict
from securellmctl.progress import JsonLines, LiveBar, PlainLines, display
from securellmctl.streaming import human_bytes


def _ready(model: str = "tiny-a", detail: str = "pid 42") -> models_pb2.LoadProgress:
    loaded = models_pb2.LoadedModel(pid=42, state="ready", memory_bytes=3 * 1024 * 1024, gpu_layers=2, ctx=256)
    return models_pb2.LoadProgress(model=model, stage="ready", detail=detail, percent=100.0,
                                   loaded=models_pb2.LocalModel(name=model, status="loaded", loaded=loaded))


STAGES = [models_pb2.LoadProgress(model="tiny-a", stage="queued"),
          models_pb2.LoadProgress(model="tiny-a", stage="evicting", detail="tiny-b"),
          models_pb2.LoadProgress(model="tiny-a", stage="starting", detail="gpu_layers=2 ctx=256"),
          models_pb2.LoadProgress(model="tiny-a", stage="loading", percent=40.0),
          _ready()]


@pytest.mark.parametrize("n, text", [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                     (3 * 1024 ** 3, "3.0 GiB"), (5 * 1024 ** 5, "5120.0 TiB")])
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


def test_plain_lines() -> None:
    out = io.StringIO()
    shown = PlainLines(out)
    for p in STAGES:
        shown.show(p)
    shown.close()
    assert out.getvalue().splitlines() == [
        "tiny-a: queued", "tiny-a: evicting (tiny-b)", "tiny-a: starting (gpu_layers=2 ctx=256)",
        "tiny-a: loading 40%", "tiny-a ready: pid 42, 2 GPU layers, ctx 256, 3.0 MiB"]


def test_already_loaded_says_so() -> None:
    out = io.StringIO()
    PlainLines(out).show(_ready(detail="already loaded"))
    assert out.getvalue() == "tiny-a ready (already loaded): pid 42, 2 GPU layers, ctx 256, 3.0 MiB\n"


def test_json_lines() -> None:
    out = io.StringIO()
    shown = JsonLines(out)
    for p in STAGES:
        shown.show(p)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["stage"], x["detail"], x["percent"]) for x in lines] == [
        ("queued", "", None), ("evicting", "tiny-b", None), ("starting", "gpu_layers=2 ctx=256", None),
        ("loading", "", 40.0), ("ready", "pid 42", 100.0)]
    assert "loaded" not in lines[0] and lines[-1]["loaded"]["loaded"]["pid"] == 42


def test_live_bar_redraws_one_line_and_keeps_finished_stages() -> None:
    out = io.StringIO()
    bar = LiveBar(out)
    for p in STAGES:
        bar.show(p)
    bar.close()
    text = out.getvalue()
    assert "\r\x1b[Ktiny-a [" in text and "] " in text
    assert "##########----------" in text  # 40 % of the bar is filled
    finished = [line.split("\x1b[K")[-1] for line in text.split("\n") if line]
    assert [f.rsplit("  ", 1)[0] for f in finished[:-1]] == [
        "  tiny-a: queued", "  tiny-a: evicting (tiny-b)", "  tiny-a: starting (gpu_layers=2 ctx=256)",
        "  tiny-a: loading 40%"]
    assert finished[-1] == "tiny-a ready: pid 42, 2 GPU layers, ctx 256, 3.0 MiB"


def test_live_bar_ends_an_unfinished_line() -> None:
    out = io.StringIO()
    bar = LiveBar(out)
    bar.show(STAGES[0])
    bar.close()
    assert out.getvalue().endswith("\n") and "tiny-a [" in out.getvalue()


def test_display_follows_the_output() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(display(True, io.StringIO()), JsonLines)
    assert isinstance(display(False, io.StringIO()), PlainLines)
    live = display(False, Terminal())
    assert isinstance(live, LiveBar)
    live.close()


def test_event_dict() -> None:
    at = Timestamp(seconds=1_700_000_000)
    e = models_pb2.ModelEvent(kind="eviction", model="tiny-b", state="evicting", reason="to make room for tiny-a",
                              detail={"b": "2", "a": "1"}, at=at)
    assert event_dict(e) == {"time": "2023-11-14T22:13:20+00:00", "kind": "eviction", "model": "tiny-b",
                             "state": "evicting", "reason": "to make room for tiny-a",
                             "detail": {"a": "1", "b": "2"}}
