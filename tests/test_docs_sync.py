"""docs/CONFIG.md and packaging/config.example.toml stay in step with the schema."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from securellm_bridge.config import Secret, parse_text
from securellm_bridge.config.binder import toml_name
from securellm_bridge.config.schema import Config

from .daemon import ROOT


def _sections(cls: type, prefix: str = "") -> dict[str, list[str]]:
    """Map each TOML table (dotted, NAME for user-chosen keys) to its scalar keys."""
    out: dict[str, list[str]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp)
        name = toml_name(f)
        if dataclasses.is_dataclass(tp) and tp is not Secret:
            out.update(_sections(tp, f"{prefix}{name}."))
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(args[1]):
            out.update(_sections(args[1], f"{prefix}{name}.NAME."))
        else:
            out.setdefault(prefix.rstrip("."), []).append(name)
    return out


def test_config_md_documents_every_key() -> None:
    doc = (ROOT / "docs" / "CONFIG.md").read_text().replace('."MODEL"', ".NAME")
    missing = []
    for section, keys in _sections(Config).items():
        m = re.search(rf"^##+ `\[{re.escape(section)}\]`$(.*?)(?=^##+ |\Z)", doc, re.M | re.S)
        if not m:
            missing.append(f"[{section}]")
            continue
        missing += [f"{section}.{k}" for k in keys if f"| `{k}` |" not in m.group(1)]
    assert not missing, f"undocumented in docs/CONFIG.md: {missing}"


def test_example_config_is_valid_and_mentions_every_key() -> None:
    text = (ROOT / "packaging" / "config.example.toml").read_text()
    parse_text(text, "config.example.toml", env={}, resolve_secrets=False)
    for section, keys in _sections(Config).items():
        for k in keys:
            table = re.escape(f"[{section}.{k}]".replace(".NAME", ""))
            assert re.search(rf"^#? ?{k} = |^{table}", text, re.M), f"{section}.{k} not in config.example.toml"
