"""Build provider objects from ``[providers.NAME]``."""

from __future__ import annotations

from ..config.providers import ProviderConfig
from .anthropic import AnthropicProvider
from .base import Provider
from .ollama import OllamaProvider
from .openai import OpenAIProvider


def build(name: str, cfg: ProviderConfig) -> Provider:
    if cfg.kind == "anthropic":
        return AnthropicProvider(name, cfg)
    if cfg.kind == "ollama":
        return OllamaProvider(name, cfg)
    return OpenAIProvider(name, cfg)  # openai, deepseek
