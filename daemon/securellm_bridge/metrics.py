"""Prometheus metrics (base units; counters end in ``_total``, durations in ``_seconds``).

Label values come from configuration (provider and model names, routes), never from free
client input, so cardinality stays bounded: an unknown model is counted as ``"unknown"``.
Children are cached per label tuple because ``labels()`` is comparatively slow.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter("securellm_requests_total", "Inference requests by outcome.",
                   ["route", "status", "provider", "model"])
REQUEST_SECONDS = Histogram("securellm_request_duration_seconds", "Whole request latency, as the client sees it.",
                            ["route"], buckets=LATENCY_BUCKETS)
UPSTREAM_SECONDS = Histogram("securellm_upstream_duration_seconds",
                             "Upstream latency of a successful attempt (to the first byte for streams).",
                             ["provider"], buckets=LATENCY_BUCKETS)
TOKENS = Counter("securellm_tokens_total", "Tokens by type.", ["type", "provider", "model"])
COST = Counter("securellm_cost_total", "Cost in the price table's currency.", ["provider", "model"])
FALLBACKS = Counter("securellm_fallbacks_total", "Requests answered by a provider other than the first candidate.",
                    ["route"])
RETRIES = Counter("securellm_retries_total", "Upstream attempts that were retried.", ["provider"])
RATE_LIMITED = Counter("securellm_rate_limit_rejections_total", "Requests rejected by a rate limit or budget.",
                       ["scope"])
REDACTIONS = Counter("securellm_dlp_redactions_total", "Sensitive values found in prompts, by type.", ["type"])
INJECTION_FLAGS = Counter("securellm_injection_flags_total", "Prompt-injection rule matches, by category.",
                          ["category"])
IN_FLIGHT = Gauge("securellm_in_flight_requests", "Inference requests being served now.")

_request_children: dict[tuple[str, str, str, str], Counter] = {}
_token_children: dict[tuple[str, str], tuple[Counter, Counter, Counter]] = {}
_latency_children: dict[str, Histogram] = {}
_upstream_children: dict[str, Histogram] = {}


def count_request(route: str, status: int, provider: str, model: str) -> None:
    key = (route, str(status), provider, model)
    child = _request_children.get(key)
    if child is None:
        child = _request_children[key] = REQUESTS.labels(*key)
    child.inc()


def observe_latency(route: str, seconds: float) -> None:
    child = _latency_children.get(route)
    if child is None:
        child = _latency_children[route] = REQUEST_SECONDS.labels(route)
    child.observe(seconds)


def observe_upstream(provider: str, seconds: float) -> None:
    child = _upstream_children.get(provider)
    if child is None:
        child = _upstream_children[provider] = UPSTREAM_SECONDS.labels(provider)
    child.observe(seconds)


def count_tokens(provider: str, model: str, prompt: int, completion: int, cost: float) -> None:
    key = (provider, model)
    children = _token_children.get(key)
    if children is None:
        children = _token_children[key] = (TOKENS.labels("prompt", provider, model),
                                           TOKENS.labels("completion", provider, model),
                                           COST.labels(provider, model))
    if prompt:
        children[0].inc(prompt)
    if completion:
        children[1].inc(completion)
    if cost:
        children[2].inc(cost)


def count_redactions(counts: "dict[str, int]") -> None:
    for kind, n in counts.items():
        REDACTIONS.labels(kind).inc(n)


def count_injection(flags: "tuple[object, ...]") -> None:
    for flag in flags:
        INJECTION_FLAGS.labels(getattr(flag, "category")).inc()
