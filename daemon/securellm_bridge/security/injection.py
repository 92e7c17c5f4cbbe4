"""Prompt-injection screening of inference request bodies, before they are routed.

A documented, deterministic rule set (see "Prompt-injection screening" in ``docs/DLP.md``):

* phrase rules (``injection_rules.py``: instruction overrides, prompt extraction, forged role
  markers, jailbreak role-play markers), each gated by a set lookup of its trigger words so
  that its regex only runs when one of them is in the text;
* hidden Unicode: zero-width characters inside words or in runs, bidi embedding/override/
  isolate controls, and Unicode tag characters (U+E0000-U+E007F), which are decoded to ASCII
  and screened again; non-ASCII text is screened again with invisible characters removed
  and NFKC-normalised (full-width letters read as ASCII);
* base64 blobs (24+ characters) that decode to text, screened again (two levels deep).

Screening is a heuristic: it raises the cost of the common attacks and makes them visible in
the audit trail; it does not make a model safe against a determined attacker.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

from securellm_bridge.errors import InvalidRequest
from securellm_bridge.security.dlp import text_slots
from securellm_bridge.security.injection_rules import ENCODED, HIDDEN, PHRASE_RULES, SEPARATORS, Flag, matches

InjectionMode = Literal["off", "flag", "block"]
INJECTION_MODES: tuple[InjectionMode, ...] = ("off", "flag", "block")

#: Roles not screened: the operator's own application writes ``system`` and ``developer``
#: messages, and ``assistant`` messages are the model's earlier answers replayed by the client
#: (screening them would flag every later turn once the model has quoted an attack).
UNSCREENED_ROLES = frozenset({"system", "developer", "assistant"})


@dataclass(frozen=True, slots=True)
class InjectionResult:
    flags: tuple[Flag, ...]
    blocked: bool


# --- hidden Unicode --------------------------------------------------------------------

_TAG_FLAG = Flag("unicode.tag_characters", HIDDEN)
_BIDI_FLAG = Flag("unicode.bidi_control", HIDDEN)
_ZW_WORD_FLAG = Flag("unicode.zero_width_in_word", HIDDEN)
_ZW_RUN_FLAG = Flag("unicode.zero_width_run", HIDDEN)
_BASE64_FLAG = Flag("encoded.base64_instructions", ENCODED)

_TAGS = re.compile("[\U000e0000-\U000e007f]+")
# Embeddings, overrides and isolates; the plain marks (LRM, RLM, ALM) are legitimate in RTL text.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
# ZWSP, ZWNJ, ZWJ, word joiner, invisible operators, Mongolian vowel separator, ZWNBSP/BOM.
_INVISIBLE_CLASS = "[\u200b-\u200d\u2060-\u2064\u180e\ufeff]"
_INVISIBLE = re.compile(_INVISIBLE_CLASS)
# ZWJ and ZWNJ are needed inside emoji sequences and in Indic and Persian words, so only an
# invisible character between two ASCII letters or digits, or two in a row, are flagged.
_ZW_IN_WORD = re.compile(rf"[A-Za-z0-9]{_INVISIBLE_CLASS}+[A-Za-z0-9]")
_ZW_RUN = re.compile(rf"{_INVISIBLE_CLASS}{{2,}}")

# --- base64 ----------------------------------------------------------------------------

_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{24,}={0,2}")
_MAX_BLOBS, _MAX_BLOB_CHARS, _MAX_DEPTH, _PRINTABLE_RATIO = 32, 65536, 2, 0.9


def _decode_tags(run: str) -> str:
    return "".join(chr(ord(c) - 0xE0000) for c in run if 0xE0020 <= ord(c) <= 0xE007E)


def _decode_base64(blob: str) -> str | None:
    """The blob decoded as UTF-8 text, or None when it is not base64 of mostly printable text."""
    blob = blob.rstrip("=")[: len(blob.rstrip("=")) // 4 * 4]
    try:
        if "-" in blob or "_" in blob:
            raw = base64.urlsafe_b64decode(blob)
        else:
            raw = base64.b64decode(blob, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    return text if text and printable >= _PRINTABLE_RATIO * len(text) else None


class _Screen:
    """Collects flags for one text, in order of first detection, without duplicates."""

    def __init__(self) -> None:
        self.flags: dict[Flag, None] = {}

    def add(self, flag: Flag) -> None:
        self.flags.setdefault(flag, None)

    def phrases(self, text: str) -> None:
        lowered = text.lower()
        words = set(lowered.translate(SEPARATORS).split())
        for rule in PHRASE_RULES:
            if rule.flag in self.flags:
                continue
            if rule.words.isdisjoint(words) and not any(s in lowered for s in rule.substrings):
                continue
            if matches(rule, text if rule.cased else lowered):
                self.add(rule.flag)

    def unicode(self, text: str) -> None:
        if text.isascii():
            return
        for m in _TAGS.finditer(text):
            self.add(_TAG_FLAG)
            self.phrases(_decode_tags(m[0]))
        if _BIDI.search(text):
            self.add(_BIDI_FLAG)
        visible = text
        if _INVISIBLE.search(text):
            if _ZW_IN_WORD.search(text):
                self.add(_ZW_WORD_FLAG)
            if _ZW_RUN.search(text):
                self.add(_ZW_RUN_FLAG)
            # "ig<ZWSP>nore previous instructions" must not slip past the phrase rules.
            visible = _INVISIBLE.sub("", _TAGS.sub("", text))
        # Neither must full-width or other compatibility forms of the letters.
        normalized = unicodedata.normalize("NFKC", visible)
        if normalized != text:
            self.phrases(normalized)

    def encoded(self, text: str, depth: int) -> None:
        for i, m in enumerate(_BASE64.finditer(text)):
            if i >= _MAX_BLOBS:
                return
            decoded = _decode_base64(m[0][:_MAX_BLOB_CHARS])
            if decoded is None:
                continue
            inner = _Screen()
            inner.phrases(decoded)
            inner.unicode(decoded)
            if depth < _MAX_DEPTH:
                inner.encoded(decoded, depth + 1)
            if inner.flags:
                self.add(_BASE64_FLAG)
                for flag in inner.flags:
                    self.add(flag)


def screen(text: str) -> list[Flag]:
    """The rules that ``text`` triggers, in order of first detection, each once."""
    s = _Screen()
    s.phrases(text)
    s.unicode(text)
    s.encoded(text, 1)
    return list(s.flags)


def screen_chat_body(body: dict[str, Any]) -> list[Flag]:
    """Screen the untrusted text of a request body: user and tool messages (every role not in
    ``UNSCREENED_ROLES``) and the completions ``prompt`` (embeddings ``input`` is not an
    instruction to a model and is not screened)."""
    flags: dict[Flag, None] = {}
    for container, key in text_slots(body, skip_roles=UNSCREENED_ROLES, include_input=False):
        for flag in screen(container[key]):
            flags.setdefault(flag, None)
    return list(flags)


def apply(body: dict[str, Any], mode: InjectionMode) -> InjectionResult:
    """Screen ``body`` according to ``mode``; ``blocked`` is set only in ``block`` mode."""
    if mode == "off":
        return InjectionResult((), blocked=False)
    if mode not in ("flag", "block"):
        raise ValueError(f"unknown injection mode {mode!r}")
    flags = tuple(screen_chat_body(body))
    return InjectionResult(flags, blocked=mode == "block" and bool(flags))


def blocked_error(result: InjectionResult) -> InvalidRequest:
    """The 400 error for a blocked request: it names the rules, never the matched text."""
    rules = ", ".join(sorted({f.rule for f in result.flags}))
    return InvalidRequest(
        f"request blocked by prompt-injection screening: it matches {rules}",
        code="prompt_injection_detected",
    )
