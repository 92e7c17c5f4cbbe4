"""Prices per million tokens, and the cost of a request."""

from __future__ import annotations

from ..config.providers import ModelCost, ProviderConfig

#: Defaults for presets; ``[providers.NAME.cost."MODEL"]`` overrides them.
PRESET_COSTS: dict[str, dict[str, ModelCost]] = {
    "deepseek": {
        "deepseek-chat": ModelCost(input_per_mtok=0.27, output_per_mtok=1.10),
        "deepseek-reasoner": ModelCost(input_per_mtok=0.55, output_per_mtok=2.19),
    },
}
FREE = ModelCost()


def model_cost(cfg: ProviderConfig, model: str) -> ModelCost:
    return cfg.cost.get(model) or PRESET_COSTS.get(cfg.kind, {}).get(model) or FREE


def cost(price: ModelCost, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1_000_000
