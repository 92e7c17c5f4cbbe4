"""``bench_local``'s samples, by model size and measure, and their ``--json`` form (which
``--from-json`` pools)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Results:
    # (size, what) -> samples in seconds
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # (size, case) -> error messages of failed steady-state requests (not counted in the latencies)
    errors: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # llama-server arguments beyond the daemon's own
    log_level: str = "info"
    runs: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"samples": {f"{s}/{w}": v for (s, w), v in self.samples.items()},
                "errors": {f"{s}/{w}": v for (s, w), v in self.errors.items()},
                "notes": self.notes, "extra": self.extra, "log_level": self.log_level}

    @classmethod
    def pooled(cls, paths: list[str]) -> "Results":
        """The samples of several runs (``--json`` files) together."""
        res = cls(runs=len(paths))
        for i, path in enumerate(paths):
            data = json.loads(Path(path).read_text())
            if i == 0:
                res.extra, res.log_level = data["extra"], data["log_level"]
            elif (data["extra"], data["log_level"]) != (res.extra, res.log_level):
                raise SystemExit(f"{path}: other settings than {paths[0]}")
            for key, values in data["samples"].items():
                res.samples.setdefault(tuple(key.split("/", 1)), []).extend(values)  # type: ignore[arg-type]
            for key, messages in data["errors"].items():
                res.errors.setdefault(tuple(key.split("/", 1)), []).extend(messages)  # type: ignore[arg-type]
            res.notes += [n for n in data["notes"] if n not in res.notes]
        return res

    def add(self, size: str, what: str, value: float) -> None:
        if not math.isnan(value):
            self.samples.setdefault((size, what), []).append(value)

    def get(self, size: str, what: str) -> list[float]:
        return self.samples.get((size, what), [])
