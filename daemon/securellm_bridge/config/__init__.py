"""Configuration: TOML → validated frozen dataclasses."""

from .load import DEFAULT_PATH, ENV_VAR, LoadedConfig, load, parse_text, resolve_path
from .schema import Config
from .secrets import Secret

__all__ = ["DEFAULT_PATH", "ENV_VAR", "Config", "LoadedConfig", "Secret", "load", "parse_text", "resolve_path"]
