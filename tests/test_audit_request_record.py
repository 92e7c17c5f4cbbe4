"""The audit writer's request-record renderer against the generic path it replaces.

``render_request`` must give exactly the fields and the canonical text that ``record.build`` +
``chain.canonical_text`` give for the same row, or the chain values (and so ``audit verify``)
would depend on which path wrote a record.
"""

from __future__ import annotations

import random

import pytest

from securellm_bridge.audit.chain import canonical, canonical_text
from securellm_bridge.audit.events import EVENTS
from securellm_bridge.audit.record import MASK, REQUEST_ROW, RequestAudit, build, request_row
from securellm_bridge.audit.request_record import render_request

_TEXTS = ["", "r1", "/v1/chat/completions", "gpt-4o-mini", "héllo wörld ✓", 'quote " and \\ backslash',
          "line\nbreak", "tab\tand\rreturn", "\x00\x01\x1f control", "{0} {route} {{braces}}", "-",
          "sk-sllm-" + "A1b2C3d4" * 5, "Bearer abcdefghijklmnop1234", "see sk-ant-api03-xyzxyzxyzxyzxyz here",
          "task-management", "CN=client,O=Example", "\U0001f600 emoji", "\u2028 separator"]
_NUMBERS = [0, 1, 200, 429, 503, -1, 10**12, 0.0, -0.0, 1.234, 0.0000015, 1e-12, 123456.789, 2.5e9, True, False]


def _value(rng: random.Random, name: str) -> object:
    roll = rng.random()
    if roll < 0.15:
        return None
    if name == "redacted_types" and roll < 0.6:
        return tuple(rng.sample(["EMAIL_ADDRESS:2", "API_KEY:1", "sk-proj-abcdefghijklmnopq:1", ""], rng.randint(0, 3)))
    if roll < 0.6:
        return rng.choice(_TEXTS)
    return rng.choice(_NUMBERS)


def _generic(row: tuple, seq: int, when: float, priority: int) -> tuple[dict[str, str], str]:
    fields = build(EVENTS["request"], dict(zip(REQUEST_ROW, row)), seq=seq, when=when, priority=priority)
    return fields, canonical_text(fields)


@pytest.mark.parametrize("seed", range(40))
def test_random_rows_render_as_the_generic_path_does(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        row = tuple(_value(rng, name) for name in REQUEST_ROW)
        seq, when, priority = rng.randint(1, 10**9), rng.uniform(0, 4e9), rng.choice([3, 4, 5, 6])
        fields, text = render_request(row, seq=seq, when=when, priority=priority)
        assert (fields, text) == _generic(row, seq, when, priority), row
        assert canonical(fields).decode("utf-8") == text


def test_a_request_row_from_the_daemon() -> None:
    rec = RequestAudit("r1", "/v1/chat/completions", 503, 12.25, key_id="key_1", cost_usd=0.0000015, cache_hit=True,
                       prompt="not asked for", redacted_types=("EMAIL_ADDRESS:2",))
    row = request_row(rec, with_prompt=False, with_response=False)
    fields, text = render_request(row, seq=7, when=0.5, priority=4)
    assert (fields, text) == _generic(row, 7, 0.5, 4)
    assert fields["MESSAGE"] == "/v1/chat/completions -/- -> 503 in 12.25 ms (request r1, key key_1)"
    assert fields["SECURELLM_TIME"] == "1970-01-01T00:00:00.500000Z" and fields["PRIORITY"] == "4"
    assert fields["SECURELLM_REDACTED_TYPES"] == "EMAIL_ADDRESS:2" and fields["SECURELLM_CACHE_HIT"] == "true"
    assert "SECURELLM_PROMPT" not in fields and "SECURELLM_MODEL" not in fields
    assert list(fields) == sorted(fields)


def test_secrets_are_masked_in_every_value_and_in_the_message() -> None:
    secret = "sk-sllm-" + "Z9y8X7w6" * 5
    rec = RequestAudit(f"id {secret}", "/v1/chat/completions", 200, 1.0, key_owner=f"Bearer {secret}",
                       prompt=f"my key is {secret}")
    fields, text = render_request(request_row(rec, with_prompt=True, with_response=False), seq=1, when=0.0,
                                  priority=6)
    assert secret[12:] not in text and all(secret[12:] not in v for v in fields.values())
    assert fields["SECURELLM_PROMPT"] == f"my key is sk-sllm-{MASK}" and MASK in fields["MESSAGE"]


def test_a_row_of_another_width_is_refused() -> None:
    with pytest.raises(ValueError, match="request row"):
        render_request(("r1", "/v1/models"), seq=1, when=0.0, priority=6)
