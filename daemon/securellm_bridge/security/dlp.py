"""Data-loss prevention on inference request bodies, before they are routed.

``apply(body, mode)`` is the one call the API makes per request: in ``redact`` mode every
finding in the user-supplied text is replaced in place by ``[TYPE]``; in ``block`` mode the
body is left untouched and the result says whether to refuse it (see :func:`blocked_error`).
Only type names and counts ever leave this module, never the matched values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from securellm_bridge.errors import InvalidRequest
from securellm_bridge.security.dlp_detectors import DETECTOR_TYPES, Finding, scan

__all__ = [
    "DETECTOR_TYPES",
    "DLP_MODES",
    "DlpMode",
    "DlpResult",
    "Finding",
    "apply",
    "blocked_error",
    "redact",
    "redact_chat_body",
    "scan",
    "scan_chat_body",
    "text_slots",
]

DlpMode = Literal["off", "redact", "block"]
DLP_MODES: tuple[DlpMode, ...] = ("off", "redact", "block")

#: A place in a request body that holds a string: ``container[key]``.
Slot = tuple[Any, Any]


@dataclass(frozen=True, slots=True)
class DlpResult:
    counts: Counter[str]
    blocked: bool


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
