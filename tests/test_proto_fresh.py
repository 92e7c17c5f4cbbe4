"""The committed generated protobuf code matches a fresh generation from proto/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .daemon import ROOT


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = {p.name: p.read_text() for p in gen.generate(tmp_path)}
    committed_dir = ROOT / "daemon" / "securellm_bridge" / "_pb"
    committed = {p.name: p.read_text() for p in committed_dir.iterdir() if p.is_file()}
    assert set(fresh) == set(committed), "run: python scripts/gen_proto.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated files {stale}; run: python scripts/gen_proto.py"
