"""Data-loss prevention on inference request bodies, before they are routed.

``apply(body, mode)`` is the one call the API makes per request: in ``redact`` mode every
finding in the user-supplied text is replaced in place by ``[TYPE]``; in ``block`` mode the
body is left untouched and the result says whether to refuse it (see :func:`blocked_error`).
Only type names and counts ever leave this module, never the matched values.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from securellm_bridge.errors import InvalidRequest
from securellm_bridge.security import dlp_detectors as d

DlpMode = Literal["off", "redact", "block"]
DLP_MODES: tuple[DlpMode, ...] = ("off", "redact", "block")

#: A place in a request body that holds a string: ``container[key]``.
Slot = tuple[Any, Any]


@dataclass(frozen=True, slots=True)
class Finding:
    """Where a detector matched: a type name and a half-open character range, no text."""

    type: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Detector:
    #: Stable name, used in ``[TYPE]`` placeholders and as a metric label.
    type: str
    #: Specificity: of two overlapping spans the higher priority wins, then the longer one.
    priority: int
    #: A cheap test that rules the detector out without running its regex.
    precheck: Callable[[str], bool]
    find: d.Finder


DETECTORS: tuple[Detector, ...] = (
    Detector("PRIVATE_KEY", 100, lambda t: "PRIVATE KEY" in t, d.find_private_keys),
    Detector("JWT", 90, lambda t: "eyJ" in t, d.find_jwts),
    Detector("GITHUB_TOKEN", 90, d.has_github_prefix, d.find_github_tokens),
    Detector("AWS_ACCESS_KEY", 90, lambda t: "AKIA" in t or "ASIA" in t, d.find_aws_keys),
    Detector("API_KEY", 80, lambda t: "sk-" in t or "sk_" in t, d.find_api_keys),
    Detector("IBAN", 70, d.has_digit, d.find_ibans),
    Detector("CREDIT_CARD", 70, d.has_seven_digits, d.find_cards),
    Detector("EMAIL_ADDRESS", 60, lambda t: "@" in t, d.find_emails),
    Detector("US_SSN", 50, d.has_seven_digits, d.find_ssns),
    Detector("IP_ADDRESS", 40, d.has_ip_shape, d.find_ips),
    Detector("PHONE_NUMBER", 30, d.has_seven_digits, d.find_phones),
)

#: Every type name a finding can have, for placeholders and pre-initialised metric labels.
DETECTOR_TYPES: tuple[str, ...] = tuple(sorted(det.type for det in DETECTORS))


@dataclass(frozen=True, slots=True)
class DlpResult:
    counts: Counter[str]
    blocked: bool


def scan(text: str) -> list[Finding]:
    """Non-overlapping findings in ``text``, in text order.

    Where spans of different detectors overlap, the most specific detector wins (a GitHub
    token in ``https://TOKEN@github.com`` is a token, not an e-mail address), then the
    longest span.
    """
    candidates: list[tuple[int, int, int, str]] = []
    gates: dict[Callable[[str], bool], bool] = {}  # detectors share pre-checks: run each once
    for det in DETECTORS:
        passed = gates.get(det.precheck)
        if passed is None:
            passed = gates[det.precheck] = det.precheck(text)
        if passed:
            for start, end in det.find(text):
                candidates.append((-det.priority, start - end, start, det.type))
    if not candidates:
        return []
    candidates.sort()
    starts: list[int] = []
    kept: list[Finding] = []  # sorted by start, pairwise disjoint
    for _, neg_length, start, typ in candidates:
        end = start - neg_length
        i = bisect_left(starts, start)
        if (i and kept[i - 1].end > start) or (i < len(kept) and kept[i].start < end):
            continue
        starts.insert(i, start)
        kept.insert(i, Finding(typ, start, end))
    return kept


def redact(text: str) -> tuple[str, Counter[str]]:
    """``text`` with every finding replaced by ``[TYPE]``, and the counts by type."""
    counts: Counter[str] = Counter()
    findings = scan(text)
    if not findings:
        return text, counts
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos:f.start])
        parts.append(f"[{f.type}]")
        counts[f.type] += 1
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), counts


def text_slots(body: dict[str, Any], *, skip_roles: frozenset[str] = frozenset(),
               include_input: bool = True) -> Iterator[Slot]:
    """The user-supplied strings of an OpenAI-style request body, as ``(container, key)``.

    Covers chat ``messages[*].content`` (a string, or the ``text`` of ``type: "text"``
    parts), ``prompt`` (completions) and, unless ``include_input`` is false, ``input``
    (embeddings); each of the last two may be a string or a list (non-strings, such as
    token arrays, are skipped). Messages whose ``role`` is in ``skip_roles`` are skipped.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict) or message.get("role") in skip_roles:
                continue
            content = message.get("content")
            if isinstance(content, str):
                yield message, "content"
            elif isinstance(content, list):
                for part in content:
                    if (isinstance(part, dict) and part.get("type") == "text"
                            and isinstance(part.get("text"), str)):
                        yield part, "text"
    for key in ("prompt", "input") if include_input else ("prompt",):
        value = body.get(key)
        if isinstance(value, str):
            yield body, key
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    yield value, i


def redact_chat_body(body: dict[str, Any]) -> Counter[str]:
    """Redact every user-supplied string of ``body`` in place; return the counts by type."""
    counts: Counter[str] = Counter()
    for container, key in text_slots(body):
        redacted, found = redact(container[key])
        if found:
            container[key] = redacted
            counts.update(found)
    return counts


def scan_chat_body(body: dict[str, Any]) -> Counter[str]:
    """Count the findings in ``body`` by type without modifying it."""
    counts: Counter[str] = Counter()
    for container, key in text_slots(body):
        counts.update(f.type for f in scan(container[key]))
    return counts


def apply(body: dict[str, Any], mode: DlpMode) -> DlpResult:
    """Run DLP on a request body according to ``mode``.

    ``off`` does nothing; ``redact`` modifies ``body`` in place; ``block`` leaves it alone
    and sets ``blocked`` when anything was found.
    """
    if mode == "off":
        return DlpResult(Counter(), blocked=False)
    if mode == "redact":
        return DlpResult(redact_chat_body(body), blocked=False)
    if mode == "block":
        counts = scan_chat_body(body)
        return DlpResult(counts, blocked=bool(counts))
    raise ValueError(f"unknown DLP mode {mode!r}")


def blocked_error(result: DlpResult) -> InvalidRequest:
    """The 400 error for a blocked request: it names the types found, never the values."""
    types = ", ".join(sorted(result.counts))
    return InvalidRequest(
        f"request blocked by the data-loss prevention policy: it contains {types}",
        code="dlp_blocked",
    )
