"""Token buckets: global, per key and per provider, on a fake clock."""

from __future__ import annotations

import pytest

from securellm_bridge.config.limits import RateLimitConfig
from securellm_bridge.errors import RateLimited
from securellm_bridge.security.ratelimit import (
    NO_RESERVATION,
    PRUNE_INTERVAL_S,
    RateLimiter,
    effective_burst,
    estimate_prompt_tokens,
)
from securellm_bridge.store.keys import KeyRow

OFF = RateLimitConfig()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def key(key_id: str = "key_a", rpm: int | None = None, tpm: int | None = None) -> KeyRow:
    return KeyRow(id=key_id, key_sha256="0" * 64, owner="t", allowed_models=(), created_at=0.0,
                  last_used_at=None, revoked=False, revoked_at=None, rpm=rpm, tpm=tpm)


def limiter(clock: Clock, global_: RateLimitConfig = OFF, key_default: RateLimitConfig = OFF,
            providers: dict[str, RateLimitConfig] | None = None) -> RateLimiter:
    return RateLimiter(global_, key_default, providers or {}, clock=clock)


def refused(fn: object, *args: object) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


def test_default_burst_is_ten_seconds_worth_at_least_one() -> None:
    assert effective_burst(RateLimitConfig(rpm=60)) == 10
    assert effective_burst(RateLimitConfig(rpm=5)) == 1
    assert effective_burst(RateLimitConfig(rpm=60, burst=3)) == 3


def test_burst_then_refill_and_retry_after() -> None:
    clock = Clock()
    rl = limiter(clock, global_=RateLimitConfig(rpm=60, burst=3))
    for _ in range(3):
        rl.admit(None, 0)
    err = refused(rl.admit, None, 0)
    assert err.retry_after == pytest.approx(1.0)
    assert "global rate limit exceeded" in err.message and "60 requests per minute, burst 3" in err.message
    clock.advance(0.5)
    assert refused(rl.admit, None, 0).retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    rl.admit(None, 0)
    clock.advance(3600)  # refills to the burst, not beyond
    for _ in range(3):
        rl.admit(None, 0)
    refused(rl.admit, None, 0)


def test_unlimited_admits_everything_without_reservation() -> None:
    rl = limiter(Clock())
    for _ in range(10_000):
        assert rl.admit(key(), 10_000) is NO_RESERVATION
    assert rl.tracked_keys() == 0


def test_tokens_per_minute_and_its_retry_after() -> None:
    clock = Clock()
    rl = limiter(clock, global_=RateLimitConfig(tpm=600))  # 10 tokens a second
    rl.admit(None, 500)
    err = refused(rl.admit, None, 200)
    assert err.retry_after == pytest.approx(10.0)  # 100 available, 200 needed
    assert "600 tokens per minute" in err.message
    clock.advance(10)
    rl.admit(None, 200)


def test_estimate_beyond_capacity_waits_for_a_full_bucket_and_leaves_a_debt() -> None:
    clock = Clock()
    rl = limiter(clock, global_=RateLimitConfig(tpm=60))  # 1 token a second
    rl.admit(None, 10)
    assert refused(rl.admit, None, 120).retry_after == pytest.approx(10.0)
    clock.advance(10)
    rl.admit(None, 120)  # full: admitted, 60 in debt
    assert refused(rl.admit, None, 1).retry_after == pytest.approx(61.0)


def test_settle_refunds_and_charges_once() -> None:
    clock = Clock()
    rl = limiter(clock, global_=RateLimitConfig(tpm=600))
    r = rl.admit(None, 600)
    refused(rl.admit, None, 500)
    r.settle(100)  # 500 back
    r.settle(0)  # a second settle changes nothing
    rl.admit(None, 500)
    refused(rl.admit, None, 1)

    clock.advance(60)  # full again: 600
    r = rl.admit(None, 100)
    r.settle(400)  # 300 more than estimated: 200 left
    rl.admit(None, 200)
    assert refused(rl.admit, None, 100).retry_after == pytest.approx(10.0)


