"""Find, read and validate the configuration file."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ConfigErrors
from .binder import Binder
from .schema import Config

DEFAULT_PATH = "/etc/securellm/config.toml"
ENV_VAR = "SECURELLM_CONFIG"


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and the file it came from."""

    path: str
    config: Config


def resolve_path(cli_path: str | None, env: dict[str, str] | None = None) -> str:
    """``--config PATH``, else ``$SECURELLM_CONFIG``, else ``/etc/securellm/config.toml``."""
    environ = os.environ if env is None else env
    return cli_path or environ.get(ENV_VAR) or DEFAULT_PATH


def parse_text(text: str, file: str, env: dict[str, str] | None = None, *,
               resolve_secrets: bool = True) -> Config:
    """Validate TOML text; raises :class:`ConfigErrors` listing every problem.

    With ``resolve_secrets=False`` secret references are checked for form only (for an
    offline check by a user who cannot read the daemon's credentials).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError(file, "", f"invalid TOML: {exc}")]) from None
    binder = Binder(file, env, resolve_secrets=resolve_secrets)
    config = binder.bind(Config, data)
    if binder.errors or config is None:
        raise ConfigErrors(binder.errors)
    return config


def load(path: str, env: dict[str, str] | None = None, *, resolve_secrets: bool = True) -> LoadedConfig:
    """Read and validate the file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigErrors([ConfigError(path, "", "file does not exist")]) from None
    except PermissionError:
        raise ConfigErrors([ConfigError(path, "", "permission denied reading the file")]) from None
    except IsADirectoryError:
        raise ConfigErrors([ConfigError(path, "", "expected a file, found a directory")]) from None
    except UnicodeDecodeError:
        raise ConfigErrors([ConfigError(path, "", "expected UTF-8 text")]) from None
    return LoadedConfig(path, parse_text(text, path, env, resolve_secrets=resolve_secrets))
