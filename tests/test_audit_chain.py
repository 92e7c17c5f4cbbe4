"""The audit chain, its canonical form and the verifier, on records built in memory."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from securellm_bridge.audit.chain import GENESIS, canonical, key_id, link
from securellm_bridge.audit.events import EVENTS, request_priority
from securellm_bridge.audit.reader import Entry
from securellm_bridge.audit.record import (_SECRET_RE, CHAIN, MASK, RequestAudit, build, check_fields, format_value,
                                           mask_secrets, might_hold_secret, request_row)
from securellm_bridge.audit.request_record import render_request
from securellm_bridge.audit.verify import verify, verify_merged

KEY = b"k" * 32


def chain_of(n: int, key: bytes = KEY, start: int = 1, previous: str = GENESIS, owner: str = "alice") -> list[Entry]:
    out = []
    for seq in range(start, start + n):
        fields = build(EVENTS["key_created"], {"key_id": f"key_{seq}", "owner": owner}, seq=seq,
                       when=1_700_000_000 + seq, priority=5)
        previous = link(key, previous, fields)
        fields[CHAIN] = previous
        out.append(Entry(fields, 1_700_000_000.0 + seq, f"test:{seq}"))
    return out


def with_fields(e: Entry, **changes: str) -> Entry:
    return Entry({**e.fields, **changes}, e.time, e.where)


def test_canonical_form_is_sorted_compact_json_of_covered_fields() -> None:
    fields = {"SECURELLM_SEQ": "1", "MESSAGE": "héllo", "_PID": "42", "SECURELLM_CHAIN": "ab" * 32,
              "PRIORITY": "5", "SYSLOG_IDENTIFIER": "securellm-bridge", "MESSAGE_ID": "00" * 16,
              "CODE_FILE": "x.py", "SECURELLM_EVENT": "key_created"}
    expected = ('{"MESSAGE":"héllo","MESSAGE_ID":"' + "00" * 16 + '","PRIORITY":"5","SECURELLM_EVENT":'
                '"key_created","SECURELLM_SEQ":"1","SYSLOG_IDENTIFIER":"securellm-bridge"}').encode()
    assert canonical(fields) == expected
    by_hand = hmac.new(KEY, bytes(32) + expected, hashlib.sha256).hexdigest()
    assert link(KEY, GENESIS, fields) == by_hand


def test_record_fields_and_formats() -> None:
    rec = RequestAudit("r1", "/v1/chat/completions", 503, 12.25, key_id="key_1", cost_usd=0.0000015, cache_hit=True,
                       prompt="not asked for")
    fields, _ = render_request(request_row(rec, with_prompt=False, with_response=False), seq=7, when=0.5,
                               priority=request_priority(503))
    assert fields["SECURELLM_SEQ"] == "7" and fields["SECURELLM_EVENT"] == "request"
    assert fields["SECURELLM_TIME"] == "1970-01-01T00:00:00.500000Z"
    assert fields["PRIORITY"] == "4" and fields["MESSAGE_ID"] == EVENTS["request"].message_id
    assert fields["SECURELLM_COST_USD"] == "0.0000015" and fields["SECURELLM_CACHE_HIT"] == "true"
    assert fields["SECURELLM_DURATION_MS"] == "12.25"
    assert "SECURELLM_MODEL" not in fields  # None is left out
    assert "SECURELLM_PROMPT" not in fields and "SECURELLM_RESPONSE" not in fields
    assert fields["MESSAGE"] == "/v1/chat/completions -/- -> 503 in 12.25 ms (request r1, key key_1)"
    assert len({e.message_id for e in EVENTS.values()}) == len(EVENTS)
    assert format_value(["a", "b"]) == "a,b" and format_value(False) == "false" and format_value(0.0) == "0"


def test_request_prompt_only_when_asked_and_hidden_from_repr() -> None:
    rec = RequestAudit("r1", "/v1/chat/completions", 200, 1.0, prompt="my prompt", response="the answer")
    fields, _ = render_request(request_row(rec, with_prompt=True, with_response=False), seq=1, when=0.0, priority=6)
    assert fields["SECURELLM_PROMPT"] == "my prompt" and "SECURELLM_RESPONSE" not in fields
    assert "my prompt" not in repr(rec) and "the answer" not in repr(rec)


def test_secrets_are_masked_in_values() -> None:
    key = "sk-sllm-" + "A1b2C3d4" * 5
    text = mask_secrets(f"use {key} or Bearer abcdefghijklmnop1234 or sk-ant-api03-xyzxyzxyzxyzxyz")
    assert key not in text and "abcdefghijklmnop1234" not in text and "xyzxyzxyzxyzxyz" not in text
    assert text.count(MASK) == 3
    assert mask_secrets("task-management and risk-assessment") == "task-management and risk-assessment"


@pytest.mark.parametrize("text", [
    "sk-abcdefghijklmnop", "SK-ABCDEFGHIJKLMNOP", "\u017fk-abcdefghijklmnop", "s\u212a-abcdefghijklmnop",
    "BEARER abcdefghijklmnop", "beArEr\tabcdefghijklmnop", "Bearer short", "xsk-abcdefghijklmnop",
    "task-management and risk-assessment", "a\0sk-proj-abcdefghijklmnop\0b", "", "plain text"])
def test_secret_prefilter_agrees_with_the_pattern(text: str) -> None:
    """The cheap test in front of the scan may say "maybe", never "no" where the pattern matches
    (IGNORECASE accepts the long s and the Kelvin sign for s and k)."""
    assert might_hold_secret(text) == (_SECRET_RE.search(text) is not None)


@pytest.mark.parametrize("fields", [{"Bad": "x"}, {"seq": "1"}, {"chain": "x"}, {"x-y": "1"}, {"obj": {"a": 1}}])
def test_bad_fields_are_refused(fields: dict) -> None:
    with pytest.raises(ValueError):
        check_fields(fields)


def test_intact_chain_verifies() -> None:
    report = verify(chain_of(5), KEY, source="t")
    assert report.ok and report.records == 5 and (report.first_seq, report.last_seq) == (1, 5)
    assert report.notes == ()


def test_wrong_key_fails() -> None:
    report = verify(chain_of(3), b"x" * 32, source="t")
    assert not report.ok and report.problem is not None and report.problem.kind == "modified"


def test_deleted_record_is_a_gap() -> None:
    entries = chain_of(5)
    del entries[2]
    report = verify(entries, KEY, source="t")
    assert report.problem is not None and report.problem.kind == "gap" and report.problem.seq == 3
    assert "seq 3 missing between seq 2 and seq 4" in report.problem.message
    assert report.records == 2


def test_deleted_tail_records_after_a_gap_name_the_span() -> None:
    entries = chain_of(6)
    del entries[1:4]
    report = verify(entries, KEY, source="t")
    assert report.problem is not None and "seq 2..4 missing" in report.problem.message


def test_modified_record_is_detected() -> None:
    entries = chain_of(4)
    entries[2] = with_fields(entries[2], SECURELLM_OWNER="mallory")
    report = verify(entries, KEY, source="t")
    assert report.problem is not None and report.problem.kind == "modified" and report.problem.seq == 3


def test_modified_message_or_priority_is_detected() -> None:
    for change in ({"MESSAGE": "nothing happened"}, {"PRIORITY": "7"}):
        entries = chain_of(3)
        entries[1] = with_fields(entries[1], **change)
        assert verify(entries, KEY, source="t").problem.kind == "modified"  # type: ignore[union-attr]


def test_reordered_records_are_detected() -> None:
    entries = chain_of(5)
    entries[2], entries[3] = entries[3], entries[2]
    report = verify(entries, KEY, source="t")
    assert report.problem is not None and report.problem.kind == "reordered" and report.problem.seq == 3
    entries = chain_of(5)
    entries.append(entries.pop(1))  # seq 2 moved to the end
    assert verify(entries, KEY, source="t").problem.kind == "reordered"  # type: ignore[union-attr]


def test_forged_record_with_the_next_seq_is_detected() -> None:
    entries = chain_of(3)
    forged = build(EVENTS["key_revoked"], {"key_id": "key_1"}, seq=4, when=1.0, priority=5)
    forged[CHAIN] = link(b"not the key" * 3, entries[-1].chain, forged)
    report = verify([*entries, Entry(forged, 2e9, "forged"), *chain_of(1, start=4, previous=entries[-1].chain)],
                    KEY, source="t")
    assert report.problem is not None and report.problem.kind == "modified" and report.problem.where == "forged"


def test_second_record_with_a_seen_seq_is_forged() -> None:
    entries = chain_of(4)
    copy = with_fields(entries[1], SECURELLM_OWNER="eve", SECURELLM_CHAIN="ab" * 32)
    report = verify([*entries, copy], KEY, source="t")
    assert report.problem is not None and report.problem.kind == "forged" and report.problem.seq == 2


def test_malformed_record_is_reported() -> None:
    entries = chain_of(2)
    report = verify([entries[0], Entry({"MESSAGE": "hi"}, 0.0, "f:2"), entries[1]], KEY, source="t")
    assert report.problem is not None and report.problem.kind == "malformed" and "f:2" in report.problem.message


def test_exact_duplicate_is_a_note_not_a_failure() -> None:
    entries = chain_of(4)
    report = verify([*entries[:3], entries[2], entries[3]], KEY, source="t")
    assert report.ok and report.records == 4
    assert any("duplicate of seq 3" in n for n in report.notes)


def test_new_chain_at_seq_1_is_a_note() -> None:
    report = verify([*chain_of(3), *chain_of(2, owner="bob")], KEY, source="t")
    assert report.ok and any("new chain starts at seq 1" in n for n in report.notes)


def test_window_continues_from_the_anchor() -> None:
    entries = chain_of(6)
    assert verify(entries[3:], KEY, source="t", anchor=entries[2]).ok
    # The anchor makes the first record in the window checkable.
    tampered = [with_fields(entries[3], SECURELLM_OWNER="eve"), *entries[4:]]
    assert verify(tampered, KEY, source="t", anchor=entries[2]).problem.kind == "modified"  # type: ignore[union-attr]
    # Without one, verification starts from the first record and says so.
    report = verify(entries[3:], KEY, source="t")
    assert report.ok and any("starts at seq 4" in n for n in report.notes)


def test_merged_union_fills_a_gap_and_catches_conflicts() -> None:
    entries = chain_of(5)
    journal = [e for e in entries if e.seq != 3]
    fallback = [entries[2]]
    assert not verify(journal, KEY, source="t").ok
    assert verify_merged([journal, fallback], KEY, source="t").ok
    other = with_fields(entries[2], SECURELLM_OWNER="eve")
    report = verify_merged([journal + [entries[2]], [other]], KEY, source="t")
    assert report.problem is not None and report.problem.kind == "conflict"


def test_key_id_identifies_without_revealing() -> None:
    assert key_id(KEY) == key_id(KEY) != key_id(b"y" * 32)
    assert KEY.hex() not in key_id(KEY) and len(key_id(KEY)) == 16


def test_message_summaries_fill_absent_fields() -> None:
    fields = build(EVENTS["key_revoked"], {"key_id": "key_9"}, seq=1, when=0, priority=5)
    assert fields["MESSAGE"] == "API key key_9 revoked (owner -)"
    assert json.loads(json.dumps(fields)) == fields
