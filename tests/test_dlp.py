"""DLP: detector quality over a labelled corpus, redaction, and request-body handling."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from securellm_bridge.errors import InvalidRequest
from securellm_bridge.security.dlp import (
    DETECTOR_TYPES,
    DLP_MODES,
    DlpResult,
    Finding,
    apply,
    blocked_error,
    redact,
    redact_chat_body,
    scan,
    scan_chat_body,
)
from securellm_bridge.security.dlp_detectors import iban_ok, luhn_ok

CORPUS = Path(__file__).parent / "data" / "dlp_corpus.jsonl"
# Documented in docs/DLP.md ("Quality thresholds"); every detector must meet both.
MIN_PRECISION = 0.95
MIN_RECALL = 0.95
MIN_POSITIVES_PER_TYPE = 5

FAKE_KEY = "sk-proj-FAKEtestKEY_0000example-1111DoNotUse2222"
FAKE_CARD = "4111 1111 1111 1111"


def _corpus() -> list[dict[str, Any]]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_corpus_is_large_and_covers_every_detector() -> None:
    cases = _corpus()
    assert len(cases) >= 220
    assert sum(1 for c in cases if not c["expect"]) >= 80
    positives: Counter[str] = Counter()
    for c in cases:
        assert set(c["expect"]) <= set(DETECTOR_TYPES), c
        positives.update(c["expect"])
    for typ in DETECTOR_TYPES:
        assert positives[typ] >= MIN_POSITIVES_PER_TYPE, typ


def test_precision_and_recall_per_detector() -> None:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for case in _corpus():
        got = Counter(f.type for f in scan(case["text"]))
        want = Counter(case["expect"])
        for typ in DETECTOR_TYPES:
            tp[typ] += min(got[typ], want[typ])
            fp[typ] += max(0, got[typ] - want[typ])
            fn[typ] += max(0, want[typ] - got[typ])
    print(f"\n{'detector':<16}{'tp':>5}{'fp':>5}{'fn':>5}{'precision':>11}{'recall':>8}")
    failures = []
    for typ in DETECTOR_TYPES:
        precision = tp[typ] / (tp[typ] + fp[typ]) if tp[typ] + fp[typ] else 1.0
        recall = tp[typ] / (tp[typ] + fn[typ])
        print(f"{typ:<16}{tp[typ]:>5}{fp[typ]:>5}{fn[typ]:>5}{precision:>11.3f}{recall:>8.3f}")
        if precision < MIN_PRECISION or recall < MIN_RECALL:
            failures.append((typ, round(precision, 3), round(recall, 3)))
    assert not failures


def test_findings_are_sorted_disjoint_and_hold_no_text() -> None:
    for case in _corpus():
        findings = scan(case["text"])
        for a, b in zip(findings, findings[1:]):
            assert a.end <= b.start
        for f in findings:
            assert 0 <= f.start < f.end <= len(case["text"])
            assert [field.name for field in dataclasses.fields(f)] == ["type", "start", "end"]
            assert case["text"][f.start:f.end] not in repr(f)


def test_redact_replaces_each_match_with_its_type() -> None:
    text = f"Mail bob@example.com or call +1 415-555-0132; key {FAKE_KEY}; card {FAKE_CARD}."
    redacted, counts = redact(text)
    assert redacted == (
        "Mail [EMAIL_ADDRESS] or call [PHONE_NUMBER]; key [API_KEY]; card [CREDIT_CARD].")
    assert counts == Counter(EMAIL_ADDRESS=1, PHONE_NUMBER=1, API_KEY=1, CREDIT_CARD=1)


def test_redact_without_findings_returns_the_same_text() -> None:
    text = "Explain the difference between TCP and UDP, version 1.2.3.4 please."
    assert redact(text) == (text, Counter())
    assert scan("") == []


def test_more_specific_detector_wins_an_overlap() -> None:
    token = "ghp_" + "FAKEexampleTOKEN" + "0" * 20
    redacted, counts = redact(f"git clone https://{token}@github.com/example/repo.git")
    assert redacted == "git clone https://[GITHUB_TOKEN]@github.com/example/repo.git"
    assert counts == Counter(GITHUB_TOKEN=1)


@pytest.mark.parametrize("text", [
    "version 1.2.3.4 of the app",
    "Version: 10.0.0.1",
    "v1.2.3.4",
    "pip install example==1.2.3.4",
    "section 1.2.3.4",
])
def test_version_numbers_are_not_ip_addresses(text: str) -> None:
    assert scan(text) == []


def test_a_dotted_quad_in_other_contexts_is_an_ip_address() -> None:
    assert [f.type for f in scan("connect to 10.0.0.1 now")] == ["IP_ADDRESS"]


def test_luhn_and_iban_checksums() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000")
    assert not iban_ok("DE89370400440532013001")


def _chat_body() -> dict[str, Any]:
    return {
        "model": "local-llama",
        "messages": [
            {"role": "system", "content": "You are a support bot. Escalate to ops@example.com."},
            {"role": "user", "content": [
                {"type": "text", "text": f"My card {FAKE_CARD} was charged twice."},
                {"type": "image_url", "image_url": {"url": "https://example.com/a@b.example.png"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "user", "content": "Reach me at +44 20 7946 0958."},
        ],
    }


def test_redact_chat_body_in_place_over_strings_and_text_parts() -> None:
    body = _chat_body()
    counts = redact_chat_body(body)
    assert counts == Counter(EMAIL_ADDRESS=1, CREDIT_CARD=1, PHONE_NUMBER=1)
    assert body["messages"][0]["content"] == "You are a support bot. Escalate to [EMAIL_ADDRESS]."
    assert body["messages"][1]["content"][0]["text"] == "My card [CREDIT_CARD] was charged twice."
    # Only text parts are touched; other parts, other keys and null content stay as they were.
    assert body["messages"][1]["content"][1] == _chat_body()["messages"][1]["content"][1]
    assert body["messages"][2] == {"role": "assistant", "content": None, "tool_calls": []}
    assert body["messages"][3]["content"] == "Reach me at [PHONE_NUMBER]."
    assert body["model"] == "local-llama"


def test_redact_completions_prompt_and_embeddings_input() -> None:
    body: dict[str, Any] = {"prompt": ["ping 192.0.2.10", [1, 2, 3], "plain"],
                            "input": "x@example.com"}
    assert redact_chat_body(body) == Counter(IP_ADDRESS=1, EMAIL_ADDRESS=1)
    assert body == {"prompt": ["ping [IP_ADDRESS]", [1, 2, 3], "plain"], "input": "[EMAIL_ADDRESS]"}
    body = {"prompt": f"key={FAKE_KEY}", "input": ["a@example.org", "b"]}
    assert redact_chat_body(body) == Counter(API_KEY=1, EMAIL_ADDRESS=1)
    assert body == {"prompt": "key=[API_KEY]", "input": ["[EMAIL_ADDRESS]", "b"]}


def test_malformed_bodies_are_skipped_not_rejected() -> None:
    body: dict[str, Any] = {"messages": ["not a dict", {"role": "user"}, {"content": 5}],
                            "prompt": 7}
    before = copy.deepcopy(body)
    assert redact_chat_body(body) == Counter()
    assert body == before


def test_apply_off_does_nothing() -> None:
    body = _chat_body()
    assert apply(body, "off") == DlpResult(Counter(), blocked=False)
    assert body == _chat_body()


def test_apply_redact_modifies_the_body() -> None:
    body = _chat_body()
    result = apply(body, "redact")
    expected = Counter(EMAIL_ADDRESS=1, CREDIT_CARD=1, PHONE_NUMBER=1)
    assert result == DlpResult(expected, blocked=False)
    assert body != _chat_body()


def test_apply_block_leaves_the_body_alone_and_blocks_on_findings() -> None:
    body = _chat_body()
    result = apply(body, "block")
    assert result.blocked
    assert result.counts == Counter(EMAIL_ADDRESS=1, CREDIT_CARD=1, PHONE_NUMBER=1)
    assert body == _chat_body()
    assert scan_chat_body(body) == result.counts


def test_apply_block_passes_a_clean_body() -> None:
    body = {"messages": [{"role": "user", "content": "What is the capital of Australia?"}]}
    assert apply(body, "block") == DlpResult(Counter(), blocked=False)


def test_every_mode_is_handled_and_unknown_modes_are_refused() -> None:
    for mode in DLP_MODES:
        apply({"messages": []}, mode)
    with pytest.raises(ValueError):
        apply({}, "audit")  # type: ignore[arg-type]


def test_blocked_error_names_types_never_values() -> None:
    body = {"messages": [{"role": "user", "content": f"{FAKE_KEY} and {FAKE_CARD}"}]}
    error = blocked_error(apply(body, "block"))
    assert isinstance(error, InvalidRequest)
    assert error.code == "dlp_blocked"
    assert "API_KEY" in error.message and "CREDIT_CARD" in error.message
    assert FAKE_KEY not in error.message and "4111" not in error.message


def test_finding_is_a_frozen_value() -> None:
    f = Finding("EMAIL_ADDRESS", 0, 3)
    with pytest.raises(AttributeError):
        f.start = 1  # type: ignore[misc]
    assert f == Finding("EMAIL_ADDRESS", 0, 3)