def test_settle_goes_to_the_global_and_the_key_buckets() -> None:
    clock = Clock()
    rl = limiter(clock, global_=RateLimitConfig(tpm=1000), key_default=RateLimitConfig(tpm=600))
    a = key()
    r = rl.admit(a, 600)
    assert "API key key_a" in refused(rl.admit, a, 1).message
    r.settle(0)
    rl.admit(a, 600)  # the key's bucket got its 600 back
    rl.admit(key("key_b"), 400)  # and the global one too: 1000 - 600 - 400 = 0
    assert "global rate limit" in refused(rl.admit, key("key_c"), 1).message


def test_a_refusal_takes_nothing_from_any_bucket() -> None:
    clock = Clock()
    rl = limiter(clock, global_=RateLimitConfig(rpm=60, burst=1), key_default=RateLimitConfig(tpm=60))
    small = key("key_small")
    rl.admit(small, 60)
    clock.advance(1)  # global request bucket full again; the key's tokens are at 1
    err = refused(rl.admit, small, 30)
    assert "API key key_small" in err.message and err.retry_after == pytest.approx(29.0)
    rl.admit(key("key_other"), 1)  # the global request was not consumed by the refusal
    clock.advance(1)
    err = refused(rl.admit, small, 30)  # key tokens: 2 now, were not consumed either
    assert err.retry_after == pytest.approx(28.0)


def test_refusal_names_the_limit_with_the_longest_wait() -> None:
    clock = Clock()
    rl = limiter(clock, global_=RateLimitConfig(rpm=60, burst=1), key_default=RateLimitConfig(rpm=6, burst=1))
    rl.admit(key(), 0)
    err = refused(rl.admit, key(), 0)
    assert "API key key_a" in err.message and err.retry_after == pytest.approx(10.0)


def test_a_keys_own_limits_override_the_default() -> None:
    clock = Clock()
    rl = limiter(clock, key_default=RateLimitConfig(rpm=60, burst=2, tpm=1000))
    strict = key("key_strict", rpm=6, tpm=100)
    rl.admit(strict, 100)  # own rpm 6: burst 1 (derived from its rpm, not the default 2)
    err = refused(rl.admit, strict, 0)
    assert "API key key_strict exceeded (6 requests per minute, burst 1)" in err.message
    clock.advance(10)
    err = refused(rl.admit, strict, 100)
    assert "100 tokens per minute" in err.message
    plain = key("key_plain")
    rl.admit(plain, 500)
    rl.admit(plain, 500)
    assert "60 requests per minute, burst 2" in refused(rl.admit, plain, 0).message
    only_tpm = key("key_tpm", tpm=50)
    rl.admit(only_tpm, 50)
    rl.admit(only_tpm, 0)
    err = refused(rl.admit, only_tpm, 0)  # the default rpm and burst still apply
    assert "burst 2" in err.message


def test_a_key_limited_only_by_its_own_override_when_the_default_is_unlimited() -> None:
    rl = limiter(Clock())
    rl.admit(key("key_free"), 0)
    assert rl.tracked_keys() == 0
    capped = key("key_capped", rpm=6)
    rl.admit(capped, 0)
    refused(rl.admit, capped, 0)
    assert rl.tracked_keys() == 1


def test_provider_limits() -> None:
    clock = Clock()
    rl = limiter(clock, providers={"openai": RateLimitConfig(rpm=60, burst=1),
                                   "anthropic": RateLimitConfig(tpm=600)})
    rl.admit_provider("openai", 10_000)
    err = refused(rl.admit_provider, "openai", 0)
    assert "rate limit of provider openai exceeded" in err.message and err.retry_after == pytest.approx(1.0)
    for _ in range(100):
        assert rl.admit_provider("ollama", 10_000) is NO_RESERVATION  # not configured: unlimited
    r = rl.admit_provider("anthropic", 600)
    assert "provider anthropic" in refused(rl.admit_provider, "anthropic", 1).message
    r.settle(0)
    rl.admit_provider("anthropic", 600)
    rl.admit(None, 0)  # the global limit is separate


