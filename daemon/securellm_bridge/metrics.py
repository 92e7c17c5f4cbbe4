"""Prometheus metrics (base units; counters end in ``_total``, durations in ``_seconds``).

Label values come from configuration (provider and model names, routes), never from free
client input, so cardinality stays bounded: an unknown model is counted as ``"unknown"``.

The per-request series (requests, latency histograms, tokens, cost, in-flight) are plain
numbers in dicts, updated without locks from the event loop, and turned into metric families
only when ``/metrics`` is scraped (:class:`_HotCollector`). ``prometheus_client``'s own
``Counter.labels().inc()`` / ``Histogram.observe()`` take a lock and walk the buckets in
Python: ~6 µs of every request (docs/PERFORMANCE.md). The rare series (fallbacks, retries,
rejections, DLP and injection counts) stay ordinary ``prometheus_client`` counters.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Iterator

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

FALLBACKS = Counter("securellm_fallbacks_total", "Requests answered by a provider other than the first candidate.",
                    ["route"])
RETRIES = Counter("securellm_retries_total", "Upstream attempts that were retried.", ["provider"])
RATE_LIMITED = Counter("securellm_rate_limit_rejections_total", "Requests rejected by a rate limit or budget.",
                       ["scope"])
REDACTIONS = Counter("securellm_dlp_redactions_total", "Sensitive values found in prompts, by type.", ["type"])
INJECTION_FLAGS = Counter("securellm_injection_flags_total", "Prompt-injection rule matches, by category.",
                          ["category"])


class _Histogram:
    """Bucket counts (not cumulative) plus the sum; cumulated at scrape time."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*map(floatToGoString, LATENCY_BUCKETS), "+Inf"), self.counts):
            running += n
            out.append((bound, float(running)))
        return out


_requests: dict[tuple[str, str, str, str], int] = {}
_latency: dict[str, _Histogram] = {}
_upstream: dict[str, _Histogram] = {}
#: (provider, model) -> [prompt tokens, completion tokens, cost]
_tokens: dict[tuple[str, str], list[float]] = {}
_in_flight: Callable[[], int] = lambda: 0


def count_request(route: str, status: int, provider: str, model: str) -> None:
    key = (route, str(status), provider, model)
    _requests[key] = _requests.get(key, 0) + 1


def observe_latency(route: str, seconds: float) -> None:
    hist = _latency.get(route)
    if hist is None:
        hist = _latency[route] = _Histogram()
    hist.observe(seconds)


def observe_upstream(provider: str, seconds: float) -> None:
    hist = _upstream.get(provider)
    if hist is None:
        hist = _upstream[provider] = _Histogram()
    hist.observe(seconds)


def count_tokens(provider: str, model: str, prompt: int, completion: int, cost: float) -> None:
    totals = _tokens.get((provider, model))
    if totals is None:
        totals = _tokens[(provider, model)] = [0, 0, 0.0]
    totals[0] += prompt
    totals[1] += completion
    totals[2] += cost


def in_flight_from(source: Callable[[], int]) -> None:
    """Where ``securellm_in_flight_requests`` is read from at scrape time (the pipeline's count)."""
    global _in_flight
    _in_flight = source


def count_redactions(counts: "dict[str, int]") -> None:
    for kind, n in counts.items():
        REDACTIONS.labels(kind).inc(n)


def count_injection(flags: "tuple[object, ...]") -> None:
    for flag in flags:
        INJECTION_FLAGS.labels(getattr(flag, "category")).inc()


class _HotCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("securellm_requests_total", "Inference requests by outcome.",
                                       labels=["route", "status", "provider", "model"])
        for labels, n in list(_requests.items()):
            requests.add_metric(labels, n)
        yield requests
        yield _histogram("securellm_request_duration_seconds", "Whole request latency, as the client sees it.",
                         "route", _latency)
        yield _histogram("securellm_upstream_duration_seconds",
                         "Upstream latency of a successful attempt (to the first byte for streams).",
                         "provider", _upstream)
        tokens = CounterMetricFamily("securellm_tokens_total", "Tokens by type.", labels=["type", "provider", "model"])
        cost = CounterMetricFamily("securellm_cost_total", "Cost in the price table's currency.",
                                   labels=["provider", "model"])
        for (provider, model), (prompt, completion, spent) in list(_tokens.items()):
            tokens.add_metric(["prompt", provider, model], prompt)
            tokens.add_metric(["completion", provider, model], completion)
            cost.add_metric([provider, model], spent)
        yield tokens
        yield cost
        yield GaugeMetricFamily("securellm_in_flight_requests", "Inference requests being served now.",
                                value=float(_in_flight()))


def _histogram(name: str, doc: str, label: str, series: dict[str, _Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, hist in list(series.items()):
        family.add_metric([value], hist.buckets(), hist.total)
    return family


REGISTRY.register(_HotCollector())
