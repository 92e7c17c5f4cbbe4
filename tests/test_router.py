"""Router: the order of the candidates under the cost-optimized strategy, from what the pipeline passes."""

from __future__ import annotations

from typing import Any

from securellm_bridge.config.providers import ModelCost, ProviderConfig, RouterConfig
from securellm_bridge.providers.openai_shapes import max_tokens
from securellm_bridge.providers.registry import build
from securellm_bridge.router.router import Router
from securellm_bridge.security.ratelimit import estimate_prompt_tokens


def _router(prices: dict[str, tuple[float, float]]) -> Router:
    """One OpenAI-compatible provider per name, all serving model ``m``; listed first = preferred."""
    providers = {name: build(name, ProviderConfig(kind="openai", base_url=f"http://{name}.example/v1",
                                                  models=("m",), priority=i, cost={"m": ModelCost(*price)}))
                 for i, (name, price) in enumerate(prices.items())}
    return Router(RouterConfig(), providers)


def _cost_order(router: Router, body: dict[str, Any]) -> list[str]:
    # As the pipeline calls it: the prompt's estimate and the client's output limit.
    found = router.candidates("m", "chat", "cost-optimized", estimate_prompt_tokens(body), max_tokens(body))
    return [c.provider.name for c in found]


def test_cost_optimized_counts_the_output_once_at_the_output_price() -> None:
    # "cheap-out" is dear per prompt token and cheap per output token, "cheap-in" the reverse.
    # A 1-token prompt with max_tokens 1000: cheap-out costs 1*10 + 1000*2 = 2010, cheap-in
    # 1*1 + 1000*5 = 5001. Pricing the output again as prompt would give 1001*10 + 1000*2 =
    # 12010 against 1001*1 + 1000*5 = 6001, the wrong way round.
    router = _router({"cheap-in": (1.0, 5.0), "cheap-out": (10.0, 2.0)})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
    assert estimate_prompt_tokens(body) == 1
    assert _cost_order(router, body) == ["cheap-out", "cheap-in"]
    body = {**body, "max_completion_tokens": 1000, "max_tokens": None}
    assert _cost_order(router, body) == ["cheap-out", "cheap-in"]


def test_cost_optimized_without_max_tokens_expects_256_output_tokens() -> None:
    # A 400-token prompt: "cheap-in" costs 400*1 + 256*5 = 1680, "cheap-out" 400*10 + 256*2 = 4512.
    router = _router({"cheap-out": (10.0, 2.0), "cheap-in": (1.0, 5.0)})
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 1600}]}
    assert _cost_order(router, body) == ["cheap-in", "cheap-out"]
    # A long answer makes the cheap output win: 400*10 + 4000*2 = 12000 against 400*1 + 4000*5 = 20400.
    assert _cost_order(router, {**body, "max_tokens": 4000}) == ["cheap-out", "cheap-in"]
