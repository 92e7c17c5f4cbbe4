"""The prompt-injection phrase rules: the rule table and how one rule is matched.

Each rule is a regex gated by a set lookup of its trigger words, so that it only runs when one
of them is in the text (``security/injection.py`` applies the table). Categories and rule ids
are stable: they appear in audit records, metrics and 400 errors (``docs/DLP.md``).
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

OVERRIDE = "instruction_override"
EXTRACTION = "prompt_extraction"
ROLE = "role_injection"
JAILBREAK = "jailbreak"
HIDDEN = "hidden_unicode"
ENCODED = "encoded_payload"


@dataclass(frozen=True, slots=True)
class Flag:
    """One rule that matched: its stable id and its category. Never the matched text."""

    rule: str
    category: str


@dataclass(frozen=True, slots=True)
class PhraseRule:
    flag: Flag
    #: Lower-case words, one of which every match contains: the regex only runs when the
    #: text has one of them (or contains one of ``substrings``).
    words: frozenset[str]
    substrings: tuple[str, ...]
    #: Searched in the lower-cased text (the original text when ``cased``). Every top-level
    #: alternative starts with a literal, so that the regex engine can skip to candidates.
    pattern: re.Pattern[str]
    #: What the text just before a match must match (at most ``_CONTEXT_CHARS`` of it).
    before: re.Pattern[str] | None
    cased: bool


def _rule(rule: str, category: str, words: str, pattern: str, *, substrings: str = "",
          before: re.Pattern[str] | None = None, cased: bool = False) -> PhraseRule:
    return PhraseRule(Flag(rule, category), frozenset(words.split()), tuple(substrings.split()),
                       re.compile(pattern, re.MULTILINE), before, cased)


def _each(starts: str, rest: str) -> str:
    """``(?:a|b)rest`` as ``a rest|b rest``: the regex engine skips ahead only to literals."""
    return "|".join(f"{start}{rest}" for start in starts.split())


# Override verbs count only as a command: at the start of a line or clause, or after a word
# such as "please" or "must". "Why does Llama ignore the system prompt?" is a question.
_COMMAND_BEFORE = re.compile(
    r"(?:^|[.!?:;,\"'(\[{*>\-\u2013\u2014\u2018\u201c\u00ab\u00bf\u00a1\u3001\u3002\u300a"
    r"\u300c\u300e\u3010\uff01\uff08\uff0c\uff1a\uff1b\uff1f]"
    r"|\b(?:please|kindly|now|then|and|so|just|must|should|will|to|pls))\s*$",
    re.MULTILINE,
)
# A forged header ("New instructions:") starts a line, a sentence or a clause, or follows
# a separator line ("---") or markdown ("###", "**", "[").
_HEADER_BEFORE = re.compile(r"(?:^|[.!?:,>\])]|-{3}|={3}|\*{2}|#|\[)\s*$", re.MULTILINE)
_MARKUP_LINE_BEFORE = re.compile(r"^\s*(?:#+\s*|\[)$", re.MULTILINE)
_LINE_START_BEFORE = re.compile(r"^\s*$", re.MULTILINE)
_DAN_ROLE_BEFORE = re.compile(
    r"(?:\b(?i:as|are|be|become|called|named|play|playing|now)|['\u2019]re)\s+$")
_CONTEXT_CHARS = 24
# Punctuation, symbols and format characters become spaces before the text is split into
# trigger words: ASCII, Latin-1, General Punctuation, CJK and full-width forms.
SEPARATORS = str.maketrans(dict.fromkeys(string.punctuation + "".join(
    chr(c) for lo, hi in ((0xA0, 0xBF), (0x2000, 0x206F), (0x3000, 0x303F), (0xFE30, 0xFE4F),
                          (0xFF00, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF65))
    for c in range(lo, hi + 1) if unicodedata.category(chr(c))[0] in "PSZC"), " "))

_DETERMINERS = r"(?:(?:all|any|every|each|of|the|your|these|those|such|other)\s+)*"
_EARLIER = (r"(?:previous|prior|preceding|above|earlier|foregoing|former|original|initial|"
            r"system|developer|safety|pre-?programmed)")
_DIRECTIVES = (r"(?:instructions?|prompts?|rules|directions|directives|guidelines|commands|orders|"
               r"guidance|constraints|programming|restrictions|context)")
_OVERRIDDEN = rf"{_EARLIER}\s+(?:\w+\s+)?{_DIRECTIVES}\b"
_AI = r"(?:ai|assistant|model|chatbot|bot|persona|llm|language\s+model)"
_UNBOUND_WORDS = ("unrestricted unfiltered uncensored unlimited jailbroken unbound unchained "
                  "amoral unethical evil rogue liberated")
_UNBOUND = f"(?:{'|'.join(_UNBOUND_WORDS.split())})"
_LIMITS = (r"(?:restrictions|limitations|limits|filters?|filtering|rules|guidelines|boundaries|"
           r"censorship|content\s+polic(?:y|ies)|ethics|morals|moral\s+\w+|ethical\s+\w+|"
           r"safety\s+\w+|guardrails|constraints|safeguards)")
_LIMITS_WORDS = ("restrictions limitations limits filter filters filtering rules guidelines "
                 "boundaries censorship policy policies ethics morals moral ethical safety "
                 "guardrails constraints safeguards")
# "no restrictions on length" is scoped to something harmless; "on what you say" is not.
_UNSCOPED = r"(?!\s+(?:on|for|about|regarding)\s+(?!what|anything|any\b|topics?|content|how))"
_NO_LIMITS = (r"(?:(?:you|who|which|that)\s+(?:have|has|had|are\s+under|are\s+bound\s+by)\s+no\s+"
              r"|there\s+(?:are|were|is)\s+no\s+|without\s+(?:any\s+)?|free\s+(?:of|from)\s+"
              r"(?:any\s+|all\s+)?|(?:not|no\s+longer|un)\s*bound\s+by\s+(?:any\s+)?|ignoring\s+"
              rf"(?:all\s+|any\s+|your\s+)*|with\s+no\s+)(?:\w+\s+){{0,2}}?{_LIMITS}\b{_UNSCOPED}")
_MODES = r"(?:developer|dev|god|jailbreak|jailbroken|dan|unrestricted|unfiltered|uncensored|evil)"
_POLICY_NOUNS = (r"(?:rules|guidelines|policies|policy|filters?|restrictions|programming|training|"
                 r"guardrails|safeguards|principles|limitations|constraints|ethics|morals|"
                 r"alignment)")
_APOS = "['\u2019]"

PHRASE_RULES: tuple[PhraseRule, ...] = (
    _rule("override.ignore_previous", OVERRIDE,
          "ignore disregard forget skip discard abandon follow following obey obeying override "
          "bypass",
          _each("ignore disregard forget skip discard abandon", rf"\s+{_DETERMINERS}{_OVERRIDDEN}")
          + "|" + _each(rf"do\s+not don{_APOS}t stop no\s+longer",
                        rf"\s+(?:follow(?:ing)?|obey(?:ing)?)\s+{_DETERMINERS}{_OVERRIDDEN}")
          + "|" + _each("override bypass",
                        rf"\s+(?:all\s+(?:of\s+)?)?(?:(?:the|your)\s+)?{_OVERRIDDEN}"),
          before=_COMMAND_BEFORE),
    _rule("override.forget_everything", OVERRIDE, "told taught instructed given trained",
          _each("forget ignore disregard",
                rf"\s+(?:everything|all|anything)\s+(?:that\s+)?you(?:{_APOS}ve|\s+have|\s+were|"
                rf"\s+had)?\s+(?:been\s+)?(?:told|taught|instructed|given|trained)\b"),
          before=_COMMAND_BEFORE),
    _rule("override.system_prompt", OVERRIDE, "prompt message instruction instructions preprompt",
          _each("ignore disregard forget bypass",
                r"\s+(?:(?:the|your|this|any|all)\s+)*(?:system|hidden|original|initial|developer|"
                r"pre-?)\s*(?:prompt|message|instructions?)\b")
          + "|" + _each("override overwrite replace delete",
                        r"\s+(?:all\s+)?your\s+(?:system|hidden|original|initial|developer|pre-?)"
                        r"\s*(?:prompt|message|instructions?)\b"),
          before=_COMMAND_BEFORE),
    _rule("override.you_are_now", OVERRIDE, "now",
          rf"you(?:\s+are|{_APOS}re)\s+now\s+(?:"
          rf"(?:an?\s+|the\s+|in\s+|my\s+)?(?:\w+\s+){{0,2}}?{_UNBOUND}\b"
          rf"|(?:an?\s+|the\s+)?(?:new|different|another|alternate)\s+(?:\w+\s+)?{_AI}\b"
          rf"|(?:in|operating\s+in|running\s+in)\s+(?:\w+\s+)?mode\b"
          rf"|(?:called\s+|named\s+|known\s+as\s+)?dan\b"
          rf"|no\s+longer\s+(?:bound|restricted|limited|constrained|governed|subject|an?\s+{_AI}|"
          rf"chatgpt|claude|llama))"),
    _rule("override.new_instructions", OVERRIDE,
          "instruction instructions directive directives orders commands prompt rules override",
          _each("new updated revised real actual true override admin developer",
                r"\s+(?:system\s+)?(?:instructions?|directives?|orders|commands|prompt|rules)"
                r"\s*(?:\*\*|\])?\s*:")
          + "|" + _each("system admin developer", r"\s+override\s*(?:\*\*|\])?\s*:"),
          before=_HEADER_BEFORE),
    _rule("override.ignore_previous_i18n", OVERRIDE,
          "ignoriere vergiss missachte ignore ignorer ignorez oublie oublier oubliez ignora olvida "
          "dimentica esqueça esqueca",
          _each("ignoriere vergiss missachte",
                r"\s+(?:alle\s+)?(?:vorherigen|bisherigen|obigen|vorigen)\s+(?:anweisungen|"
                r"instruktionen|befehle|regeln)")
          + "|" + _each("ignore oublie", r"[rz]?\s+(?:toutes\s+)?(?:les\s+)?(?:instructions|"
                        r"consignes|règles)\s+(?:précédentes|antérieures|ci-dessus)")
          + "|" + _each("ignora olvida", r"\s+(?:todas\s+)?(?:las\s+)?(?:instrucciones|"
                        r"indicaciones|reglas)\s+(?:anteriores|previas)")
          + "|" + _each("ignora dimentica",
                        r"\s+(?:tutte\s+)?(?:le\s+)?istruzioni\s+(?:precedenti|sopra)")
          + "|" + _each("ignore esqueça esqueca",
                        r"\s+(?:todas\s+)?(?:as\s+)?instruções\s+anteriores")),
    _rule("extraction.system_prompt", EXTRACTION, "prompt instructions above",
          _each(r"reveal print show output repeat display dump leak disclose recite tell\s+me "
                r"give\s+me write\s+out what\s+is what\s+are what\s+was what\s+were",
                r"\s+(?:me\s+)?(?:all\s+)?(?:of\s+)?(?:your|the\s+(?:above|preceding|hidden|"
                r"secret|initial))\s+(?:\w+\s+)?(?:system\s+prompt|(?:initial|hidden|secret|"
                r"original|system)\s+instructions|prompt)\b")
          + "|" + _each("reveal leak dump disclose recite", r"\s+(?:the|your)\s+(?:system|"
                        r"hidden|secret)\s+(?:prompt|instructions)\b")
          + r"|repeat\s+(?:\w+\s+){0,3}above\s+starting\s+with\b"),
    _rule("role.chat_template_token", ROLE, "", substrings="<| << [inst [/inst [system](",
          pattern=r"<\|(?:im_start|im_end|system|user|assistant|start_header_id|end_header_id|"
          r"eot_id|begin_of_text)\|>|<<\s*/?sys\s*>>|\[/?inst\]|\[system\]\(#\w+\)"),
    _rule("role.fake_system_header", ROLE, "system",
          r"system(?:\s+(?:instructions?|prompt|message))?\s*\]?\s*:", before=_MARKUP_LINE_BEFORE),
    _rule("jailbreak.dan", JAILBREAK, "anything", r"do\s+anything\s+now\b"),
    # "DAN" is matched in upper case only: "Dan" is a name.
    _rule("jailbreak.dan", JAILBREAK, "dan", r"DAN\b", before=_DAN_ROLE_BEFORE, cased=True),
    _rule("jailbreak.dan", JAILBREAK, "dan",
          r"DAN\s*(?:(?i:mode|prompt|jailbreak)|\d+(?:\.\d+)?)\b", cased=True),
    _rule("jailbreak.dan", JAILBREAK, "dan", r"\[DAN\]\s*:|DAN\s*:", before=_LINE_START_BEFORE,
          cased=True),
    _rule("jailbreak.developer_mode", JAILBREAK, "mode",
          _each(r"chatgpt gpt you assistant ai model llama claude gemini yourself",
                rf"(?:-?\d+)?\s+(?:with|in|now\s+in|running\s+in|has|have)\s+(?:\w+\s+)?{_MODES}"
                rf"\s+mode\b")
          + "|" + _each(r"enable activate enter switch\s+on switch\s+to switch\s+into turn\s+on "
                        r"unlock", r"\s+(?:(?:your\s+)?(?:jailbreak|dan|unrestricted|unfiltered|"
                        r"uncensored|no[- ]?limits?)|your\s+(?:developer|dev|god|debug|admin|"
                        r"evil))\s+mode\b")
          + r"|developer\s+mode\s+(?:output|response)s?\b|"
          + _each(rf"simulate emulate pretend\s+to\s+be\s+in act\s+as\s+if\s+you{_APOS}re\s+in "
                  r"act\s+as\s+if\s+you\s+are\s+in", rf"\s+{_MODES}\s+mode\b")),
    _rule("jailbreak.no_restrictions", JAILBREAK, f"{_LIMITS_WORDS} {_UNBOUND_WORDS}",
          _each("pretend act behave respond answer reply roleplay role-play",
                rf"\b[^.!?\n]{{0,60}}?\b{_NO_LIMITS}")
          + "|" + _each(rf"you\s+are you{_APOS}re you\s+were you\s+will\s+be",
                        rf"\s+(?:now\s+)?(?:an?\s+)?(?:\w+\s+){{0,3}}?(?:with\s+no|without"
                        rf"(?:\s+any)?|free\s+(?:of|from))\s+(?:\w+\s+)?{_LIMITS}\b{_UNSCOPED}")
          + "|" + _each("act respond reply answer behave talk roleplay",
                        rf"\b[^.!?\n]{{0,40}}?\bas\s+(?:an?\s+)?{_UNBOUND}\s+"
                        rf"(?:version\s+of\s+yourself|{_AI})\b")
          + "|" + _each(r"you\s+are become pretend\s+to\s+be",
                        rf"\s+(?:an?\s+)?{_UNBOUND}\s+(?:version\s+of\s+yourself|{_AI})\b")),
    _rule("jailbreak.policy_bypass", JAILBREAK,
          "ignore disregard bypass circumvent override forget abandon violate skip",
          _each("ignore disregard bypass circumvent override forget abandon violate skip",
                rf"\s+(?:(?:all|any|of)\s+)*(?:your|its|the\s+ai{_APOS}?s?|openai{_APOS}?s?|"
                rf"anthropic{_APOS}?s?)\s+(?:own\s+)?(?:(?:safety|ethical|moral|content|usage|"
                rf"built-in|internal|core|original|programmed|default)\s+)?{_POLICY_NOUNS}\b")
          + "|" + _each("ignore bypass circumvent disregard",
                        r"\s+(?:(?:all|any)\s+)?(?:safety|ethical|moral|content)\s+(?:guidelines|"
                        r"rules|policies|filters|restrictions|guardrails|protocols|constraints)\b"),
          before=_COMMAND_BEFORE),
    _rule("jailbreak.policy_bypass", JAILBREAK, "disable deactivate turn switch remove",
          _each(r"disable deactivate turn\s+off switch\s+off remove",
                r"\s+(?:all\s+(?:of\s+)?)?your\s+(?:safety|ethical|moral|content|censorship)\s+"
                r"(?:filters?|guidelines|rules|restrictions|guardrails|settings|policies|"
                r"protocols)\b")),
)  # fmt: skip


def matches(rule: PhraseRule, text: str) -> bool:
    """Whether ``rule`` matches ``text`` at the start of a word, with the context it needs."""
    pos = 0
    while (m := rule.pattern.search(text, pos)) is not None:
        start = m.start()
        pos = start + 1
        if start and text[start].isalnum() and text[start - 1].isalnum():
            continue  # not at the start of a word
        if rule.before is None or rule.before.search(text, max(0, start - _CONTEXT_CHARS), start):
            return True
    return False
