"""Token-bucket rate limits: over all requests, per API key and per provider.

Each limit (:class:`~securellm_bridge.config.limits.RateLimitConfig`) has up to two
buckets: *requests* refills at ``rpm`` per minute and holds ``burst`` (0: ``rpm // 6``, at
least 1); *tokens* refills at ``tpm`` per minute and holds one minute's worth. A rate of 0
means no bucket at all.

A request is admitted only when every bucket that applies has room; nothing is taken
otherwise. Its token cost is an estimate (:func:`estimate_prompt_tokens` plus the output limit); a request estimated at
more than a bucket holds is admitted once that bucket is full, and the bucket goes into
debt. :meth:`Reservation.settle` later corrects the token buckets to the upstream's real
usage (a refund, or a further charge that may also leave a debt).

Everything runs on the event loop in O(1): buckets refill lazily from an injectable clock.
Key buckets are created on a key's first request and dropped once they are full again and
no reservation is outstanding, so a dropped bucket equals a fresh one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..config.limits import RateLimitConfig
from ..errors import RateLimited
from ..store.keys import KeyRow

Clock = Callable[[], float]

#: How often (in clock seconds) idle key buckets are looked for.
PRUNE_INTERVAL_S = 60.0
#: Characters per token in :func:`estimate_prompt_tokens`.
CHARS_PER_TOKEN = 4


def effective_burst(cfg: RateLimitConfig) -> int:
    """Capacity of the requests bucket: ``burst``, else 10 seconds' worth, at least 1."""
    return cfg.burst if cfg.burst > 0 else max(1, cfg.rpm // 6)


class _Bucket:
    __slots__ = ("rate", "capacity", "level", "stamp")

    def __init__(self, per_minute: int, capacity: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.level = min(self.capacity, self.level + elapsed * self.rate)
            self.stamp = now

    def shortfall(self, need: float, now: float) -> float:
        """Refill, then the seconds until ``need`` (at most the capacity) is available; 0 when it
        is. One call with the arithmetic inline: this runs three to six times per request."""
        elapsed = now - self.stamp
        capacity = self.capacity
        if elapsed > 0:
            level = self.level + elapsed * self.rate
            self.level = level if level < capacity else capacity
            self.stamp = now
        deficit = (need if need < capacity else capacity) - self.level
        return deficit / self.rate if deficit > 0 else 0.0

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def resize(self, per_minute: int, capacity: float, now: float) -> None:
        self.refill(now)
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self.level = min(self.level, capacity)

    def full_by(self, now: float) -> bool:
        return self.level + (now - self.stamp) * self.rate >= self.capacity


def _bucket(old: _Bucket | None, per_minute: int, capacity: float, now: float) -> _Bucket | None:
    if per_minute <= 0:
        return None
    if old is None:
        return _Bucket(per_minute, capacity, now)
    old.resize(per_minute, capacity, now)
    return old


class _Limit:
    """One configured limit: its requests and tokens buckets and how to name it."""

    __slots__ = ("scope", "config", "requests", "tokens")

    def __init__(self, scope: str, config: RateLimitConfig, now: float) -> None:
        self.scope = scope
        self.config = RateLimitConfig()
        self.requests: _Bucket | None = None
        self.tokens: _Bucket | None = None
        self.apply(config, now)

    def apply(self, config: RateLimitConfig, now: float) -> None:
        """Take new limits, keeping the buckets' levels (clamped) where they still apply."""
        if config == self.config:
            return
        self.config = config
        self.requests = _bucket(self.requests, config.rpm, effective_burst(config), now)
        self.tokens = _bucket(self.tokens, config.tpm, config.tpm, now)

    def wait(self, est_tokens: int, now: float) -> float:
        """Seconds to wait before this limit admits a request (0: admitted now)."""
        wait = 0.0
        if self.requests is not None:
            wait = self.requests.shortfall(1, now)
        if self.tokens is not None:
            token_wait = self.tokens.shortfall(est_tokens, now)
            if token_wait > wait:
                wait = token_wait
        return wait

    def binding(self, est_tokens: int, now: float) -> str:
        """Which part of this limit makes a request wait (for the rejection's message)."""
        requests = self.requests.shortfall(1, now) if self.requests is not None else 0.0
        tokens = self.tokens.shortfall(est_tokens, now) if self.tokens is not None else 0.0
        if tokens > requests:
            return f"{self.config.tpm} tokens per minute"
        return f"{self.config.rpm} requests per minute, burst {effective_burst(self.config)}"

    def take(self, est_tokens: int) -> None:
        if self.requests is not None:
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.level -= est_tokens

    def idle(self, now: float) -> bool:
        return all(b is None or b.full_by(now) for b in (self.requests, self.tokens))


class _KeyLimit(_Limit):
    """A key's limit, remembering the key's own overrides it was built from."""

    __slots__ = ("rpm_override", "tpm_override", "outstanding")

    def __init__(self, key: KeyRow, default: RateLimitConfig, now: float) -> None:
        self.rpm_override = key.rpm
        self.tpm_override = key.tpm
        self.outstanding = 0
        super().__init__(f"rate limit of API key {key.id}", _for_key(key.rpm, key.tpm, default), now)


def _for_key(rpm: int | None, tpm: int | None, default: RateLimitConfig) -> RateLimitConfig:
    """A key's own rpm (with the burst derived from it) and tpm override the default."""
    if rpm is None and tpm is None:
        return default
    return RateLimitConfig(rpm=default.rpm if rpm is None else rpm,
                           burst=default.burst if rpm is None else 0,
                           tpm=default.tpm if tpm is None else tpm)


class Reservation:
    """The estimated tokens a request took; :meth:`settle` once its real usage is known."""

    __slots__ = ("_buckets", "_estimate", "_key_limit")

    def __init__(self, buckets: tuple[_Bucket, ...], estimate: int, key_limit: _KeyLimit | None) -> None:
        self._buckets = buckets
        self._estimate = estimate
        self._key_limit = key_limit
        if key_limit is not None:
            key_limit.outstanding += 1

    def settle(self, actual_tokens: int) -> None:
        """Correct the token buckets from the estimate to ``actual_tokens``; later calls do nothing.

        ``settle(0)`` returns the whole estimate, e.g. when no upstream was reached.
        """
        if not self._buckets:
            return
        diff = self._estimate - max(0, actual_tokens)
        for bucket in self._buckets:
            if diff > 0:
                bucket.give(diff)
            else:
                bucket.level += diff
        self._buckets = ()
        if self._key_limit is not None:
            self._key_limit.outstanding -= 1
            self._key_limit = None


#: What an unlimited admission returns: there is nothing to settle.
NO_RESERVATION = Reservation((), 0, None)


class RateLimiter:
    """The global, per-key and per-provider buckets of the daemon. Loop-only, not thread-safe."""

    def __init__(self, global_: RateLimitConfig, key_default: RateLimitConfig,
                 providers: Mapping[str, RateLimitConfig], clock: Clock = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        self._global = _Limit("global rate limit", global_, now)
        self._key_default = key_default
        self._keys: dict[str, _KeyLimit] = {}
        self._providers = {name: _Limit(f"rate limit of provider {name}", cfg, now)
                           for name, cfg in providers.items()}
        self._next_prune = now + PRUNE_INTERVAL_S

    def admit(self, key: KeyRow | None, est_tokens: int) -> Reservation:
        """Admit one request of about ``est_tokens`` tokens against the global and key limits.

        Raises :class:`RateLimited` naming the binding limit, with ``retry_after`` in
        seconds; then nothing has been taken from any bucket.
        """
        now = self._clock()
        if now >= self._next_prune:
            self._prune(now)
        key_limit = self._key_limit(key, now) if key is not None else None
        wait, limit = self._global.wait(est_tokens, now), self._global
        if key_limit is not None:
            key_wait = key_limit.wait(est_tokens, now)
            if key_wait > wait:
                wait, limit = key_wait, key_limit
        if wait > 0:
            raise _limited(limit.scope, limit.binding(est_tokens, now), wait)
        self._global.take(est_tokens)
        global_tokens = self._global.tokens
        if key_limit is not None:
            key_limit.take(est_tokens)
            if key_limit.tokens is not None:
                buckets = (key_limit.tokens,) if global_tokens is None else (global_tokens, key_limit.tokens)
                return Reservation(buckets, est_tokens, key_limit)
        return NO_RESERVATION if global_tokens is None else Reservation((global_tokens,), est_tokens, None)

    def admit_provider(self, name: str, est_tokens: int) -> Reservation:
        """Admit one request to provider ``name``; raises :class:`RateLimited` when it is at its limit."""
        limit = self._providers.get(name)
        if limit is None:
            return NO_RESERVATION
        now = self._clock()
        wait = limit.wait(est_tokens, now)
        if wait > 0:
            raise _limited(limit.scope, limit.binding(est_tokens, now), wait)
        limit.take(est_tokens)
        return NO_RESERVATION if limit.tokens is None else Reservation((limit.tokens,), est_tokens, None)

    def reconfigure(self, global_: RateLimitConfig, key_default: RateLimitConfig,
                    providers: Mapping[str, RateLimitConfig]) -> None:
        """Apply reloaded limits; buckets whose limits did not change keep their state."""
        now = self._clock()
        self._global.apply(global_, now)
        self._key_default = key_default
        for limit in self._keys.values():
            limit.apply(_for_key(limit.rpm_override, limit.tpm_override, key_default), now)
        kept = {name: self._providers[name] for name in providers.keys() & self._providers.keys()}
        for name, cfg in providers.items():
            if name in kept:
                kept[name].apply(cfg, now)
            else:
                kept[name] = _Limit(f"rate limit of provider {name}", cfg, now)
        self._providers = kept

    def tracked_keys(self) -> int:
        """How many keys currently have buckets."""
        return len(self._keys)

    def _key_limit(self, key: KeyRow, now: float) -> _KeyLimit | None:
        limit = self._keys.get(key.id)
        if limit is None:
            if key.rpm is None and key.tpm is None and self._key_default.rpm == 0 and self._key_default.tpm == 0:
                return None
            limit = self._keys[key.id] = _KeyLimit(key, self._key_default, now)
        elif limit.rpm_override != key.rpm or limit.tpm_override != key.tpm:
            limit.rpm_override, limit.tpm_override = key.rpm, key.tpm
            limit.apply(_for_key(key.rpm, key.tpm, self._key_default), now)
        return limit

    def _prune(self, now: float) -> None:
        idle = [key_id for key_id, limit in self._keys.items() if limit.outstanding == 0 and limit.idle(now)]
        for key_id in idle:
            del self._keys[key_id]
        self._next_prune = now + PRUNE_INTERVAL_S


def _limited(scope: str, what: str, wait: float) -> RateLimited:
    return RateLimited(f"{scope} exceeded ({what}); retry in {math.ceil(wait * 10) / 10:.1f} s",
                       retry_after=wait)


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """A rough token count of a chat/completions/embeddings request's text: characters / 4 of
    its messages, prompt, input and system. Malformed parts count 0. A request's whole estimate
    adds the client's output limit (:func:`~..providers.openai_shapes.max_tokens`)."""
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                chars += _text_chars(message.get("content"))
    for field in ("prompt", "input", "system"):
        chars += _text_chars(body.get(field))
    return -(-chars // CHARS_PER_TOKEN)


def _text_chars(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list):
        return 0
    total = 0
    for part in value:
        if isinstance(part, str):
            total += len(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            total += len(part["text"])
    return total