def test_reconfigure_keeps_unchanged_buckets() -> None:
    clock = Clock()
    glob = RateLimitConfig(rpm=60, burst=2)
    rl = limiter(clock, global_=glob, providers={"p": RateLimitConfig(rpm=60, burst=1)})
    rl.admit(None, 0)
    rl.admit(None, 0)
    rl.admit_provider("p", 0)
    rl.reconfigure(glob, OFF, {"p": RateLimitConfig(rpm=60, burst=1), "q": RateLimitConfig(rpm=60, burst=1)})
    refused(rl.admit, None, 0)  # still empty
    refused(rl.admit_provider, "p", 0)
    rl.admit_provider("q", 0)  # new provider: a full bucket
    refused(rl.admit_provider, "q", 0)


def test_reconfigure_with_new_limits_keeps_the_level_under_the_new_rate() -> None:
    clock = Clock()
    rl = limiter(clock, global_=RateLimitConfig(rpm=60, burst=2), key_default=RateLimitConfig(rpm=60, burst=5),
                 providers={"p": RateLimitConfig(rpm=60, burst=1)})
    a = key()
    rl.admit(a, 0)
    rl.admit(a, 0)  # global: 0 of 2 left; key: 3 of 5 left
    rl.reconfigure(RateLimitConfig(rpm=120, burst=2), RateLimitConfig(rpm=6, burst=1), {})
    err = refused(rl.admit, a, 0)
    assert "global rate limit" in err.message
    assert err.retry_after == pytest.approx(0.5)  # still empty, refilling at the new 2 a second
    clock.advance(0.5)
    rl.admit(a, 0)  # the key's 3 were clamped to its new burst of 1
    err = refused(rl.admit, a, 0)
    assert "API key key_a exceeded (6 requests per minute, burst 1)" in err.message
    assert err.retry_after == pytest.approx(10.0)
    for _ in range(5):
        rl.admit_provider("p", 0)  # removed provider: unlimited
    rl.reconfigure(OFF, OFF, {})
    for _ in range(100):
        rl.admit(a, 0)


def test_idle_key_buckets_are_pruned_but_not_while_a_reservation_is_open() -> None:
    clock = Clock()
    rl = limiter(clock, key_default=RateLimitConfig(rpm=60, tpm=600))
    open_reservation = rl.admit(key("key_busy"), 600)
    rl.admit(key("key_idle"), 10).settle(10)
    assert rl.tracked_keys() == 2
    clock.advance(PRUNE_INTERVAL_S)
    rl.admit(None, 0)  # a prune pass runs on the next admission
    assert rl.tracked_keys() == 1  # key_idle was full again; key_busy awaits its settle
    open_reservation.settle(600)
    clock.advance(PRUNE_INTERVAL_S)
    rl.admit(None, 0)
    assert rl.tracked_keys() == 0


def test_estimate_prompt_tokens() -> None:
    body = {"model": "m", "max_tokens": 100, "messages": [
        {"role": "system", "content": "x" * 40},
        {"role": "user", "content": [{"type": "text", "text": "y" * 41}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None},
        "garbage",
    ]}
    assert estimate_prompt_tokens(body) == 21  # ceil(81 / 4); the output limit is not prompt
    assert estimate_prompt_tokens({"prompt": ["abcd", "efgh"], "max_completion_tokens": 5}) == 2
    assert estimate_prompt_tokens({"input": "abc", "system": "abcdef"}) == 3
    assert estimate_prompt_tokens({"messages": "nope"}) == 0
    assert estimate_prompt_tokens({}) == 0
